"""What moved, by how much, and where the molecule bent: displacement and strain of a run's flow.

Along latent axis ``i`` the run's flow is evaluated at the latents' mean moved by
``-1.5`` and ``+1.5`` standard deviations (the ends of ``flex3d generate --axis``'s
series). The **displacement** of a vertex is the distance between its two end positions
(Å). The **strain** of a cell is how far the map between the two ends,
``F = F(+) F(-)^-1`` (``F(z) = I + dD(z) D^-1``, ``mesh.rigidity.deformation_gradients``),
is from a rotation: ``sqrt(sum_l (s_l - 1)^2)`` over its signed singular values, 0 for any
rigid motion of the cell however large, and about the relative stretch where it bends.

The same two measures hold between any two latent points: :func:`path_motion` gives them
from a reference point to every frame of a path (the explorer's traversals),
:func:`point_motion` at any points of the rest frame (an iso-surface's vertices), and
:func:`boundary_surface` the mesh's outer surface to colour by them.

Both are laid on the map grid (the training box and voxel size) for ChimeraX:
displacement through the model's own FEM interpolation at every mask voxel, strain as the
value of the cell holding the voxel; :func:`write_traversal_motion` writes them per frame.
Imports torch, ``mesh``, ``model``, ``io`` and ``explore.series`` (writing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["SIGMA_RANGE", "axis_end_latents", "cell_strain", "vertex_displacement", "voxel_cells", "axis_motion",
           "path_motion", "point_motion", "boundary_surface", "region_table", "write_traversal_motion"]

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
def path_motion(model, zs, reference=None, holder: np.ndarray | None = None) -> dict:
    """Displacement and strain of a ``model.flex.FlexModel`` from ``reference (K,)`` (default
    ``zs[0]``) to each latent point of ``zs (f, K)`` (a path, an axis traversal, or one point).

    Returns ``{"vertex_displacement_a": (f, v), "cell_strain": (f, t), "voxel_displacement_a":
    (f, n_vox), "displacement_maps_a": (f, N, N, N), "strain_maps": (f, N, N, N)}`` as NumPy
    float32 on the model's grid (zero outside its mask). ``holder``: :func:`voxel_cells` of
    the model's mask voxels, when the caller has it already.
    """
    zs = torch.as_tensor(np.asarray(zs, np.float32)).reshape(-1, model.latent_dim).to(model.vertices_a)  # (f, K)
    ref = zs[:1] if reference is None else torch.as_tensor(np.asarray(reference, np.float32)).reshape(1, -1).to(zs)
    rest = model.vertices_a.detach().cpu().double()
    cells = model.cells.detach().cpu()
    if holder is None:
        points = model.canonical.points_xyz_a.detach().cpu().numpy()
        holder = voxel_cells(rest.numpy(), cells.numpy(), points, model.box, model.apix)  # (n_vox,)
    holder_t = torch.as_tensor(holder)
    d_ref = model.displacements(ref).detach().cpu()[0]  # (v, 3) Å
    u_ref = model.voxel_flow(ref).detach()[0]  # (n_vox, 3) Å
    out = {k: [] for k in ("vertex_displacement_a", "cell_strain", "displacement_maps_a", "strain_maps",
                           "voxel_displacement_a")}
    for z in zs:
        d = model.displacements(z[None]).detach().cpu()[0]  # (v, 3) Å
        u = model.voxel_flow(z[None]).detach()[0]  # (n_vox, 3) Å
        vox_disp = torch.linalg.vector_norm(u - u_ref, dim=-1)  # (n_vox,)
        strain = cell_strain(rest, cells, d_ref, d).float()  # (t,)
        vox_strain = torch.where(holder_t >= 0, strain[holder_t.clamp(min=0)], 0.0)  # (n_vox,)
        out["vertex_displacement_a"].append(vertex_displacement(d_ref, d).float().numpy())
        out["cell_strain"].append(strain.numpy())
        out["voxel_displacement_a"].append(vox_disp.float().cpu().numpy())
        out["displacement_maps_a"].append(model.canonical.to_volume(vox_disp.to(model.canonical.values)).cpu().numpy())
        out["strain_maps"].append(model.canonical.to_volume(vox_strain.to(model.canonical.values)).cpu().numpy())
    return {k: np.stack(v).astype(np.float32) for k, v in out.items()}


@torch.no_grad()
def axis_motion(model, latents: np.ndarray, sigma_range: float = SIGMA_RANGE) -> dict:
    """Displacement and strain of each latent axis of a ``model.flex.FlexModel``.

    Returns ``{"vertex_displacement_a": (K, v), "cell_strain": (K, t), "displacement_maps_a":
    (K, N, N, N), "strain_maps": (K, N, N, N), "voxel_displacement_a": (K, n_vox)}`` as
    NumPy float32, on the model's grid (zero outside its mask): :func:`path_motion` from
    each axis's start to its end (:func:`axis_end_latents`).
    """
    points = model.canonical.points_xyz_a.detach().cpu().numpy()
    holder = voxel_cells(model.vertices_a.detach().cpu().double().numpy(), model.cells.cpu().numpy(), points,
                         model.box, model.apix)  # (n_vox,)
    per_axis = []
    for axis in range(model.latent_dim):
        ends = axis_end_latents(latents, axis, sigma_range)  # (2, K)
        per_axis.append(path_motion(model, ends[1:], reference=ends[0], holder=holder))
    return {k: np.concatenate([m[k] for m in per_axis]) for k in per_axis[0]}


@torch.no_grad()
def point_motion(model, points_xyz_a: np.ndarray, z, reference) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(n, 3)`` xyz Å of the rest (canonical) frame, moved by the flow at ``z (K,)``,
    and how far each moves from ``reference (K,)`` to ``z`` (Å): ``((n, 3), (n,))``.

    The flow at each point is the model's FEM interpolation of its vertex displacements
    (points outside the mesh take their nearest cell's clamped weights).
    """
    from ..mesh.barycentric import barycentric_matrix, interpolate_vertex_field
    from ..mesh.mesh import Mesh

    pts = np.asarray(points_xyz_a, np.float64).reshape(-1, 3)
    mesh = Mesh(model.vertices_a.detach().cpu().double().numpy(), model.cells.cpu().numpy(), model.box, model.apix)
    b = barycentric_matrix(mesh, pts, dtype=torch.float64)  # (n, v) sparse
    zs = torch.as_tensor(np.stack([np.asarray(reference, np.float32).ravel(), np.asarray(z, np.float32).ravel()]))
    d = model.displacements(zs.to(model.vertices_a)).detach().cpu().double()  # (2, v, 3) Å
    u = interpolate_vertex_field(b, d)  # (2, n, 3) Å
    moved = pts + u[1].numpy()
    return moved, torch.linalg.vector_norm(u[1] - u[0], dim=-1).numpy()


