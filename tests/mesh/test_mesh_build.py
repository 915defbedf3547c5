"""Mesh building: coverage, orientation, conformity, topology, scaling, fallback, save/load."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from napari_flex3d.mesh import build as build_mod
from napari_flex3d.mesh import (
    Mesh,
    build_mesh,
    load_mesh,
    locate_points,
    mask_voxel_indices,
    mesh_edges,
    save_mesh,
    surface_triangles,
    voxel_centres_xyz_a,
)
from napari_flex3d.mesh.build import max_cell_volume
from napari_flex3d.mesh.mesh import cell_signed_volumes

BOX, APIX = 64, 3.0  # the box and pixel size of the fixtures in tests/mesh/conftest.py


def _mask_points(mask):
    return voxel_centres_xyz_a(mask_voxel_indices(mask), mask.shape, APIX)


def test_mesh_covers_every_mask_voxel(any_mesh, two_blob_mask):
    loc = locate_points(any_mesh, _mask_points(two_blob_mask.binary), method="kdtree")
    assert loc.inside.all(), f"{(~loc.inside).sum()} mask voxels outside the mesh"
    if any_mesh.method == "tetgen":
        assert any_mesh.info["mask_voxels_outside"] == 0


def test_cells_positively_oriented_and_not_degenerate(any_mesh):
    vols = cell_signed_volumes(any_mesh.vertices_a, any_mesh.cells)
    assert (vols > 0).all()
    # Independent determinant: the triple product (x1-x0) . ((x2-x0) x (x3-x0)).
    x = any_mesh.vertices_a[any_mesh.cells]
    triple = np.einsum("ti,ti->t", x[:, 1] - x[:, 0], np.cross(x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]))
    np.testing.assert_allclose(vols * 6, triple, rtol=1e-9, atol=1e-9)
    assert len(np.unique(any_mesh.cells)) == any_mesh.n_vertices  # no unused vertex


def test_mesh_is_conforming_and_closed(any_mesh):
    # Every triangle is shared by at most two cells; the boundary is a closed, consistently
    # wound surface: every directed boundary edge appears once and its reverse once.
    cells = any_mesh.cells
    faces = np.sort(cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3), axis=1)
    _, counts = np.unique(faces, axis=0, return_counts=True)
    assert counts.max() <= 2
    tris = surface_triangles(any_mesh)
    assert len(tris) == (counts == 1).sum()
    directed = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    as_set = {tuple(e) for e in directed}
    assert len(as_set) == len(directed)
    assert all((b, a) in as_set for a, b in directed)


def test_boundary_normals_point_outward(any_mesh):
    # Each boundary face's normal points away from the opposite vertex of its cell.
    x = any_mesh.vertices_a
    tris = surface_triangles(any_mesh)
    normals = np.cross(x[tris[:, 1]] - x[tris[:, 0]], x[tris[:, 2]] - x[tris[:, 0]])
    key = {tuple(sorted(t)): i for i, t in enumerate(tris)}
    outward = np.zeros(len(tris), dtype=bool)
    for c in any_mesh.cells:
        for k in range(4):
            f = tuple(sorted(np.delete(c, k)))
            if f in key:
                i = key[f]
                outward[i] = np.dot(normals[i], x[c[k]] - x[tris[i, 0]]) < 0
    assert outward.all()
    # Divergence theorem: the closed surface encloses the cells' total volume.
    enclosed = np.einsum("fi,fi->f", x[tris[:, 0]], normals).sum() / 6.0
    assert enclosed == pytest.approx(any_mesh.cell_volumes_a3().sum(), rel=1e-9)


def test_euler_characteristic_matches_components(any_mesh):
    # A solid without cavities or tunnels: V - E + F - T = number of connected pieces.
    cells = any_mesh.cells
    edges = mesh_edges(any_mesh)
    faces = np.unique(np.sort(cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]].reshape(-1, 3), 1), axis=0)
    chi = any_mesh.n_vertices - len(edges) + len(faces) - any_mesh.n_cells
    n = any_mesh.n_vertices
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    n_parts, _ = connected_components(graph, directed=False)
    assert chi == n_parts
    # Edges: unique, sorted, and each cell's six edges are among them.
    assert (edges[:, 0] < edges[:, 1]).all()
    assert len(np.unique(edges, axis=0)) == len(edges)


def test_tetgen_mesh_volume_and_cell_size(tetgen_mesh, two_blob_mask):
    mask_volume = two_blob_mask.binary.sum() * APIX**3
    total = tetgen_mesh.cell_volumes_a3().sum()
    # The surface lies ~1.2 voxels outside the mask voxel centres: more than the mask, less than it
    # dilated by 2 voxels.
    from scipy import ndimage

    grown = ndimage.binary_dilation(two_blob_mask.binary, iterations=2).sum() * APIX**3
    assert mask_volume < total < grown
    cell_size = BOX * APIX / 20
    assert tetgen_mesh.cell_size_a == pytest.approx(cell_size)
    # tetgen honours maxvolume loosely (a handful of cells exceed it by ~10%).
    vols = tetgen_mesh.cell_volumes_a3()
    assert vols.max() <= max_cell_volume(cell_size) * 1.25
    assert (vols > max_cell_volume(cell_size)).mean() < 0.02
    s = tetgen_mesh.summary()
    assert s["n_vertices"] == tetgen_mesh.n_vertices and s["n_cells"] == tetgen_mesh.n_cells
    assert s["method"] == "tetgen"
    json.dumps(s)


@pytest.mark.parametrize("method", ["tetgen", "grid"])
def test_counts_scale_with_cell_size(two_blob_mask, method):
    coarse = build_mesh(two_blob_mask.binary, APIX, cell_size_a=12.0, method=method)
    fine = build_mesh(two_blob_mask.binary, APIX, cell_size_a=6.0, method=method)
    assert coarse.method == fine.method == method
    # Halving the cell size multiplies the cell count by several (8 for a filled volume).
    assert fine.n_cells > 3 * coarse.n_cells
    assert fine.n_vertices > 2 * coarse.n_vertices
    assert np.median(fine.cell_volumes_a3()) < np.median(coarse.cell_volumes_a3()) / 3


def test_cells_across_sets_cell_size(two_blob_mask):
    m = build_mesh(two_blob_mask.binary, APIX, cells_across=16, method="grid")
    assert m.cell_size_a == pytest.approx(BOX * APIX / 16)
    edges = mesh_edges(m)
    lengths = np.linalg.norm(m.vertices_a[edges[:, 0]] - m.vertices_a[edges[:, 1]], axis=1)
    # Grid cubes of side h: edges are h, h√2 or h√3.
    h = BOX * APIX / 16
    ratios = np.unique(np.round(lengths / h, 6))
    np.testing.assert_allclose(ratios, [1.0, np.sqrt(2), np.sqrt(3)], atol=1e-5)


def test_off_centre_mask_touching_the_box_faces_is_covered():
    mask = np.zeros((40, 40, 40), bool)
    mask[0:9, 14:27, 30:40] = True  # z at the low face, x at the high face, off-centre in y
    m = build_mesh(mask, 2.0, cell_size_a=5.0)
    assert m.method == "tetgen"
    pts = voxel_centres_xyz_a(mask_voxel_indices(mask), mask.shape, 2.0)
    assert locate_points(m, pts).inside.all()
    lo, hi = pts.min(0), pts.max(0)
    # The surface sits ~1.2 voxels (2.4 Å) beyond the outermost voxel centres.
    np.testing.assert_allclose(m.vertices_a.min(0), lo - 2.4, atol=1.0)
    np.testing.assert_allclose(m.vertices_a.max(0), hi + 2.4, atol=1.0)


def test_float_mask_with_level(two_blob_mask):
    soft_mesh = build_mesh(two_blob_mask.soft, APIX, level=0.0, method="grid")
    loc = locate_points(soft_mesh, _mask_points(two_blob_mask.soft > 0))
    assert loc.inside.all()


def test_tetgen_failure_falls_back_to_grid(two_blob_mask, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("Failed to tetrahedralize")

    monkeypatch.setattr(build_mod, "_tetgen_mesh", boom)
    with pytest.warns(RuntimeWarning, match="regular grid"):
        m = build_mesh(two_blob_mask.binary, APIX)
    assert m.method == "grid"
    assert locate_points(m, _mask_points(two_blob_mask.binary)).inside.all()


def test_tetgen_is_retried_with_a_finer_surface(two_blob_mask, monkeypatch):
    real, calls = build_mod._tetgen_mesh, []

    def first_fails(surf, *args):
        calls.append(surf.n_cells)
        if len(calls) == 1:
            raise RuntimeError("The input surface mesh contain self-intersections.")
        return real(surf, *args)

    monkeypatch.setattr(build_mod, "_tetgen_mesh", first_fails)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        m = build_mesh(two_blob_mask.binary, APIX)
    assert m.method == "tetgen" and m.info["tetgen_attempt"] == 2
    assert calls[1] > 2 * calls[0]  # the second surface is finer


def test_speckled_mask_goes_to_the_grid():
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32, 32), bool)
    idx = rng.integers(1, 15, size=(200, 3)) * 2  # isolated single voxels on even sites
    mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    with pytest.warns(RuntimeWarning, match="pieces"):
        m = build_mesh(mask, APIX, cells_across=8)
    assert m.method == "grid"
    assert locate_points(m, voxel_centres_xyz_a(mask_voxel_indices(mask), mask.shape, APIX)).inside.all()


def test_save_load_round_trip(tmp_path, tetgen_mesh):
    rng = np.random.default_rng(0)
    mesh = tetgen_mesh.replace(
        rigidity_weights=rng.uniform(0.5, 1, tetgen_mesh.n_cells),
        motion_mask=(rng.uniform(size=tetgen_mesh.n_vertices) > 0.3).astype(np.float32),
    )
    path = save_mesh(mesh, tmp_path / "mesh.npz")
    back = load_mesh(path)
    np.testing.assert_array_equal(back.vertices_a, mesh.vertices_a)
    np.testing.assert_array_equal(back.cells, mesh.cells)
    np.testing.assert_array_equal(back.rigidity_weights, mesh.rigidity_weights)
    np.testing.assert_array_equal(back.motion_mask, mesh.motion_mask)
    assert (back.box, back.apix, back.method, back.cell_size_a) == (mesh.box, mesh.apix, mesh.method, mesh.cell_size_a)
    assert back.vertices_a.dtype == np.float64 and back.cells.dtype == np.int64
    # Plain arrays only: loadable without pickle, metadata is JSON.
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta_json"]))["format"] == "napari-flex3d mesh"
        # the motion mask keeps the file key that meshes written before the rename carry
        np.testing.assert_array_equal(z["deformation_mask"], mesh.motion_mask)
    # Without optional arrays too.
    back2 = load_mesh(save_mesh(tetgen_mesh, tmp_path / "plain"))
    assert back2.rigidity_weights is None and back2.motion_mask is None


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="lacks"):
        load_mesh(p)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_mesh(tmp_path / "bad.npz")


def test_bad_inputs_raise(two_blob_mask):
    with pytest.raises(ValueError, match="empty"):
        build_mesh(np.zeros((16, 16, 16), bool), APIX)
    with pytest.raises(ValueError, match="cubic"):
        build_mesh(np.ones((16, 16, 8), bool), APIX)
    with pytest.raises(ValueError, match="method"):
        build_mesh(two_blob_mask.binary, APIX, method="delaunay")
    with pytest.raises(ValueError, match="cells"):
        Mesh(np.zeros((3, 3)), np.array([[0, 1, 2, 3]]), box=8, apix=1.0)
    with pytest.raises(ValueError, match="rigidity_weights"):
        Mesh(np.eye(4, 3), np.array([[0, 1, 2, 3]]), box=8, apix=1.0, rigidity_weights=np.ones(2))


def test_vertices_zyx_vox_inverts_the_convention(tetgen_mesh):
    zyx = tetgen_mesh.vertices_zyx_vox()
    back = voxel_centres_xyz_a(zyx, (BOX,) * 3, APIX)
    np.testing.assert_allclose(back, tetgen_mesh.vertices_a, atol=1e-9)


def test_no_warnings_on_the_default_path(two_blob_mask):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build_mesh(two_blob_mask.binary, APIX)
    assert m.method == "tetgen"
