"""A consensus map to a finished mesh: mask, tetrahedra, rigidity weights and painted labels.

The one recipe behind ``flex3d mesh`` and the Data and mesh widget's "Save mesh", so that the
command a widget writes for its mesh rebuilds the same file. Imports the mesh room only.
"""

from __future__ import annotations

import numpy as np

from .build import build_mesh
from .masks import MaskResult, solvent_mask
from .mesh import Mesh
from .rigidity import cell_density_weights, motion_mask_from_labels, raise_rigid_cells

__all__ = ["finish_mesh", "mesh_from_map"]


def finish_mesh(mesh: Mesh, mask: MaskResult, *, rigidity_floor: float, rigid_labels=None, rigid_factor: float = 10.0,
                no_motion_labels=None) -> Mesh:
    """``mesh`` with rigidity weights from the mask's low-passed map (floored at ``rigidity_floor``),
    raised ``rigid_factor`` times in the cells of ``rigid_labels > 0``, and a motion mask that holds
    still the vertices in ``no_motion_labels > 0`` (label volumes on the map's grid, or ``None``)."""
    weights = cell_density_weights(mesh, mask.lowpassed, min_weight=rigidity_floor)
    if rigid_labels is not None:
        weights = raise_rigid_cells(mesh, weights, np.asarray(rigid_labels), factor=rigid_factor)
    motion = None if no_motion_labels is None else motion_mask_from_labels(mesh, np.asarray(no_motion_labels))
    return mesh.replace(rigidity_weights=weights, motion_mask=motion)


def mesh_from_map(volume: np.ndarray, apix: float, *, cell_size_a: float, threshold: float | None = None,
                  volume_fraction: float | None = None, lowpass_a: float | None = 10.0, dilate_a: float = 6.0,
                  rigidity_floor: float, rigid_labels=None, rigid_factor: float = 10.0,
                  no_motion_labels=None) -> tuple[Mesh, MaskResult]:
    """``(finished mesh, mask)`` of a consensus map: :func:`solvent_mask` (``lowpass_a`` 0 or ``None``:
    no low-pass), tetgen cells of ``cell_size_a`` Å over the mask, then :func:`finish_mesh`."""
    mask = solvent_mask(volume, apix, threshold=threshold, volume_fraction=volume_fraction,
                        lowpass_a=lowpass_a or None, dilate_a=dilate_a)
    mesh = build_mesh(mask.binary, apix, cell_size_a=cell_size_a)
    mesh = finish_mesh(mesh, mask, rigidity_floor=rigidity_floor, rigid_labels=rigid_labels,
                       rigid_factor=rigid_factor, no_motion_labels=no_motion_labels)
    return mesh, mask