def boundary_surface(model, z=None) -> tuple[np.ndarray, np.ndarray]:
    """The mesh's boundary as a triangle surface: vertices ``(v, 3)`` xyz Å (moved by the flow
    at ``z (K,)``, or at rest) and outward-wound faces ``(f, 3)`` indexing them (every mesh
    vertex is kept, so per-vertex values of :func:`path_motion` line up)."""
    from ..mesh.mesh import surface_triangles

    verts = model.vertices_a.detach().cpu().double()
    if z is not None:
        with torch.no_grad():
            zt = torch.as_tensor(np.asarray(z, np.float32).reshape(1, -1)).to(model.vertices_a)
            verts = verts + model.displacements(zt).detach().cpu().double()[0]
    return verts.numpy(), surface_triangles(model.cells.cpu().numpy())


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


def write_traversal_motion(out_dir, motion: dict, zs: np.ndarray, apix: float, canonical: np.ndarray) -> dict:
    """Write :func:`path_motion`'s maps of a traversal for ChimeraX; returns the paths written.

    ``out_dir/strain/strain_NNN.mrc`` and ``out_dir/displacement/displacement_NNN.mrc`` (one
    per frame, each folder with its ``series.cxc``), ``canonical.mrc`` (the rest-frame map
    ``(N, N, N)`` they are laid on), ``traversal.csv`` (each frame's latent, largest
    displacement and strain) and ``colour_by_strain.cxc``, which colours the canonical map's
    surface by the last frame's strain.
    """
    import pandas as pd

    from ..explore.series import cxc_quoted, write_volume_series
    from ..io.atomic import write_text
    from ..io.mrc import write_map

    out = Path(out_dir)
    zs = np.asarray(zs, np.float64)
    labels = ["flex3d strain z=" + ",".join(f"{v:.3f}" for v in z) for z in zs]
    strain, _ = write_volume_series(motion["strain_maps"], apix, out / "strain", prefix="strain", labels=labels)
    disp, _ = write_volume_series(motion["displacement_maps_a"], apix, out / "displacement", prefix="displacement",
                                  labels=[s.replace("strain", "displacement (Angstrom)") for s in labels])
    write_map(out / "canonical.mrc", canonical, apix, label="flex3d canonical map (rest frame of the motion maps)")
    table = pd.DataFrame(zs, columns=[f"z{k + 1}" for k in range(zs.shape[1])])
    table.insert(0, "frame", np.arange(len(zs)))
    table["max_displacement_a"] = motion["vertex_displacement_a"].max(1)
    table["mean_strain"] = motion["cell_strain"].mean(1)
    table["max_strain"] = motion["cell_strain"].max(1)
    csv = write_text(out / "traversal.csv", table.to_csv(index=False))
    level = float(np.percentile(canonical[canonical > 0], 90)) if np.any(canonical > 0) else 0.0
    top = float(max(motion["strain_maps"][-1].max(), 1e-6))
    script = write_text(out / "colour_by_strain.cxc", "\n".join([
        "# the canonical map coloured by the strain of the traversal's last frame (0 = rigid)",
        "open canonical.mrc",
        f"open {cxc_quoted('strain/' + strain[-1].name)}",
        f"volume #1 style surface level {level:.6g}",
        "volume #2 hide",
        f"color sample #1 map #2 palette inferno range 0,{top:.4g}",
        "",
    ]))
    return {"strain": strain, "displacement": disp, "canonical": out / "canonical.mrc", "table": csv, "script": script}
