"""Building a tetrahedral mesh that covers a mask (tetgen, or a regular grid).

A room of ``mesh``; it may import numpy, scipy, pyvista and tetgen (lazily) and the rest of
``mesh``. The :class:`~.mesh.Mesh` it returns, and its save/load, live in :mod:`.mesh`.

Default path (the paper's mesh, built with pyvista and tetgen): the mask, cropped to its
bounding box and padded with empty voxels (so the surface is closed even where the mask meets
the box edge), is turned into a signed distance field whose ``margin_a`` level set lies just
outside the mask's voxel centres; pyvista contours it (flying edges), smooths it and
decimates it so its triangles have about the cell size; tetgen fills it with quality
tetrahedra no larger than a regular tetrahedron whose edge is the cell size (tetgen honours
this loosely: a few cells exceed it by ~10%). The mask voxels the mesh leaves uncovered, if
any, are counted in ``mesh.info``. Should tetgen fail, or should the caller ask for it, a
regular grid of cubes of the cell size, each split into six tetrahedra and kept where a mask
voxel lies in it, covers the mask instead (robust, every mask voxel inside a cell by
construction).

Coordinates are xyz Å, centred: voxel ``i`` of an ``N``-box sits at ``(i - N//2) * apix``.
Every cell is positively oriented: ``det[x1 - x0, x2 - x0, x3 - x0] > 0``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from .barycentric import locate_points
from .masks import voxel_centres_xyz_a
from .mesh import Mesh, cell_signed_volumes, orient_cells

__all__ = [
    "build_mesh",
    "build_grid_mesh",
    "cell_size_from_cells_across",
    "max_cell_volume",
]


def cell_size_from_cells_across(box: int, apix: float, cells_across: float) -> float:
    """Cell size (edge length, Å) that puts ``cells_across`` cells across the box."""
    if cells_across <= 0:
        raise ValueError(f"cells_across must be positive, got {cells_across}")
    return box * apix / cells_across


def max_cell_volume(cell_size_a: float) -> float:
    """Volume (Å³) of a regular tetrahedron of edge ``cell_size_a``: tetgen's ``maxvolume``."""
    return cell_size_a**3 / (6.0 * np.sqrt(2.0))


