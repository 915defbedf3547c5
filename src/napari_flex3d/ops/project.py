"""The reference rigid projector (Fourier slice, torch-fourier-slice, pad 2).

A room of ``ops``; it imports torch-fourier-slice and the rest of ``ops``.

A map point ``r`` (xyz Å from voxel ``N // 2``) lands in image ``i`` at
``(A_i r)_xy - shift_i`` from pixel ``N // 2`` (docs/conventions.md). torch-fourier-slice
puts a point ``b`` at ``(R^T b)_xy`` (its rotation convention), so we pass ``R = A^T``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fourier_slice import project_3d_to_2d

from napari_flex3d.ops.fourier import shift_images

__all__ = ["project", "as_rotations"]


def as_rotations(rotations, like: torch.Tensor) -> torch.Tensor:
    """``rotations (b, 3, 3)`` (numpy or torch) -> tensor on ``like``'s device and dtype."""
    if isinstance(rotations, np.ndarray):
        rotations = torch.from_numpy(rotations)
    rotations = rotations.to(device=like.device, dtype=like.dtype)
    if rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must be (..., 3, 3), got {tuple(rotations.shape)}")
    return rotations


def project(
    volume: torch.Tensor,
    rotations,
    shifts_a=None,
    apix: float = 1.0,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Project ``volume (d, h, w)`` at poses ``rotations (b, 3, 3)`` (our ``A``).

    Parameters
    ----------
    volume
        ``(N, N, N)`` real-space map (z, y, x).
    rotations
        ``(b, 3, 3)`` matrices ``A`` (map -> image frame); numpy or torch.
    shifts_a
        ``(b, 2)`` x, y in Å (RELION's origin): the image content moves by ``-shift``.
        ``None`` for no shift.
    apix
        Pixel size in Å (only used to convert the shifts).
    pad_factor
        Oversampling of the Fourier slice (2 is accurate; 1 is faster).

    Returns
    -------
    ``(b, N, N)`` images, line integrals in voxel units (sum of voxel values along the
    view axis), differentiable in ``volume``, ``rotations`` and ``shifts_a``.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume must be cubic (N, N, N), got {tuple(volume.shape)}")
    # torch-fourier-slice samples with float32 grids: compute in float32, return the input dtype
    vol32 = volume.float()
    a = as_rotations(rotations, vol32)  # (b, 3, 3)
    images = project_3d_to_2d(vol32, a.transpose(-1, -2), pad_factor=pad_factor).to(volume.dtype)  # (b, N, N)
    if shifts_a is not None:
        shifts_a = torch.as_tensor(shifts_a, device=volume.device).to(volume.dtype)
        images = shift_images(images, -shifts_a, apix)
    return images
