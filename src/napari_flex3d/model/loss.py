"""The 3DFlex objective: a whitened, band-limited data term plus local rigidity.

A room of ``model``; it may import ``ops``.

``E_data = 1/2 sum_k |F(I - s * model)(k)|^2 / P_noise(|k|)`` over the frequencies
``0 < |k| <= max_freq_px`` allowed at this stage of frequency marching (docs/model.md,
paper Eq. 2 with coloured noise). Fourier transforms are orthonormal (``norm="ortho"``),
so white noise of standard deviation ``sigma`` per pixel has ``P_noise = sigma^2`` in
every shell, and then ``E_data`` of pure noise has expectation ``n_freq / 2``.
The sum runs over the full Fourier plane (the half-plane of ``rfft2`` with the mirrored
columns counted twice), so it equals the real-space ``1/2 ||.||^2`` for white noise.

Shells are ``round(|k|)`` in Fourier pixels of the image box (Nyquist ``N / 2``); there are
``ceil(sqrt(2) * N / 2) + 1`` of them so the corners have one too.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..ops.fourier import frequency_radius_grid

__all__ = [
    "n_shells_2d",
    "radial_frequency_2d",
    "shell_index_2d",
    "rfft_plane_weights",
    "noise_power_sums",
    "estimate_noise_spectrum",
    "estimate_noise_spectra",
    "spectrum_to_image",
    "fit_scale",
    "data_loss",
    "spectral_data_loss",
    "band_coefficients",
    "total_loss",
]


def _check_images(images: torch.Tensor, name: str = "images") -> tuple[int, int]:
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"{name} must be square images (b, h, w), got {tuple(images.shape)}")
    return images.shape[-2], images.shape[-1]


def n_shells_2d(box: int) -> int:
    """Number of radial shells covering the whole ``box x box`` Fourier plane."""
    return int(math.ceil(math.sqrt(2.0) * (box // 2))) + 1


def radial_frequency_2d(box: int, device=None) -> torch.Tensor:
    """``|k|`` in Fourier pixels of each ``rfft2`` coefficient, ``(box, box//2 + 1)``."""
    return frequency_radius_grid((box, box), d=1.0 / box, device=device)


def shell_index_2d(box: int, device=None) -> torch.Tensor:
    """Shell ``round(|k|)`` (long) of each ``rfft2`` coefficient, ``(box, box//2 + 1)``."""
    return torch.round(radial_frequency_2d(box, device)).long()


def rfft_plane_weights(box: int, device=None) -> torch.Tensor:
    """How many full-plane coefficients each ``rfft2`` coefficient stands for, ``(box, box//2+1)``.

    Column 0 (and column ``box/2`` for even boxes) is its own mirror: weight 1; the others 2.
    """
    w = torch.full((box, box // 2 + 1), 2.0, device=device)
    w[:, 0] = 1.0
    if box % 2 == 0:
        w[:, -1] = 1.0
    return w


def _background_window(box: int, mask_radius_px: float, device, dtype) -> torch.Tensor:
    c = torch.arange(box, device=device, dtype=dtype) - box // 2
    r = torch.sqrt(c[:, None] ** 2 + c[None, :] ** 2)  # (h, w) px from the centre
    return (r > mask_radius_px).to(dtype)


def noise_power_sums(
    images: torch.Tensor,
    mask_radius_px: float | None = None,
    n_shells: int | None = None,
    subtract_mean: str | None = "batch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulable pieces of the background noise spectrum of ``images (b, h, w)``.

    Pixels outside a centred circle of ``mask_radius_px`` (default ``0.4 * box``) are the
    background: the mean background level is removed (``subtract_mean``: ``"batch"``, one
    level for the chunk; ``"image"``, per image, which also removes about 5-10 % of the
    power of the lowest shell; ``None``), the particle zeroed, and the orthonormal power
    ``|F|^2`` is summed per shell, divided by the fraction of pixels kept (so a white
    background of variance ``sigma^2`` gives ``sigma^2``). Windowing blurs the spectrum by
    about one shell. Returns ``(power_sum (n_shells,), count (n_shells,))``; add these over
    chunks and divide once.
    """
    box, _ = _check_images(images)
    if mask_radius_px is None:
        mask_radius_px = 0.4 * box
    if not 0 < mask_radius_px < box / math.sqrt(2.0):
        raise ValueError(f"mask_radius_px={mask_radius_px} leaves no background in a {box}-pixel box")
    n_shells = n_shells_2d(box) if n_shells is None else int(n_shells)
    images = images.to(torch.float64 if images.dtype == torch.float64 else torch.float32)
    window = _background_window(box, mask_radius_px, images.device, images.dtype)  # (h, w)
    frac = window.mean()
    bg_mean = (images * window).sum(dim=(-2, -1), keepdim=True) / window.sum()  # (b, 1, 1)
    if subtract_mean == "batch":
        bg_mean = bg_mean.mean(dim=0, keepdim=True)  # (1, 1, 1)
    elif subtract_mean is None:
        bg_mean = torch.zeros_like(bg_mean)
    elif subtract_mean != "image":
        raise ValueError(f"subtract_mean must be 'batch', 'image' or None, got {subtract_mean!r}")
    spec = torch.fft.rfft2((images - bg_mean) * window, norm="ortho")  # (b, h, w//2+1)
    power = (spec.real**2 + spec.imag**2) / frac  # (b, h, w//2+1)
    plane_w = rfft_plane_weights(box, images.device).to(images.dtype)  # (h, w//2+1)
    shells = shell_index_2d(box, images.device).clamp(max=n_shells - 1).reshape(-1)  # (h*(w//2+1),)
    power_sum = torch.zeros(n_shells, dtype=images.dtype, device=images.device)
    power_sum.index_add_(0, shells, (power * plane_w).sum(0).reshape(-1))
    count = torch.zeros(n_shells, dtype=images.dtype, device=images.device)
    count.index_add_(0, shells, plane_w.reshape(-1) * images.shape[0])
    return power_sum, count


def _finish_spectrum(power_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    spectrum = power_sum / count.clamp(min=1e-12)
    # shells without samples (and DC, never used by the loss) borrow their neighbour
    for i in range(1, spectrum.numel()):
        if count[i] <= 0:
            spectrum[i] = spectrum[i - 1]
    spectrum[0] = spectrum[1] if spectrum.numel() > 1 else spectrum[0]
    tiny = spectrum[1:].max().clamp(min=1e-30) * 1e-12 if spectrum.numel() > 1 else 1e-30
    return spectrum.clamp(min=tiny)


def estimate_noise_spectrum(
    images: torch.Tensor, mask_radius_px: float | None = None, n_shells: int | None = None
) -> torch.Tensor:
    """Radial noise power spectrum ``(n_shells,)`` of the background of ``images (b, h, w)``.

    Use the particles of one optics group. Units: orthonormal ``|F|^2`` per coefficient
    (white noise of variance ``sigma^2`` gives ``sigma^2`` in every shell).
    """
    return _finish_spectrum(*noise_power_sums(images, mask_radius_px, n_shells))


def estimate_noise_spectra(
    images: torch.Tensor, optics_group: torch.Tensor, n_groups: int, mask_radius_px: float | None = None
) -> torch.Tensor:
    """One noise spectrum per optics group: ``(n_groups, n_shells)``.

    ``optics_group (b,)`` indexes the group of each image. A group without images gets the
    spectrum of all images pooled.
    """
    box, _ = _check_images(images)
    optics_group = torch.as_tensor(optics_group, device=images.device).long()
    if optics_group.shape != images.shape[:1]:
        raise ValueError(f"optics_group must be ({images.shape[0]},), got {tuple(optics_group.shape)}")
    pooled = noise_power_sums(images, mask_radius_px)
    out = []
    for g in range(int(n_groups)):
        sel = optics_group == g
        out.append(_finish_spectrum(*(noise_power_sums(images[sel], mask_radius_px) if sel.any() else pooled)))
    return torch.stack(out)


def spectrum_to_image(spectrum: torch.Tensor, box: int) -> torch.Tensor:
    """Radial ``spectrum (..., n_shells)`` laid on the ``rfft2`` grid: ``(..., box, box//2+1)``."""
    n = spectrum.shape[-1]
    shells = shell_index_2d(box, spectrum.device).clamp(max=n - 1)  # (h, w//2+1)
    return spectrum[..., shells]


@functools.lru_cache(maxsize=64)
def _band_plane(box: int, max_freq_px: float | None, n_shells: int, device: torch.device, dtype: torch.dtype,
                scale: float = 1.0):
    """``(scale * plane_w * allowed (h, w//2+1) dtype, shell (h, w//2+1) long)``: the fixed part of
    :func:`_weights`, built once per box, band, device and dtype (latent inference evaluates
    the loss about a hundred times a minibatch at one band). Read only."""
    k = radial_frequency_2d(box, device)
    allowed = k > 0  # DC dropped
    if max_freq_px is not None:
        allowed = allowed & (k <= max_freq_px)
    plane_w = (rfft_plane_weights(box, device) * allowed * scale).to(dtype)
    return plane_w, torch.round(k).long().clamp(max=n_shells - 1)


def _weights(box: int, noise_spectrum: torch.Tensor, max_freq_px: float | None, device, dtype,
             scale: float = 1.0) -> torch.Tensor:
    """Per-coefficient weight ``scale * plane_w * allowed / P`` on the rfft grid, ``(.., h, w//2+1)``."""
    spectrum = torch.as_tensor(noise_spectrum, device=device, dtype=dtype)
    band = None if max_freq_px is None else float(max_freq_px)
    plane_w, shells = _band_plane(int(box), band, spectrum.shape[-1], torch.device(device), dtype, scale)
    return plane_w / spectrum[..., shells]


def fit_scale(
    pred: torch.Tensor, target: torch.Tensor, noise_spectrum: torch.Tensor, max_freq_px: float | None = None
) -> torch.Tensor:
    """Per-image scale ``s (b,)`` minimising the whitened ``|F(target - s * pred)|^2``."""
    box, _ = _check_images(pred, "pred")
    w = _weights(box, noise_spectrum, max_freq_px, pred.device, pred.dtype)
    fp = torch.view_as_real(torch.fft.rfft2(pred, norm="ortho"))
    return _fit_scale(w, fp, torch.view_as_real(torch.fft.rfft2(target, norm="ortho")))


def _fit_scale(w: torch.Tensor, fp: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """:func:`fit_scale` from the weights ``(.., h, w//2+1)`` and both spectra as real views ``(b, h, w//2+1, 2)``
    (the weights' scale cancels)."""
    num = (w * (fp * ft).sum(-1)).sum(dim=(-2, -1))
    den = (w * fp.square().sum(-1)).sum(dim=(-2, -1))
    return num / den.clamp(min=torch.finfo(w.dtype).tiny)


def data_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    noise_spectrum: torch.Tensor,
    max_freq_px: float | None = None,
    scale: torch.Tensor | str | None = None,
) -> torch.Tensor:
    """Whitened data term per image, ``(b,)``.

    Parameters
    ----------
    pred, target
        ``(b, h, w)`` model images (CTF applied) and particle images, same box.
    noise_spectrum
        ``(n_shells,)`` or per image ``(b, n_shells)`` (index a per-group table with the
        images' optics groups), as :func:`estimate_noise_spectrum` returns.
    max_freq_px
        Band limit in Fourier pixels of this box (``None``: every frequency but DC).
    scale
        ``None`` (1), a tensor ``(b,)`` or ``"fit"`` for the optimal per-image scale
        (:func:`fit_scale`, differentiated through).
    """
    box, _ = _check_images(pred, "pred")
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and pred {tuple(pred.shape)} differ in shape")
    if isinstance(scale, str) and scale != "fit":
        raise ValueError(f"scale must be None, a tensor or 'fit', got {scale!r}")
    if isinstance(scale, str):  # the transform is linear: F(target - s pred) = F(target) - s F(pred)
        return spectral_data_loss(torch.fft.rfft2(pred, norm="ortho"), torch.fft.rfft2(target, norm="ortho"),
                                  noise_spectrum, box, max_freq_px)
    half_w = _weights(box, noise_spectrum, max_freq_px, pred.device, pred.dtype, scale=0.5)  # (.., h, w//2+1)
    if scale is not None:
        pred = pred * torch.as_tensor(scale, dtype=pred.dtype, device=pred.device).reshape(-1, 1, 1)
    resid = torch.view_as_real(torch.fft.rfft2(target - pred, norm="ortho"))  # (b, h, w//2+1, 2)
    # 0.5 sits in the weights (a power of two: the same numbers as halving the sum); r * r: square()'s numbers and
    # gradient (2 (g r) = g (2 r)) in fewer calls
    return (half_w * (resid * resid).sum(-1)).sum(dim=(-2, -1))


def spectral_data_loss(
    pred_ft: torch.Tensor, target_ft: torch.Tensor, noise_spectrum: torch.Tensor, box: int,
    max_freq_px: float | None = None,
) -> torch.Tensor:
    """:func:`data_loss` with ``scale="fit"`` from both images' orthonormal ``rfft2`` ``(b, box, box//2+1)``
    (complex): a model made in Fourier space (the CTF applied there) needs no transform back and forth.

    ``pred_ft`` may carry leading axes the rest broadcast over: ``(g, b, box, box//2+1)`` against the
    particles' ``(b, box, box//2+1)`` and ``(b, n_shells)`` gives ``(g, b)`` (candidates of latent inference)."""
    half_w = _weights(box, noise_spectrum, max_freq_px, pred_ft.device, pred_ft.dtype.to_real(), scale=0.5)  # (.., h, w//2+1)
    fp, ft = torch.view_as_real(pred_ft), torch.view_as_real(target_ft)  # (b, h, w//2+1, 2)
    scale = _fit_scale(half_w, fp, ft)  # (..., b)
    resid = ft - scale.view(scale.shape + (1, 1, 1)) * fp
    # 0.5 sits in the weights (a power of two: the same numbers as halving the sum); r * r: square()'s numbers and
    # gradient (2 (g r) = g (2 r)) in fewer calls
    return (half_w * (resid * resid).sum(-1)).sum(dim=(-2, -1))


def band_coefficients(box: int, max_freq_px: float | None = None) -> float:
    """How many real Fourier coefficients :func:`data_loss` sums over (DC excluded).

    ``2 * data_loss / band_coefficients`` is the whitened residual per coefficient: 1 for
    an image of pure noise with the estimated spectrum, whatever the band (a fit that
    explains the signal approaches 1 from above).
    """
    k, plane_w = _plane_radius(int(box))
    allowed = k > 0
    if max_freq_px is not None:
        allowed = allowed & (k <= np.float32(max_freq_px))  # in float32, as the loss's weights compare
    return float((plane_w * allowed).sum())


@functools.lru_cache(maxsize=16)
def _plane_radius(box: int) -> tuple[np.ndarray, np.ndarray]:
    """``(|k| float32, plane weights float64)``, both ``(box, box//2+1)``, made once per box: the loop asks
    :func:`band_coefficients` every step at a new band, and NumPy counts without torch operator calls."""
    return radial_frequency_2d(box, "cpu").numpy(), rfft_plane_weights(box, "cpu").double().numpy()


def total_loss(
    data: torch.Tensor, rigidity: torch.Tensor | None = None, lambda_rigid: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """``L = E_data + lambda_rigid * E_rigid`` from per-image terms ``(b,)``; a scalar.

    ``reduction="mean"`` averages over the batch (learning rates independent of batch size),
    ``"sum"`` is the paper's sum.
    """
    loss = data if rigidity is None or lambda_rigid == 0 else data + lambda_rigid * rigidity
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
