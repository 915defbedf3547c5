"""Fourier shell correlation and resolution at a threshold.

A room of ``ops``; it imports torch and numpy.

Shell ``i`` (``0 .. N // 2``) is at spatial frequency ``i / (N * apix)`` 1/Å. The shells are
those of torch-fourier-shell-correlation's ``fourier_shell_correlation`` (each Fourier
coefficient of the rfft half-space counts in its two nearest shells, weighted linearly by its
distance to them; shell 0 is 1 by definition), computed in one pass over the coefficients
instead of one per shell (tests/ops/test_fsc.py checks the two agree).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["fsc", "fsc_resolution", "shell_frequencies_inv_a"]


def fsc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FSC between volumes ``a, b (..., d, h, w)`` -> ``(..., N // 2 + 1)``.

    ``mask`` ``(d, h, w)`` (soft, values in [0, 1]) multiplies both maps first.
    """
    if a.ndim < 3 or a.shape[-3:] != b.shape[-3:]:
        raise ValueError(f"fsc needs two volumes of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None:
        if mask.shape[-3:] != a.shape[-3:]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match volumes {tuple(a.shape)}")
        mask = mask.to(a)
        a, b = a * mask, b * mask
    return _shell_correlation(a, b.to(a))


@functools.lru_cache(maxsize=16)
def _shell_weights(shape: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(shell (2F,) long, weight (2F,) float32, n_shells)``: each of the ``F`` rfft coefficients of a
    ``shape`` volume counts in its shell below (first ``F``) and above (last ``F``) with linear
    weights; shells past the last go to a discarded one, index ``n_shells``. Read only."""
    d, h, w = shape
    kz, ky = torch.fft.fftfreq(d, device=device), torch.fft.fftfreq(h, device=device)
    kx = torch.fft.rfftfreq(w, device=device)
    freq = (kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx**2).sqrt().reshape(-1)  # (F,) cycles/voxel
    centres = torch.fft.rfftfreq(min(shape), device=device)  # (n_shells,)
    n = len(centres)
    below = (torch.searchsorted(centres, freq, right=True) - 1).clamp(0, n - 2)
    coord = below.float() + (freq - centres[below]) / (centres[below + 1] - centres[below])  # (F,) in shells
    low = coord.floor()
    frac = coord - low
    low = low.long().clamp(max=n)
    return torch.cat([low, (low + 1).clamp(max=n)]), torch.cat([1.0 - frac, frac]), n


def _shell_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(..., n_shells)``: the weighted correlation of ``a``'s and ``b``'s rfft coefficients in each shell."""
    shell, weight, n = _shell_weights(tuple(a.shape[-3:]), a.device)
    fa = torch.fft.rfftn(a, dim=(-3, -2, -1)).flatten(-3)  # (..., F)
    fb = torch.fft.rfftn(b, dim=(-3, -2, -1)).flatten(-3)
    terms = torch.stack([(fa * fb.conj()).real, fa.abs() ** 2, fb.abs() ** 2])  # (3, ..., F)
    # (3, ..., 2F): below, above (cat: 4 operator calls, repeat 33)
    terms = torch.cat([terms, terms], -1) * weight.to(terms.dtype)
    sums = terms.new_zeros(terms.shape[:-1] + (n + 1,)).index_add_(-1, shell, terms)  # (3, ..., n + 1)
    cross, norm = sums[0, ..., :n], sums[1, ..., :n].sqrt() * sums[2, ..., :n].sqrt()
    out = torch.where(norm > 0, cross / norm, torch.zeros_like(cross))
    out[..., 0] = 1.0  # the DC shell, by definition
    return out


def shell_frequencies_inv_a(box: int, apix: float) -> np.ndarray:
    """Spatial frequency of each FSC shell, ``(box // 2 + 1,)`` in 1/Å."""
    return np.arange(box // 2 + 1) / (box * apix)


def fsc_resolution(curve, box: int, apix: float, threshold: float = 0.143) -> float:
    """Resolution (Å) where ``curve (box // 2 + 1,)`` first drops below ``threshold``.

    The crossing is interpolated linearly between the shells around it. Shell 0 (DC)
    is ignored. If the curve never drops below, the Nyquist resolution ``2 * apix`` is
    returned; if it is below from shell 1 on, ``inf``.
    """
    c = np.asarray(curve.detach().cpu() if isinstance(curve, torch.Tensor) else curve, dtype=np.float64)
    f = shell_frequencies_inv_a(box, apix)
    if c.shape[-1] != f.shape[0]:
        raise ValueError(f"FSC curve has {c.shape[-1]} shells, box {box} needs {f.shape[0]}")
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return 2.0 * apix
    i = below[0] + 1  # first shell below
    if i == 1:
        return float("inf")
    c0, c1 = c[i - 1], c[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    freq = f[i - 1] + t * (f[i] - f[i - 1])
    return float(1.0 / freq)
