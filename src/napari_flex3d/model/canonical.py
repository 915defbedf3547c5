"""The canonical map ``V``: density values at the voxels of a solvent mask.

A room of ``model``; it may import ``conventions`` and ``ops``.

``V`` lives on the full ``(N, N, N)`` grid but only the voxels inside the mask are free
(paper §2; docs/model.md). The values are held as a flat ``(n_vox,)`` parameter beside the
voxel centres ``(n_vox, 3)`` xyz Å, which are the points the flow moves and the splat
projects. Frequency marching constrains ``V`` to be low-pass: :func:`bandlimit` is the
band limit on the full grid.
"""

from __future__ import annotations

import torch
from torch import nn

from ..conventions import voxel_grid_xyz_a
from ..ops.fourier import lowpass

__all__ = [
    "CanonicalMap",
    "bandlimit",
    "mask_voxels",
    "scatter_to_volume",
    "gather_from_volume",
]


def bandlimit(volume: torch.Tensor, max_freq_px: float | None, edge_px: float = 0.0) -> torch.Tensor:
    """Low-pass ``volume (..., N, N, N)`` to radius ``max_freq_px`` Fourier pixels.

    Frequencies with ``|k| <= max_freq_px`` pass unchanged; with ``edge_px > 0`` a raised
    cosine falls from 1 to 0 over ``(max_freq_px, max_freq_px + edge_px]``. ``None`` returns
    the volume unchanged. Differentiable (a linear, self-adjoint operator). To low-pass to
    a resolution ``res_a`` use ``max_freq_px = N * apix / res_a``.
    """
    if max_freq_px is None:
        return volume
    box = volume.shape[-1]
    if volume.shape[-3:] != (box, box, box):
        raise ValueError(f"bandlimit needs a cubic volume (..., N, N, N), got {tuple(volume.shape)}")
    return lowpass(volume, max_freq_px, edge_px, ndim=3, d=1.0 / box)  # d = 1/N: |k| in Fourier pixels


def mask_voxels(mask: torch.Tensor, apix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(n_vox,)`` and centres ``(n_vox, 3)`` xyz Å of the voxels of a mask.

    ``mask (N, N, N)`` is (z, y, x); voxels are listed in C order of the grid.
    """
    mask = torch.as_tensor(mask)
    if mask.ndim != 3 or len(set(mask.shape)) != 1:
        raise ValueError(f"mask must be a cubic (N, N, N) volume, got shape {tuple(mask.shape)}")
    flat = mask.reshape(-1) > 0.5 if mask.dtype != torch.bool else mask.reshape(-1)
    index = torch.nonzero(flat, as_tuple=False).squeeze(1)  # (n_vox,)
    grid = voxel_grid_xyz_a(mask.shape[0], apix, device=mask.device).reshape(-1, 3)  # (N^3, 3) xyz
    return index, grid[index]


def scatter_to_volume(values: torch.Tensor, index: torch.Tensor, box: int) -> torch.Tensor:
    """Place ``values (..., n_vox)`` at flat ``index (n_vox,)`` of a zero ``(..., N, N, N)`` volume."""
    lead = values.shape[:-1]
    vol = values.new_zeros(lead + (box**3,))
    vol = vol.index_copy(-1, index, values)  # out-of-place: differentiable in values
    return vol.reshape(lead + (box, box, box))


def gather_from_volume(volume: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values ``(..., n_vox)`` of ``volume (..., N, N, N)`` at flat ``index (n_vox,)``."""
    return volume.reshape(volume.shape[:-3] + (-1,))[..., index]


class CanonicalMap(nn.Module):
    """The canonical density ``V`` restricted to a solvent mask.

    Attributes
    ----------
    values : nn.Parameter ``(n_vox,)``
        The free density values (what the optimiser of ``V`` updates).
    voxel_index : buffer ``(n_vox,)`` long
        Flat C-order index of each value in the ``(N, N, N)`` grid.
    points_xyz_a : buffer ``(n_vox, 3)``
        The voxel centres, xyz Å, centred at voxel ``N // 2``.
    """

    def __init__(self, values: torch.Tensor, voxel_index: torch.Tensor, box: int, apix: float):
        super().__init__()
        values = torch.as_tensor(values, dtype=torch.float32)
        voxel_index = torch.as_tensor(voxel_index, dtype=torch.long)
        if values.ndim != 1 or values.shape != voxel_index.shape:
            raise ValueError(
                f"values {tuple(values.shape)} and voxel_index {tuple(voxel_index.shape)} must be equal 1-D shapes"
            )
        if voxel_index.numel() and (int(voxel_index.min()) < 0 or int(voxel_index.max()) >= box**3):
            raise ValueError(f"voxel_index out of range for box {box}")
        self.box = int(box)
        self.apix = float(apix)
        self.values = nn.Parameter(values.clone())
        self.register_buffer("voxel_index", voxel_index.clone())
        grid = voxel_grid_xyz_a(self.box, self.apix, device=voxel_index.device).reshape(-1, 3)
        self.register_buffer("points_xyz_a", grid[voxel_index].clone())

    @classmethod
    def from_volume(
        cls, volume, mask, apix: float, lowpass_a: float | None = None, edge_px: float = 2.0
    ) -> "CanonicalMap":
        """Canonical map from a consensus ``volume (N, N, N)`` (optionally low-passed to
        ``lowpass_a`` Å) restricted to ``mask (N, N, N)``."""
        volume = torch.as_tensor(volume, dtype=torch.float32)
        mask = torch.as_tensor(mask)
        if volume.ndim != 3 or volume.shape != mask.shape or len(set(volume.shape)) != 1:
            raise ValueError(
                f"consensus map {tuple(volume.shape)} and mask {tuple(mask.shape)} must be the same cubic shape"
            )
        box = volume.shape[0]
        if lowpass_a is not None:
            if lowpass_a <= 0:
                raise ValueError(f"lowpass_a must be positive, got {lowpass_a}")
            volume = bandlimit(volume, box * apix / lowpass_a, edge_px=edge_px)
        index, _ = mask_voxels(mask, apix)
        return cls(gather_from_volume(volume, index), index, box, apix)

    @property
    def n_voxels(self) -> int:
        return int(self.voxel_index.numel())

    def to_volume(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The full ``(N, N, N)`` map (zero outside the mask); ``values`` default to ``self.values``."""
        return scatter_to_volume(self.values if values is None else values, self.voxel_index, self.box)

    def from_full(self, volume: torch.Tensor) -> torch.Tensor:
        """Values ``(n_vox,)`` of a full ``(N, N, N)`` volume at the mask voxels."""
        if tuple(volume.shape[-3:]) != (self.box,) * 3:
            raise ValueError(f"volume must be ({self.box},)*3, got {tuple(volume.shape)}")
        return gather_from_volume(volume, self.voxel_index)

    def band_limited(self, max_freq_px: float | None, edge_px: float = 0.0) -> torch.Tensor:
        """The values ``(n_vox,)`` after band-limiting the full map (frequency marching)."""
        if max_freq_px is None:
            return self.values
        return self.from_full(bandlimit(self.to_volume(), max_freq_px, edge_px=edge_px))

    def forward(self) -> torch.Tensor:
        return self.values
