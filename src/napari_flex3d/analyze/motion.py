"""What moved, by how much, and where the molecule bent: displacement and strain of a run's flow.

Along latent axis ``i`` the run's flow is evaluated at the latents' mean moved by
``-1.5`` and ``+1.5`` standard deviations (the ends of ``flex3d generate --axis``'s
series). The **displacement** of a vertex is the distance between its two end positions
(Å). The **strain** of a cell is how far the map between the two ends,
``F = F(+) F(-)^-1`` (``F(z) = I + dD(z) D^-1``, ``mesh.rigidity.deformation_gradients``),
is from a rotation: ``sqrt(sum_l (s_l - 1)^2)`` over its signed singular values, 0 for any
rigid motion of the cell however large, and about the relative stretch where it bends.

Both are laid on the map grid (the training box and voxel size) for ChimeraX:
displacement through the model's own FEM interpolation at every mask voxel, strain as the
value of the cell holding the voxel. Imports torch, ``mesh`` and ``model`` only.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SIGMA_RANGE", "axis_end_latents", "cell_strain", "vertex_displacement", "voxel_cells", "axis_motion",
           "region_table"]

SIGMA_RANGE = 1.5  # the series' default span: the axis ends are mean -/+ 1.5 sd


def axis_end_latents(latents: np.ndarray, axis: int, sigma_range: float = SIGMA_RANGE) -> np.ndarray:
    """``(2, K)``: the latents' mean moved to ``-sigma_range`` and ``+sigma_range`` sd along ``axis``."""
    z = np.asarray(latents, np.float64)
    mean = z.mean(0)
    sd = z[:, axis].std(ddof=1) if len(z) > 1 else 1.0
    ends = np.stack([mean, mean])
    ends[0, axis] -= sigma_range * sd
    ends[1, axis] += sigma_range * sd
    return ends


def vertex_displacement(disp_start_a: torch.Tensor, disp_end_a: torch.Tensor) -> torch.Tensor:
    """``(v,)`` Å: how far each vertex moves between two flows ``(v, 3)`` of the same rest mesh."""
    return torch.linalg.vector_norm(disp_end_a - disp_start_a, dim=-1)


def cell_strain(rest_vertices_a: torch.Tensor, cells: torch.Tensor, disp_start_a: torch.Tensor,
                disp_end_a: torch.Tensor) -> torch.Tensor:
    """``(t,)``: deviation from rigid motion of each cell between two flows ``(v, 3)`` Å.

    ``sqrt(sum_l (s_l - 1)^2)`` with ``s`` the signed singular values of
    ``F(end) F(start)^-1`` (float64).
    """
    from ..mesh.rigidity import deformation_gradients, rest_edge_inverse, signed_singular_values

    rest = torch.as_tensor(rest_vertices_a, dtype=torch.float64)
    cells = torch.as_tensor(cells).long()
    rest_inv = rest_edge_inverse(rest, cells)  # (t, 3, 3)
    disp = torch.stack([torch.as_tensor(disp_start_a), torch.as_tensor(disp_end_a)]).to(torch.float64)  # (2, v, 3)
    f = deformation_gradients(rest_inv, disp, cells)  # (2, t, 3, 3)
    rel = f[1] @ torch.linalg.inv(f[0])  # (t, 3, 3): from the start state to the end state
    s = signed_singular_values(rel)  # (t, 3)
    return torch.sqrt(((s - 1.0) ** 2).sum(-1))


def voxel_cells(vertices_a: np.ndarray, cells: np.ndarray, points_xyz_a: np.ndarray, box: int, apix: float) -> np.ndarray:
    """``(n,)`` the cell holding each point ``(n, 3)`` xyz Å, -1 outside the mesh."""
    from ..mesh.barycentric import locate_points
    from ..mesh.mesh import Mesh

    loc = locate_points(Mesh(vertices_a, cells, box, apix), np.asarray(points_xyz_a, np.float64))
    return np.where(loc.inside, loc.cell, -1)


