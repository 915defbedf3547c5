"""Tetrahedral mesh, a core room: masks, the mesh as data (:mod:`.mesh`), tetgen build,
barycentric interpolation, rigidity prior.

May import ``config``, ``conventions`` and ``ops``; never a feature room.

Typical use (docs/model.md)::

    m = solvent_mask(consensus, apix)                      # low-pass 10 Å, threshold, dilate 2 Å, pad 5 Å
    mesh = build_mesh(m.binary, apix, cells_across=20)     # tetgen, grid fallback
    w = cell_density_weights(mesh, consensus)             # empty cells at config.RIGIDITY_FLOOR
    mesh = mesh.replace(rigidity_weights=w)
    pts = voxel_centres_xyz_a(mask_voxel_indices(m.soft), m.soft.shape, apix)
    B = barycentric_matrix(mesh, pts)                      # sparse (n_vox, v), rows sum to 1
    u = interpolate_vertex_field(B, d * mask[:, None])     # (b, n_vox, 3) voxel flow
    e = RigidityPrior.from_mesh(mesh)(d)                   # (b,) rigidity energy
"""

from .barycentric import PointLocation, barycentric_matrix, interpolate_vertex_field, locate_points
from .build import build_grid_mesh, build_mesh
from .masks import MaskResult, mask_voxel_indices, solvent_mask, voxel_centres_xyz_a
from .mesh import Mesh, load_mesh, mesh_edges, save_mesh, surface_triangles
from .rigidity import (
    RigidityPrior,
    cell_density_weights,
    motion_mask_from_labels,
    raise_rigid_cells,
    rigidity_energy,
    signed_singular_values,
)

__all__ = [
    "MaskResult",
    "Mesh",
    "PointLocation",
    "RigidityPrior",
    "barycentric_matrix",
    "build_grid_mesh",
    "build_mesh",
    "cell_density_weights",
    "motion_mask_from_labels",
    "interpolate_vertex_field",
    "load_mesh",
    "locate_points",
    "mask_voxel_indices",
    "mesh_edges",
    "raise_rigid_cells",
    "rigidity_energy",
    "save_mesh",
    "signed_singular_values",
    "solvent_mask",
    "surface_triangles",
    "voxel_centres_xyz_a",
]
