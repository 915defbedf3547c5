"""Gold-standard validation of half maps: FSC (global and masked), resolution, FSC
weighting, Guinier B-factor sharpening, and the noise-substitution check of mask
tightness (Chen et al. 2013: phase-randomise the half maps beyond a resolution and
correct the masked FSC with the FSC of the randomised maps).

A room of ``reconstruct``; it may import ``ops``.

All volumes are ``(N, N, N)`` torch tensors in ``(z, y, x)`` order; frequencies are in
Fourier pixels of the box (shell ``i`` is at ``i / (N * apix)`` 1/Å).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..ops.fourier import frequency_radius_grid, raised_cosine
from ..ops.fsc import fsc, fsc_resolution, shell_frequencies_inv_a

__all__ = [
    "FSCResult",
    "radial_shells_3d",
    "radial_average",
    "apply_radial_filter",
    "phase_randomise",
    "masked_fsc",
    "informative_range",
    "soften_mask",
    "guinier_bfactor",
    "fsc_weight",
    "sharpen",
]


@dataclass(frozen=True)
class FSCResult:
    """One FSC curve and its resolutions.

    ``curve (N//2+1,)`` per shell; ``resolution_0143_a`` and ``resolution_05_a`` in Å;
    ``corrected``: the curve was corrected by noise substitution (``randomised`` holds
    the FSC of the phase-randomised maps, else ``None``; ``from_shell`` the first
    randomised shell).
    """

    curve: np.ndarray
    resolution_0143_a: float
    resolution_05_a: float
    corrected: bool = False
    randomised: np.ndarray | None = None
    from_shell: int | None = None


def radial_shells_3d(box: int, device=None) -> torch.Tensor:
    """Integer shell index ``round(|k|)`` of each coefficient of an ``rfftn``: ``(N, N, N//2+1)``."""
    return torch.round(frequency_radius_grid((box,) * 3, d=1.0 / box, device=device)).long()  # Fourier px


def radial_average(volume: torch.Tensor) -> torch.Tensor:
    """Mean Fourier amplitude per shell ``(N//2+1,)`` of ``volume (N, N, N)``."""
    box = volume.shape[-1]
    amp = torch.fft.rfftn(volume.double()).abs()
    shells = radial_shells_3d(box, volume.device)
    n = box // 2 + 1
    keep = shells < n
    total = torch.zeros(n, dtype=torch.float64, device=volume.device).index_add_(0, shells[keep], amp[keep])
    count = torch.zeros(n, dtype=torch.float64, device=volume.device).index_add_(
        0, shells[keep], torch.ones_like(amp[keep])
    )
    return total / count.clamp(min=1)


def apply_radial_filter(volume: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Multiply ``volume (N, N, N)``'s spectrum by a radial filter ``filt (N//2+1,)``.

    Coefficients beyond the last shell (the corners) get the last value of ``filt``.
    """
    box = volume.shape[-1]
    shells = radial_shells_3d(box, volume.device).clamp(max=filt.numel() - 1)
    spec = torch.fft.rfftn(volume.double()) * filt.to(volume.device, torch.float64)[shells]
    return torch.fft.irfftn(spec, s=volume.shape[-3:]).to(volume.dtype)


def phase_randomise(volume: torch.Tensor, from_shell: int, seed: int = 0) -> torch.Tensor:
    """Randomise the Fourier phases of ``volume (N, N, N)`` at shells ``>= from_shell``.

    Amplitudes are kept. The random phases come from the FFT of real white noise, so the
    result stays real (Hermitian symmetry is automatic).
    """
    box = volume.shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = torch.randn(volume.shape[-3:], generator=gen, dtype=torch.float64).to(volume.device)
    phase = torch.fft.rfftn(noise)
    phase = phase / phase.abs().clamp(min=1e-30)
    spec = torch.fft.rfftn(volume.double())
    shells = radial_shells_3d(box, volume.device)
    randomised = torch.where(shells >= from_shell, spec.abs() * phase, spec)
    return torch.fft.irfftn(randomised, s=volume.shape[-3:]).to(volume.dtype)


def _shell_power(spec: torch.Tensor, shells: torch.Tensor) -> torch.Tensor:
    """Summed ``|F|^2`` per integer shell (all shells, corners included) of an ``rfftn``."""
    n = int(shells.max()) + 1
    return torch.zeros(n, dtype=torch.float64, device=spec.device).index_add_(
        0, shells.reshape(-1), spec.abs().double().pow(2).reshape(-1)
    )


def _randomise_like(volume: torch.Tensor, from_shell: int, seed: int, support: torch.Tensor | None) -> torch.Tensor:
    """``volume`` phase-randomised at shells ``>= from_shell``; with a ``support (N, N, N)`` bool,
    the randomised part is confined to it and given back the original power per shell.

    Maps solved inside a support are zero outside it, so their high-resolution content
    (signal and noise) sits inside it. Random phases spread that power over the whole
    box, so inside a mask the randomised maps would carry less of it than the real ones
    and the mask-induced correlation would be overestimated (corrections below -1)."""
    randomised = phase_randomise(volume, from_shell, seed)
    if support is None:
        return randomised
    box = volume.shape[-1]
    shells = radial_shells_3d(box, volume.device)
    high = shells >= from_shell
    spec = torch.fft.rfftn(volume.double())
    spec_r = torch.fft.rfftn(randomised.double())
    part = torch.fft.irfftn(torch.where(high, spec_r, 0), s=volume.shape[-3:]) * support.double()
    spec_p = torch.where(high, torch.fft.rfftn(part), 0)
    gain = torch.sqrt(_shell_power(spec, shells) / _shell_power(spec_p, shells).clamp(min=1e-300))
    spec_p = spec_p * gain[shells]
    return torch.fft.irfftn(torch.where(high, spec_p, spec), s=volume.shape[-3:]).to(volume.dtype)


def masked_fsc(
    half_a: torch.Tensor,
    half_b: torch.Tensor,
    apix: float,
    mask: torch.Tensor | None = None,
    randomise_from_a: float | None = None,
    seed: int = 0,
    flatten: bool = True,
    support: torch.Tensor | str | None = "auto",
) -> FSCResult:
    """FSC of two half maps, optionally inside a soft ``mask (N, N, N)`` in [0, 1].

    With a mask, ``flatten`` (default) first divides both maps by the radial amplitude of
    their average (one filter for both, so the unmasked FSC is unchanged): masking
    convolves the spectrum with the mask's transform, and a map whose amplitudes fall by
    orders of magnitude between low and high resolution would otherwise see the strong
    low-resolution correlation leak into every weak high-resolution shell, so that the
    masked curve reports the mask, not the map.

    With ``randomise_from_a`` (Å) and a mask, the noise-substitution test corrects the
    curve beyond that resolution: ``FSC_true = (FSC_t - FSC_n) / (1 - FSC_n)``, where
    ``FSC_n`` is the masked FSC of the half maps phase-randomised beyond it (independent
    phases for the two halves). ``support`` (``"auto"``: where either map is non-zero, if
    that is not the whole box; or a bool ``(N, N, N)``; or ``None``) is where the maps
    live: the randomised high-resolution part is kept inside it with the same power per
    shell. A tight mask that invents correlation shows up as a large ``FSC_n`` there
    (see :func:`informative_range`).
    """
    box = half_a.shape[-1]
    if half_a.shape != half_b.shape or half_a.shape[-3:] != (box, box, box):
        raise ValueError(f"half maps must be the same cubic shape, got {tuple(half_a.shape)} and {tuple(half_b.shape)}")
    if mask is not None and tuple(mask.shape) != tuple(half_a.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the half maps {tuple(half_a.shape)}")
    a, b = half_a.double(), half_b.double()
    if isinstance(support, str):
        if support != "auto":
            raise ValueError(f"support must be 'auto', a bool volume or None, got {support!r}")
        nonzero = (a != 0) | (b != 0)
        support = None if bool(nonzero.all()) else nonzero
    if mask is not None and flatten:
        amp = radial_average(0.5 * (a + b))
        amp = amp.clamp(min=float(amp.max()) * 1e-12)
        a, b = apply_radial_filter(a, 1.0 / amp), apply_radial_filter(b, 1.0 / amp)
    curve = fsc(a, b, mask=None if mask is None else mask.double()).cpu().numpy()
    randomised = None
    corrected = False
    from_shell = None
    if randomise_from_a is not None and mask is not None:
        from_shell = int(math.ceil(box * apix / float(randomise_from_a)))
        ra = _randomise_like(a, from_shell, seed, support)
        rb = _randomise_like(b, from_shell, seed + 1, support)
        randomised = fsc(ra, rb, mask=mask.double()).cpu().numpy()
        true_curve = curve.copy()
        hi = np.arange(curve.size) >= from_shell
        denom = np.clip(1.0 - randomised[hi], 1e-6, None)
        true_curve[hi] = np.clip((curve[hi] - randomised[hi]) / denom, -1.0, 1.0)
        curve, corrected = true_curve, True
    return FSCResult(
        curve=curve,
        resolution_0143_a=fsc_resolution(curve, box, apix, 0.143),
        resolution_05_a=fsc_resolution(curve, box, apix, 0.5),
        corrected=corrected,
        randomised=randomised,
        from_shell=from_shell,
    )


def informative_range(result: FSCResult, box: int, apix: float, max_induced: float = 0.5) -> dict:
    """Where a noise-substitution-corrected masked FSC says something about the maps.

    A shell past the randomisation point is informative when the mask alone (the
    phase-randomised maps) correlates at most ``max_induced`` there: the correction then
    at most doubles the curve's noise. Just past the randomisation point a mask of width
    ``w`` always induces correlation over about ``box * apix / w`` shells (its transform
    mixes them): that band is uninformative. Returns a dict (Å):

    - ``informative_to_a``: the resolution up to which the corrected curve is informative,
      i.e. the end of the informative run that follows the band (the randomisation
      resolution when no shell past it is informative);
    - ``uninformative_a``: ``[coarse, fine]`` limits of the band (``None`` if there is none);
    - ``fsc_0143_informative``: whether the 0.143 crossing lies where the curve is informative.
    """
    if result.randomised is None or result.from_shell is None:
        return {"informative_to_a": 2.0 * apix, "uninformative_a": None, "fsc_0143_informative": True}
    res = 1.0 / np.maximum(np.arange(box // 2 + 1) / (box * apix), 1e-12)
    n = box // 2 + 1
    k0 = min(result.from_shell, n - 1)
    ok = np.asarray(result.randomised[:n]) <= max_induced
    k = k0
    while k < n and not ok[k]:
        k += 1
    band = None if k == k0 else [float(res[k0]), float(res[k - 1])]
    if k == n:  # never informative past the randomisation point
        limit = float(res[k0 - 1]) if k0 > 0 else float("inf")
        end = k0 - 1
    else:
        end = k
        while end + 1 < n and ok[end + 1]:
            end += 1
        limit = float(res[end])
    crossing = result.resolution_0143_a
    inside = bool(np.isfinite(crossing) and crossing >= limit - 1e-9
                  and (band is None or not (band[1] - 1e-9 <= crossing <= band[0] + 1e-9)))
    return {"informative_to_a": limit, "uninformative_a": band, "fsc_0143_informative": inside}


def soften_mask(mask: np.ndarray, apix: float, edge_a: float = 10.0) -> np.ndarray:
    """A hard (binary) ``mask (N, N, N)`` with a raised-cosine edge ``edge_a`` Å wide outside it
    (at least 3 voxels); a mask that is already soft is returned unchanged (as float32).

    A sharp edge has a transform that spreads correlation over many shells, so the FSC
    inside it reports the mask; RELION and cryoSPARC ask for soft masks for that reason."""
    from scipy import ndimage

    m = np.asarray(mask, dtype=np.float32)
    if not np.all((m == 0) | (m == 1)):
        return m
    width = max(float(edge_a), 3.0 * float(apix))
    dist = ndimage.distance_transform_edt(m < 0.5) * float(apix)  # Å outside the mask
    return raised_cosine(dist / width).astype(np.float32)


def guinier_bfactor(volume: torch.Tensor, apix: float, low_a: float = 10.0, high_a: float | None = None) -> float:
    """B-factor (Å^2) from a Guinier fit: ``ln |F(s)| = c - B s^2 / 4`` between ``low_a`` and
    ``high_a`` (default: Nyquist). Positive B means the map's amplitudes fall off."""
    box = volume.shape[-1]
    s = shell_frequencies_inv_a(box, apix)  # 1/Å
    amp = radial_average(volume).cpu().numpy()
    high_a = 2.0 * apix if high_a is None else max(float(high_a), 2.0 * apix)
    sel = (s > 0) & (s >= 1.0 / low_a) & (s <= 1.0 / high_a) & (amp > 0)
    if sel.sum() < 3:
        raise ValueError(
            f"Guinier fit needs at least 3 shells between {low_a:.1f} and {high_a:.1f} Å; box {box} at {apix} Å has {int(sel.sum())}"
        )
    slope, _ = np.polyfit(s[sel] ** 2, np.log(amp[sel]), 1)
    return float(-4.0 * slope)


def fsc_weight(curve: np.ndarray) -> np.ndarray:
    """Rosenthal & Henderson's ``C_ref = sqrt(2 FSC / (1 + FSC))`` per shell (0 where FSC <= 0).

    For the average of two half maps: the expected correlation with the true map."""
    c = np.clip(np.asarray(curve, dtype=np.float64), 0.0, 1.0)
    return np.sqrt(2.0 * c / (1.0 + c))


def sharpen(
    volume: torch.Tensor,
    apix: float,
    fsc_curve: np.ndarray,
    resolution_a: float,
    bfactor: float | None = None,
    low_a: float = 10.0,
) -> tuple[torch.Tensor, float]:
    """FSC-weight, B-factor sharpen and low-pass a combined map.

    ``bfactor=None`` fits it (:func:`guinier_bfactor`) between ``low_a`` and
    ``resolution_a``; the map's amplitudes are multiplied by ``exp(B s^2 / 4)``, by the FSC
    weight, and set to zero beyond ``resolution_a`` (with a one-shell cosine edge).
    Returns ``(sharpened (N, N, N), B applied)``.
    """
    box = volume.shape[-1]
    if bfactor is None:
        # A Guinier fit needs the Wilson regime (finer than about 10 Å) and a range of
        # shells in it; coarser maps are FSC-weighted and low-passed but not sharpened.
        bfactor = 0.0
        if np.isfinite(resolution_a) and resolution_a < 0.8 * low_a:
            try:
                bfactor = max(guinier_bfactor(volume, apix, low_a=low_a, high_a=resolution_a), 0.0)
            except ValueError:
                bfactor = 0.0
    s = shell_frequencies_inv_a(box, apix)
    filt = np.exp(bfactor * s**2 / 4.0) * fsc_weight(fsc_curve)
    if np.isfinite(resolution_a):
        cut = box * apix / resolution_a  # Fourier px
        k = np.arange(s.size, dtype=np.float64)
        filt = filt * raised_cosine(k - cut)  # one shell wide
    else:
        filt = np.zeros_like(filt)
    return apply_radial_filter(volume, torch.as_tensor(filt)), float(bfactor)