@torch.no_grad()
def axis_motion(model, latents: np.ndarray, sigma_range: float = SIGMA_RANGE) -> dict:
    """Displacement and strain of each latent axis of a ``model.flex.FlexModel``.

    Returns ``{"vertex_displacement_a": (K, v), "cell_strain": (K, t), "displacement_maps_a":
    (K, N, N, N), "strain_maps": (K, N, N, N), "voxel_displacement_a": (K, n_vox)}`` as
    NumPy float32, on the model's grid (zero outside its mask).
    """
    rest = model.vertices_a.detach().cpu().double()
    cells = model.cells.detach().cpu()
    points = model.canonical.points_xyz_a.detach().cpu().numpy()
    holder = voxel_cells(rest.numpy(), cells.numpy(), points, model.box, model.apix)  # (n_vox,)
    out = {k: [] for k in ("vertex_displacement_a", "cell_strain", "displacement_maps_a", "strain_maps",
                           "voxel_displacement_a")}
    for axis in range(model.latent_dim):
        ends = torch.as_tensor(axis_end_latents(latents, axis, sigma_range), dtype=torch.float32).to(model.vertices_a)
        d = model.displacements(ends).detach().cpu()  # (2, v, 3) Å
        u = model.voxel_flow(ends).detach()  # (2, n_vox, 3) Å
        vox_disp = torch.linalg.vector_norm(u[1] - u[0], dim=-1)  # (n_vox,)
        strain = cell_strain(rest, cells, d[0], d[1]).float()  # (t,)
        vox_strain = torch.where(torch.as_tensor(holder >= 0), strain[torch.as_tensor(holder).clamp(min=0)], 0.0)
        out["vertex_displacement_a"].append(vertex_displacement(d[0], d[1]).float().numpy())
        out["cell_strain"].append(strain.numpy())
        out["voxel_displacement_a"].append(vox_disp.float().cpu().numpy())
        out["displacement_maps_a"].append(model.canonical.to_volume(vox_disp.to(model.canonical.values)).cpu().numpy())
        out["strain_maps"].append(model.canonical.to_volume(vox_strain.to(model.canonical.values)).cpu().numpy())
    return {k: np.stack(v).astype(np.float32) for k, v in out.items()}


def region_table(voxel_displacement_a: np.ndarray, points_xyz_a: np.ndarray, labels: np.ndarray, labels_apix: float):
    """Displacement per painted region: a DataFrame ``region, voxels, axis, mean_a, max_a``.

    ``voxel_displacement_a (K, n_vox)`` at mask voxels ``points_xyz_a (n_vox, 3)``;
    ``labels`` a ``(M, M, M)`` integer volume (the consensus map's grid, voxel size
    ``labels_apix``), looked up at each voxel's nearest label voxel. Label 0 is background.
    """
    import pandas as pd

    labels = np.asarray(labels)
    if labels.ndim != 3 or len(set(labels.shape)) != 1:
        raise ValueError(f"a label volume must be cubic, got shape {labels.shape}")
    m = labels.shape[0]
    idx_xyz = np.rint(np.asarray(points_xyz_a) / labels_apix + m // 2).astype(np.int64)  # conventions: voxel m//2 at 0 Å
    inside = np.all((idx_xyz >= 0) & (idx_xyz < m), axis=1)
    lab = np.zeros(len(idx_xyz), np.int64)
    lab[inside] = np.rint(labels[idx_xyz[inside, 2], idx_xyz[inside, 1], idx_xyz[inside, 0]]).astype(np.int64)
    rows = []
    for region in sorted(set(lab.tolist()) - {0}):
        sel = lab == region
        for axis, disp in enumerate(np.asarray(voxel_displacement_a)):
            rows.append({"region": region, "voxels": int(sel.sum()), "axis": f"z{axis + 1}",
                         "mean_a": float(disp[sel].mean()), "max_a": float(disp[sel].max())})
    return pd.DataFrame(rows, columns=["region", "voxels", "axis", "mean_a", "max_a"])