def _drop_unused_vertices(vertices: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(cells)
    remap = -np.ones(len(vertices), dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[cells]


# ----------------------------------------------------------------------------- builders


def _check_mask(mask, level: float) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ValueError(f"mask must be a 3D (d, h, w) array, got shape {m.shape}")
    if len(set(m.shape)) != 1:
        raise ValueError(f"mask must be a cubic box, got shape {m.shape}")
    binary = m.astype(bool) if m.dtype == bool else m > level
    if not binary.any():
        raise ValueError(f"mask is empty (no voxel above {level})")
    return binary


def build_grid_mesh(mask: np.ndarray, apix: float, cell_size_a: float, level: float = 0.5) -> Mesh:
    """Regular tetrahedralisation of the cubes (edge ``cell_size_a``) that hold a mask voxel.

    The cubic grid is centred on the box centre (the origin is a grid node). Each cube is
    split into six tetrahedra around its main diagonal (Kuhn/Freudenthal), so the
    splitting agrees across shared faces and the mesh is conforming.

    Args:
        mask: ``(d, h, w)`` bool, or float thresholded at ``> level``.
        apix: voxel size, Å. ``cell_size_a``: cube edge, Å.
    """
    binary = _check_mask(mask, level)
    if cell_size_a <= 0:
        raise ValueError(f"cell_size_a must be positive, got {cell_size_a}")
    box = binary.shape[0]
    pts = voxel_centres_xyz_a(np.argwhere(binary), binary.shape, apix)  # (n, 3) xyz Å
    cubes = np.unique(np.floor(pts / cell_size_a).astype(np.int64), axis=0)  # (c, 3) lower corners
    corners = np.array([[i, j, k] for k in (0, 1) for j in (0, 1) for i in (0, 1)], dtype=np.int64)  # (8, 3)
    # Kuhn: walk from corner 0 to corner 7 adding unit steps along a permutation of axes.
    tets = []
    for perm in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        step = np.zeros(3, dtype=np.int64)
        path = [step.copy()]
        for ax in perm:
            step[ax] += 1
            path.append(step.copy())
        tets.append([int(np.flatnonzero((corners == p).all(1))[0]) for p in path])
    tets = np.array(tets, dtype=np.int64)  # (6, 4) indices into corners
    nodes = cubes[:, None, :] + corners[None]  # (c, 8, 3) integer node coordinates
    uniq, inverse = np.unique(nodes.reshape(-1, 3), axis=0, return_inverse=True)
    node_id = inverse.reshape(-1, 8)  # (c, 8)
    cells = node_id[:, tets].reshape(-1, 4)  # (6c, 4)
    vertices = uniq.astype(np.float64) * cell_size_a
    cells = orient_cells(vertices, cells)
    return Mesh(vertices, cells, box=box, apix=apix, method="grid", cell_size_a=float(cell_size_a))


def _surface_from_mask(binary: np.ndarray, apix: float, margin_a: float, target_edge_a: float, smooth_iter: int):
    """Closed triangulated surface (pyvista PolyData, xyz Å) enclosing the mask by ``margin_a``."""
    import pyvista as pv

    box = binary.shape[0]
    # Work on the mask's bounding box grown by a few voxels beyond the level set, padded with
    # empty voxels where it leaves the box (closing the surface there). Distances to mask
    # voxels are exact in it: every mask voxel is inside, and empty voxels ring the mask.
    pad = int(np.ceil(max(margin_a, 0.0) / apix)) + 3
    idx = np.argwhere(binary)
    lo, hi = idx.min(0) - pad, idx.max(0) + pad + 1  # (3,) zyx, may leave the box
    padded = np.pad(binary, pad, constant_values=False)[
        lo[0] + pad : hi[0] + pad, lo[1] + pad : hi[1] + pad, lo[2] + pad : hi[2] + pad
    ]
    # Distance (Å) to the nearest mask voxel centre; inside the mask, minus the distance to the outside.
    field = ndimage.distance_transform_edt(~padded, sampling=apix) - ndimage.distance_transform_edt(
        padded, sampling=apix
    )
    grid = pv.ImageData(
        dimensions=padded.shape[::-1],  # (x, y, z) point counts
        spacing=(apix, apix, apix),
        origin=tuple(float(v) for v in ((lo - box // 2) * apix)[::-1]),  # xyz Å of voxel lo
    )
    grid.point_data["d"] = field.ravel(order="C").astype(np.float32)  # x fastest, as (z, y, x) C order
    surf = grid.contour([margin_a], scalars="d", method="flying_edges")
    # Degenerate triangles (a level through grid points) are dropped, not turned into lines.
    surf = surf.triangulate().clean(polys_to_lines=False, lines_to_points=False)
    if surf.n_cells == 0:
        raise RuntimeError("contouring the mask gave no surface")
    if smooth_iter > 0:
        surf = surf.smooth_taubin(n_iter=smooth_iter, pass_band=0.1)
    area = float(surf.area)
    target_tris = max(int(area / (np.sqrt(3.0) / 4.0 * target_edge_a**2)), 100)
    if surf.n_cells > target_tris:
        reduction = 1.0 - target_tris / surf.n_cells
        surf = surf.triangulate().decimate(reduction)
        surf = surf.clean(polys_to_lines=False, lines_to_points=False).triangulate()
    return surf


def _tetgen_mesh(surf, cell_size_a: float, min_ratio: float, min_dihedral: float):
    import tetgen

    tg = tetgen.TetGen(np.asarray(surf.points, dtype=np.float64), surf.faces.reshape(-1, 4)[:, 1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = tg.tetrahedralize(
            quality=True,
            minratio=min_ratio,
            mindihedral=min_dihedral,
            maxvolume=max_cell_volume(cell_size_a),
            fixedvolume=True,
            verbose=0,
        )
    nodes, elems = np.asarray(out[0], dtype=np.float64), np.asarray(out[1], dtype=np.int64)
    if elems.ndim != 2 or len(elems) == 0:
        raise RuntimeError("tetgen returned no cells")
    return nodes, elems[:, :4]


def build_mesh(
    mask: np.ndarray,
    apix: float,
    cell_size_a: float | None = None,
    cells_across: float = 20,
    method: str = "tetgen",
    level: float = 0.5,
    margin_a: float | None = None,
    min_ratio: float = 1.5,
    min_dihedral: float = 10.0,
    smooth_iter: int = 20,
    max_pieces: int = 50,
) -> Mesh:
    """Tetrahedral mesh covering a mask.

    Args:
        mask: ``(d, h, w)`` cubic mask, bool, or float thresholded at ``> level``
            (e.g. ``MaskResult.binary`` or ``MaskResult.soft``).
        apix: voxel size, Å.
        cell_size_a: target cell edge length, Å. ``None``: ``box * apix / cells_across``.
        cells_across: cells across the box when ``cell_size_a`` is None (cryoSPARC: 20).
        method: ``"tetgen"`` (default; if tetgen refuses the decimated surface it is
            retried once with a surface twice as fine, then falls back to ``"grid"`` with a
            warning) or ``"grid"`` (regular tetrahedralised cubes, see :func:`build_grid_mesh`).
        margin_a: how far outside the mask's voxel centres the mesh surface lies, Å
            (``None``: 1.2 voxels, between the first two distances a voxel grid holds, so
            the level set never passes through grid points), so that decimation and
            smoothing do not uncover mask voxels.
        min_ratio, min_dihedral: tetgen quality bounds (radius-edge ratio, degrees).
        smooth_iter: Taubin smoothing iterations of the surface before decimation.
        max_pieces: a mask in more connected pieces than this is meshed with the grid
            (with a warning): tetgen would refine around every speck.

    Returns:
        :class:`Mesh` with positively oriented cells and no unused vertices; for tetgen
        meshes ``info`` also holds ``mask_voxels_outside`` (mask voxel centres in no
        cell; they get clamped weights) and ``max_outside_distance_a``.
    """
    binary = _check_mask(mask, level)
    if apix <= 0:
        raise ValueError(f"apix must be positive, got {apix}")
    box = binary.shape[0]
    if cell_size_a is None:
        cell_size_a = cell_size_from_cells_across(box, apix, cells_across)
    if cell_size_a <= 0:
        raise ValueError(f"cell_size_a must be positive, got {cell_size_a}")
    if method == "grid":
        return build_grid_mesh(binary, apix, cell_size_a)
    if method != "tetgen":
        raise ValueError(f"method must be 'tetgen' or 'grid', got {method!r}")
    margin = 1.2 * apix if margin_a is None else float(margin_a)
    # A mask in many pieces (a threshold cutting into noise) makes tetgen refine around every
    # speck, slowly and into a huge mesh: the grid covers it sanely.
    _, n_pieces = ndimage.label(binary)
    if n_pieces > max_pieces:
        warnings.warn(
            f"mask is in {n_pieces} pieces (more than max_pieces={max_pieces}; is the threshold "
            "cutting into noise?); using a regular grid mesh instead of tetgen",
            RuntimeWarning,
        )
        return build_grid_mesh(binary, apix, cell_size_a)
    built = _tetgen_with_retry(binary, apix, margin, cell_size_a, min_ratio, min_dihedral, smooth_iter)
    if built is None:
        return build_grid_mesh(binary, apix, cell_size_a)
    nodes, elems, info = built
    nodes, elems = _clean_cells(nodes, elems, cell_size_a)
    mesh = Mesh(nodes, elems, box=box, apix=apix, method="tetgen", cell_size_a=float(cell_size_a), info=info)
    _count_uncovered(mesh, binary, apix)
    return mesh


def _tetgen_with_retry(binary, apix, margin_a, cell_size_a, min_ratio, min_dihedral, smooth_iter):
    """``(nodes, elems, info)`` from tetgen, or ``None`` (with a warning) when it refuses twice.

    A decimated surface can self-intersect, which tetgen refuses: the second attempt uses a
    finer surface (triangles half the cell size).
    """
    errors = []
    for attempt, surface_edge_a in enumerate((cell_size_a, cell_size_a / 2)):
        try:
            surf = _surface_from_mask(binary, apix, margin_a, surface_edge_a, smooth_iter)
            nodes, elems = _tetgen_mesh(surf, cell_size_a, min_ratio, min_dihedral)
        except Exception as exc:  # tetgen raises RuntimeError on bad surfaces; vtk may raise others
            errors.append(str(exc))
            continue
        info = {
            "n_surface_points": int(surf.n_points),
            "n_surface_triangles": int(surf.n_cells),
            "surface_edge_a": float(surface_edge_a),
            "tetgen_attempt": attempt + 1,
        }
        return nodes, elems, info
    warnings.warn(f"tetgen meshing failed ({'; '.join(errors)}); using a regular grid mesh instead", RuntimeWarning)
    return None


def _clean_cells(nodes: np.ndarray, elems: np.ndarray, cell_size_a: float) -> tuple[np.ndarray, np.ndarray]:
    """Degenerate slivers dropped, every cell positively oriented, no unused vertices."""
    nodes, elems = _drop_unused_vertices(nodes, elems)
    vols = cell_signed_volumes(nodes, elems)
    keep = np.abs(vols) > 1e-9 * cell_size_a**3
    elems = orient_cells(nodes, elems[keep])
    return _drop_unused_vertices(nodes, elems)


def _count_uncovered(mesh: Mesh, binary: np.ndarray, apix: float) -> None:
    """Record in ``mesh.info`` the mask voxel centres no cell holds, and how far out the farthest lies."""
    loc = locate_points(mesh, voxel_centres_xyz_a(np.argwhere(binary), binary.shape, apix))
    mesh.info["mask_voxels_outside"] = int((~loc.inside).sum())
    mesh.info["max_outside_distance_a"] = float(loc.outside_distance_a.max())
