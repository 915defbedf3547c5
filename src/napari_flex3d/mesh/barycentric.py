"""Point location in a tetrahedral mesh and the FEM interpolation matrix ``B``.

A room of ``mesh``; it imports numpy, scipy, torch and :mod:`.mesh`.

Every point (a masked voxel centre) gets the cell that contains it and its four
barycentric weights, stored once as a sparse ``(n, v)`` matrix ``B`` whose rows sum
to 1, so a per-vertex field ``d (v, 3)`` becomes the per-point field ``B d (n, 3)``:
exact linear FEM interpolation inside the cells.

Location is vectorised numpy: candidate cells for each point (from a uniform grid of
bins, or from a KD-tree of cell centroids) are tested all at once by their barycentric
coordinates; a cell where none is negative (to a tolerance) holds the point. A point
in no cell at all (outside the mesh) takes the weights of the nearest point of the
mesh (searched among the cells of its nearest centroids): the clamped weights,
non-negative and summing to 1, never a silent zero row.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from .mesh import Mesh

__all__ = [
    "PointLocation",
    "locate_points",
    "barycentric_coordinates",
    "barycentric_matrix",
    "interpolate_vertex_field",
]


@dataclass(frozen=True)
class PointLocation:
    """Where points lie in a mesh.

    Attributes:
        cell: ``(n,)`` int64 index of the containing (or, when ``inside`` is False,
            nearest) cell.
        weights: ``(n, 4)`` float64 barycentric weights on that cell's vertices, each
            row non-negative and summing to 1.
        inside: ``(n,)`` bool, whether the point lies in its cell (to the tolerance).
        outside_distance_a: ``(n,)`` float64, for points outside every cell the distance
            (Å) from the point to the nearest point of the chosen cell (its clamped
            position, where ``weights`` put it); 0 inside.
    """

    cell: np.ndarray
    weights: np.ndarray
    inside: np.ndarray
    outside_distance_a: np.ndarray


def _cell_frames(vertices: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origins ``(t, 3)`` and inverse edge matrices ``(t, 3, 3)`` mapping ``p - x0`` to ``(l1, l2, l3)``."""
    x = vertices[cells]  # (t, 4, 3)
    origin = x[:, 0]
    edges = np.transpose(x[:, 1:] - x[:, :1], (0, 2, 1))  # (t, 3, 3) columns = x1-x0, x2-x0, x3-x0
    return origin, np.linalg.inv(edges)


def barycentric_coordinates(vertices_a: np.ndarray, cells: np.ndarray, cell_idx: np.ndarray, points_a: np.ndarray):
    """Barycentric coordinates ``(n, 4)`` of ``points_a (n, 3)`` in cells ``cell_idx (n,)`` (unclamped)."""
    origin, inv = _cell_frames(np.asarray(vertices_a, np.float64), np.asarray(cells, np.int64)[cell_idx])
    lam = np.einsum("nij,nj->ni", inv, np.asarray(points_a, np.float64) - origin)  # (n, 3)
    return np.concatenate([1.0 - lam.sum(1, keepdims=True), lam], axis=1)  # (n, 4)


def _bary_candidates(points, cand, origin, inv):
    """Barycentrics ``(n, k, 4)`` of ``points (n, 3)`` in candidate cells ``cand (n, k)``."""
    rel = points[:, None, :] - origin[cand]  # (n, k, 3)
    lam = np.einsum("nkij,nkj->nki", inv[cand], rel)  # (n, k, 3)
    return np.concatenate([1.0 - lam.sum(-1, keepdims=True), lam], axis=-1)  # (n, k, 4)


def _search(points, cand, origin, inv, tol):
    """Best candidate per point: the first containing one, else the one it is least outside of.

    ``cand (n, k)`` may hold ``t`` (= no candidate, as cKDTree reports a missing neighbour).
    """
    t = len(origin)
    valid = cand < t
    safe = np.where(valid, cand, 0)
    bary = _bary_candidates(points, safe, origin, inv)  # (n, k, 4)
    worst = np.where(valid, bary.min(-1), -np.inf)  # (n, k) most negative coordinate per candidate
    best = worst.argmax(1)  # (n,)
    rows = np.arange(len(points))
    return safe[rows, best], bary[rows, best], worst[rows, best] >= -tol


_TET_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
_TET_FACES = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])


