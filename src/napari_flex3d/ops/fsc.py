"""Fourier shell correlation (torch-fourier-shell-correlation) and resolution at a threshold.

A room of ``ops``; it imports torch-fourier-shell-correlation, torch and numpy.

Shell ``i`` (``0 .. N // 2``) is at spatial frequency ``i / (N * apix)`` 1/Å.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fourier_shell_correlation import fourier_shell_correlation

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
    return fourier_shell_correlation(a, b.to(a))


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