def _nearest_point_weights(points, corners):
    """Barycentric weights ``(..., 4)`` of the point of each tetrahedron nearest to a point outside it.

    Args:
        points: ``(..., 3)``. corners: ``(..., 4, 3)`` the tetrahedra's vertices.

    The nearest point of a tetrahedron to a point outside it lies on its boundary: inside
    a face (the orthogonal projection onto the face's plane, when its barycentrics are all
    non-negative) or on an edge (the projection onto the edge's line clamped to the
    segment, which includes the vertices). All ten are tried; the nearest wins.
    """
    shape = points.shape[:-1]
    best_w = np.zeros(shape + (4,))
    best_d = np.full(shape, np.inf)
    for i, j in _TET_EDGES:
        a, e = corners[..., i, :], corners[..., j, :] - corners[..., i, :]
        t = np.clip(((points - a) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-300), 0.0, 1.0)
        d = np.linalg.norm(a + t[..., None] * e - points, axis=-1)
        better = d < best_d
        w = np.zeros(shape + (4,))
        w[..., i], w[..., j] = 1.0 - t, t
        best_w[better], best_d[better] = w[better], d[better]
    for i, j, k in _TET_FACES:
        a = corners[..., i, :]
        e1, e2, r = corners[..., j, :] - a, corners[..., k, :] - a, points - a
        g11, g12, g22 = (e1 * e1).sum(-1), (e1 * e2).sum(-1), (e2 * e2).sum(-1)
        r1, r2 = (r * e1).sum(-1), (r * e2).sum(-1)
        det = np.maximum(g11 * g22 - g12 * g12, 1e-300)
        u, v = (g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det
        ok = (u >= 0) & (v >= 0) & (u + v <= 1)
        d = np.linalg.norm(a + u[..., None] * e1 + v[..., None] * e2 - points, axis=-1)
        better = ok & (d < best_d)
        w = np.zeros(shape + (4,))
        w[..., i], w[..., j], w[..., k] = 1.0 - u - v, u, v
        best_w[better], best_d[better] = w[better], d[better]
    return best_w, best_d


def _nearest_clamped(points, cand, verts, cells):
    """For points outside the mesh: the candidate cell with the nearest point, and that point's weights."""
    corners = verts[cells[cand]]  # (n, k, 4, 3)
    w, dist = _nearest_point_weights(np.broadcast_to(points[:, None, :], corners.shape[:2] + (3,)), corners)
    best = dist.argmin(1)  # (n,)
    rows = np.arange(len(points))
    return cand[rows, best], w[rows, best], dist[rows, best]


def _locate_kdtree(pts, verts, cells, origin, inv, tree, centroids, tol):
    """Exact containing cells by KD-tree candidates (pure numpy); -1 where none."""
    n, t = len(pts), len(cells)
    # A cell holds a point only if the point is within the cell's centroid-to-vertex radius.
    r_max = float(np.linalg.norm(verts[cells] - centroids[:, None], axis=-1).max()) * (1 + 1e-9)
    cell = -np.ones(n, dtype=np.int64)
    settled = np.zeros(n, dtype=bool)  # containing cell found, or outside proven
    for kk in sorted({min(4, t), min(16, t), min(64, t)}):
        todo = np.flatnonzero(~settled)
        for s in range(0, len(todo), _CHUNK):
            idx = todo[s : s + _CHUNK]
            dk, cand = tree.query(pts[idx], k=kk, distance_upper_bound=r_max, workers=-1)
            cand, dk = cand.reshape(len(idx), -1), dk.reshape(len(idx), -1)
            c, _, ok = _search(pts[idx], cand, origin, inv, tol)
            cell[idx[ok]] = c[ok]
            settled[idx] = ok | ~np.isfinite(dk[:, -1]) | (kk == t)  # fewer than kk within r_max: all seen
    for i in np.flatnonzero(~settled):  # rare: crowds of small cells near the point
        cand = np.asarray(tree.query_ball_point(pts[i], r_max), dtype=np.int64)[None]
        if cand.size:
            c, _, ok = _search(pts[i : i + 1], cand, origin, inv, tol)
            if ok[0]:
                cell[i] = c[0]
    return cell


def _locate_bins(pts, verts, cells, origin, inv, tol):
    """Exact containing cells through a uniform grid of bins; -1 where none.

    Each cell is listed in every bin its bounding box overlaps, so a cell holding a point
    is among the candidates of the point's bin: a point none of them holds is outside.
    """
    n, t = len(pts), len(cells)
    x = verts[cells]  # (t, 4, 3)
    lo, hi = x.min(1), x.max(1)  # (t, 3) bounding boxes
    h = 0.5 * float(np.mean(np.abs(np.linalg.det(x[:, 1:] - x[:, :1])) / 6.0)) ** (1 / 3)  # bin edge, Å
    h = max(h, 1e-6 * float(np.ptp(verts, axis=0).max()) + 1e-12)
    grid_lo = lo.min(0) - 1e-9 * (1 + np.abs(lo.min(0)))
    blo = np.floor((lo - grid_lo) / h).astype(np.int64)  # (t, 3)
    bhi = np.floor((hi - grid_lo) / h).astype(np.int64)
    dims = bhi.max(0) + 1  # (3,) bins along x, y, z
    ext = bhi - blo + 1  # (t, 3)
    per_cell = ext.prod(1)  # (t,) bins each cell overlaps
    cell_of = np.repeat(np.arange(t), per_cell)  # (p,) one row per (cell, bin)
    local = np.arange(len(cell_of)) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
    e = ext[cell_of]
    ix = blo[cell_of, 0] + local % e[:, 0]
    iy = blo[cell_of, 1] + (local // e[:, 0]) % e[:, 1]
    iz = blo[cell_of, 2] + local // (e[:, 0] * e[:, 1])
    bin_of = (iz * dims[1] + iy) * dims[0] + ix  # (p,)
    order = np.argsort(bin_of, kind="stable")
    bin_cells = cell_of[order]  # cells sorted by bin
    counts = np.bincount(bin_of, minlength=int(dims.prod()))
    starts = np.cumsum(counts) - counts
    cell = -np.ones(n, dtype=np.int64)
    pb = np.floor((pts - grid_lo) / h).astype(np.int64)  # (n, 3)
    in_grid = np.flatnonzero(((pb >= 0) & (pb < dims)).all(1))
    pbin = (pb[in_grid, 2] * dims[1] + pb[in_grid, 1]) * dims[0] + pb[in_grid, 0]
    for s in range(0, len(in_grid), _CHUNK // 2):
        idx, b = in_grid[s : s + _CHUNK // 2], pbin[s : s + _CHUNK // 2]
        c = counts[b]  # (m,) candidates per point
        pt_of = np.repeat(np.arange(len(idx)), c)  # (q,) one row per (point, candidate)
        off = np.arange(len(pt_of)) - np.repeat(np.cumsum(c) - c, c)
        cand = bin_cells[np.repeat(starts[b], c) + off]  # (q,)
        lam = np.einsum("qij,qj->qi", inv[cand], pts[idx[pt_of]] - origin[cand])  # (q, 3)
        worst = np.minimum(lam.min(1), 1.0 - lam.sum(1))
        ok = worst >= -tol
        cell[idx[pt_of[ok]]] = cand[ok]  # any containing cell will do (shared faces)
    return cell


_CHUNK = 65536


def locate_points(
    mesh: Mesh, points_xyz_a: np.ndarray, method: str = "bins", k: int = 12, tol: float = 1e-6
) -> PointLocation:
    """Containing cell and barycentric weights of every point, clamped for points outside.

    Args:
        mesh: the mesh.
        points_xyz_a: ``(n, 3)`` points, xyz Å.
        method: ``"bins"`` (default: every cell is listed in the bins of a uniform grid
            that its bounding box overlaps; a point is tried against the cells of its
            bin, all at once) or ``"kdtree"`` (a cell can hold a point only if the point
            lies within the largest centroid-to-vertex distance ``r_max`` of the cell's
            centroid; the nearest centroids are tried until every one that close has
            been). Both are exact and pure numpy; each checks the other in the tests.
        k: candidate cells (nearest centroids) for the clamped weights of outside points.
        tol: a barycentric coordinate above ``-tol`` counts as inside.
    """
    pts = np.asarray(points_xyz_a, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points_xyz_a must be (n, 3), got {pts.shape}")
    if mesh.n_cells == 0:
        raise ValueError("mesh has no cells")
    verts, cells = mesh.vertices_a, mesh.cells
    n, t = len(pts), len(cells)
    origin, inv = _cell_frames(verts, cells)
    centroids = verts[cells].mean(axis=1)  # (t, 3)
    tree = cKDTree(centroids)
    if method == "bins":
        cell = _locate_bins(pts, verts, cells, origin, inv, tol)
    elif method == "kdtree":
        cell = _locate_kdtree(pts, verts, cells, origin, inv, tree, centroids, tol)
    else:
        raise ValueError(f"method must be 'bins' or 'kdtree', got {method!r}")
    bary = np.zeros((n, 4))
    found = np.flatnonzero(cell >= 0)
    if len(found):
        c = cell[found]
        lam = np.einsum("nij,nj->ni", inv[c], pts[found] - origin[c])  # (m, 3)
        bary[found] = np.concatenate([1.0 - lam.sum(1, keepdims=True), lam], axis=1)
    inside = cell >= 0
    bary[inside] = np.clip(bary[inside], 0.0, None)  # only rounding-level negatives here
    bary[inside] /= bary[inside].sum(1, keepdims=True)
    dist = np.zeros(n)
    out = np.flatnonzero(~inside)
    for s in range(0, len(out), _CHUNK // 8):
        idx = out[s : s + _CHUNK // 8]
        _, cand = tree.query(pts[idx], k=min(k, t), workers=-1)
        c, b, d = _nearest_clamped(pts[idx], cand.reshape(len(idx), -1), verts, cells)
        cell[idx], bary[idx], dist[idx] = c, b, d

    return PointLocation(cell=cell, weights=bary, inside=inside, outside_distance_a=dist)


def barycentric_matrix(
    mesh: Mesh,
    points_xyz_a: np.ndarray,
    dtype: torch.dtype = torch.float32,
    device=None,
    layout: torch.layout = torch.sparse_csr,
    return_location: bool = False,
    method: str = "bins",
):
    """The FEM interpolation matrix ``B`` ``(n, v)``: row ``i`` holds point ``i``'s four weights.

    Args:
        mesh: the mesh (``v`` vertices).
        points_xyz_a: ``(n, 3)`` points, xyz Å (e.g. the masked voxel centres from
            :func:`napari_flex3d.mesh.masks.voxel_centres_xyz_a`).
        dtype, device: of the returned tensor.
        layout: ``torch.sparse_csr`` (default) or ``torch.sparse_coo``.
        return_location: also return the :class:`PointLocation` (which points were
            outside the mesh and how far).
        method: point location, ``"bins"`` or ``"kdtree"`` (see :func:`locate_points`).

    Returns:
        ``B``, a sparse ``(n, v)`` tensor with 4 entries per row, rows summing to 1
        (points outside the mesh get their nearest cell's clamped weights); and the
        location when asked.
    """
    loc = locate_points(mesh, points_xyz_a, method=method)
    n = len(loc.cell)
    crow = torch.arange(0, 4 * n + 1, 4, dtype=torch.int64)  # (n + 1,)
    col = torch.from_numpy(mesh.cells[loc.cell].reshape(-1))  # (4n,)
    val = torch.from_numpy(loc.weights.reshape(-1)).to(dtype)  # (4n,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        B = torch.sparse_csr_tensor(crow, col, val, size=(n, mesh.n_vertices), dtype=dtype, check_invariants=False)
    if layout == torch.sparse_coo:
        B = B.to_sparse_coo().coalesce()
    elif layout != torch.sparse_csr:
        raise ValueError(f"layout must be torch.sparse_csr or torch.sparse_coo, got {layout}")
    if device is not None:
        B = B.to(device)
    return (B, loc) if return_location else B


def interpolate_vertex_field(
    B: torch.Tensor, field: torch.Tensor, vertex_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-point field from a per-vertex field: ``u = B (m * d)``, batched.

    Args:
        B: sparse ``(n, v)`` interpolation matrix from :func:`barycentric_matrix`.
        field: ``(b, v, c)`` or ``(v, c)`` per-vertex values (``c = 3`` for displacements).
        vertex_mask: optional ``(v,)`` per-vertex motion mask ``m`` multiplying
            ``field`` (0 where motion is forbidden).

    Returns:
        ``(b, n, c)`` (or ``(n, c)``), differentiable in ``field``.
    """
    if field.dim() not in (2, 3):
        raise ValueError(f"field must be (b, v, c) or (v, c), got {tuple(field.shape)}")
    if field.shape[-2] != B.shape[1]:
        raise ValueError(f"field has {field.shape[-2]} vertices, B expects {B.shape[1]}")
    field = field.to(B.dtype)
    if vertex_mask is not None:
        m = torch.as_tensor(vertex_mask, dtype=B.dtype, device=field.device)
        if m.shape != (B.shape[1],):
            raise ValueError(f"vertex_mask must be ({B.shape[1]},), got {tuple(m.shape)}")
        field = field * m[:, None]
    if field.dim() == 2:
        return torch.sparse.mm(B, field)
    b, v, c = field.shape
    flat = field.permute(1, 0, 2).reshape(v, b * c)  # (v, b*c)
    out = torch.sparse.mm(B, flat)  # (n, b*c)
    return out.reshape(-1, b, c).permute(1, 0, 2)  # (b, n, c)
