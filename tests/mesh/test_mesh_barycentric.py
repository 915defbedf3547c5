"""FEM interpolation: point location and the sparse barycentric matrix B."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.mesh import (
    barycentric_matrix,
    build_grid_mesh,
    interpolate_vertex_field,
    locate_points,
    mask_voxel_indices,
    voxel_centres_xyz_a,
)

APIX = 3.0  # the pixel size of the fixtures in tests/mesh/conftest.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _close(a, b, rtol=1e-7, atol=1e-9):
    """``np.testing.assert_allclose`` on tensors (torch.testing costs a slow first import)."""
    np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(), rtol=rtol, atol=atol)


def _points(mask):
    return voxel_centres_xyz_a(mask_voxel_indices(mask), mask.shape, APIX)


@pytest.mark.parametrize("device", DEVICES)
def test_affine_vertex_field_is_reproduced_exactly_at_every_voxel(any_mesh, two_blob_mask, device):
    pts = _points(two_blob_mask.binary)  # every one inside the mesh
    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 3, 3))  # (b, 3, 3) one affine map per batch item
    c = rng.normal(size=(3, 3)) * 5
    d = np.einsum("bij,vj->bvi", A, any_mesh.vertices_a) + c[:, None]  # (b, v, 3)
    expected = np.einsum("bij,nj->bni", A, pts) + c[:, None]  # (b, n, 3)
    B64, loc = barycentric_matrix(any_mesh, pts, dtype=torch.float64, device=device, return_location=True)
    assert loc.inside.all()
    u = interpolate_vertex_field(B64, torch.as_tensor(d, device=device))
    assert u.shape == (3, len(pts), 3) and u.device.type == device
    np.testing.assert_allclose(u.cpu().numpy(), expected, atol=1e-9)
    B32 = barycentric_matrix(any_mesh, pts, device=device)
    assert B32.dtype == torch.float32
    u32 = interpolate_vertex_field(B32, torch.as_tensor(d, dtype=torch.float32, device=device))
    np.testing.assert_allclose(u32.cpu().numpy(), expected, atol=2e-4 * np.abs(expected).max())


def test_rows_have_four_nonnegative_weights_summing_to_one(tetgen_mesh, two_blob_mask):
    pts = _points(two_blob_mask.soft > 0)  # includes the soft pad, partly outside the mesh
    B, loc = barycentric_matrix(tetgen_mesh, pts, dtype=torch.float64, return_location=True)
    assert (~loc.inside).any() and loc.inside.any()
    assert B.layout == torch.sparse_csr and B.shape == (len(pts), tetgen_mesh.n_vertices)
    crow = B.crow_indices().numpy()
    np.testing.assert_array_equal(np.diff(crow), 4)
    vals = B.values().numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all()
    dense_rows = torch.sparse.mm(B, torch.ones(tetgen_mesh.n_vertices, 1, dtype=torch.float64))
    np.testing.assert_allclose(dense_rows.numpy().ravel(), 1.0, atol=1e-12)


def test_outside_voxels_get_the_nearest_cells_clamped_weights(tetgen_mesh, two_blob_mask):
    pts = _points(two_blob_mask.soft > 0)
    loc = locate_points(tetgen_mesh, pts)
    out = ~loc.inside
    # The identity field maps a point to its clamped position: a point of the chosen cell,
    # at the reported distance, and no other cell has a point nearer (brute force over
    # every cell: nearest point of a tetrahedron by dense barycentric sampling).
    X = tetgen_mesh.vertices_a
    proj = np.einsum("nk,nkj->nj", loc.weights, X[tetgen_mesh.cells[loc.cell]])
    np.testing.assert_allclose(np.linalg.norm(proj - pts, axis=1), loc.outside_distance_a, atol=1e-9)
    assert (loc.outside_distance_a[loc.inside] == 0).all()
    assert (loc.outside_distance_a[out] > 0).all()
    # Outside points lie in the soft pad: within dilate + pad (+ a voxel) of the mesh.
    assert loc.outside_distance_a.max() < 5.0 + APIX
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(4), size=400)  # (s, 4) sample points of every cell
    samples = np.einsum("sk,tkj->tsj", w, X[tetgen_mesh.cells]).reshape(-1, 3)
    from scipy.spatial import cKDTree

    near, _ = cKDTree(samples).query(pts[out])
    # The clamped point is the nearest point of the mesh: no sampled point of any cell is nearer,
    # and the sampling comes close to it.
    assert (loc.outside_distance_a[out] <= near + 1e-9).all()
    assert np.median(near - loc.outside_distance_a[out]) < 0.5


def test_bins_and_kdtree_locators_agree(any_mesh, two_blob_mask):
    rng = np.random.default_rng(1)
    pts = _points(two_blob_mask.soft > 0) + rng.uniform(-1.0, 1.0, size=(1, 3))
    a = locate_points(any_mesh, pts, method="bins")
    b = locate_points(any_mesh, pts, method="kdtree")
    np.testing.assert_array_equal(a.inside, b.inside)
    X = any_mesh.vertices_a
    pa = np.einsum("nk,nkj->nj", a.weights, X[any_mesh.cells[a.cell]])
    pb = np.einsum("nk,nkj->nj", b.weights, X[any_mesh.cells[b.cell]])
    np.testing.assert_allclose(pa[a.inside], pts[a.inside], atol=1e-9)
    np.testing.assert_allclose(pa, pb, atol=1e-6)


def test_location_against_brute_force_on_a_small_grid_mesh():
    mask = np.zeros((16, 16, 16), bool)
    mask[5:11, 4:9, 6:12] = True
    mesh = build_grid_mesh(mask, 2.0, cell_size_a=3.0)
    rng = np.random.default_rng(2)
    lo, hi = mesh.vertices_a.min(0) - 2, mesh.vertices_a.max(0) + 2
    pts = rng.uniform(lo, hi, size=(2000, 3))
    # Brute force: barycentrics of every point in every cell by solving the 4x4 system.
    X = mesh.vertices_a[mesh.cells]  # (t, 4, 3)
    M = np.concatenate([np.transpose(X, (0, 2, 1)), np.ones((len(X), 1, 4))], axis=1)  # (t, 4, 4)
    rhs = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)  # (n, 4)
    lam = np.einsum("tij,nj->nti", np.linalg.inv(M), rhs)  # (n, t, 4)
    contained = (lam >= -1e-9).all(-1)  # (n, t)
    loc = locate_points(mesh, pts)
    np.testing.assert_array_equal(loc.inside, contained.any(1))
    assert contained[np.flatnonzero(loc.inside), loc.cell[loc.inside]].all()
    rows = np.flatnonzero(loc.inside)
    np.testing.assert_allclose(loc.weights[rows], lam[rows, loc.cell[rows]], atol=1e-9)


@pytest.mark.parametrize("layout", [torch.sparse_csr, torch.sparse_coo])
def test_interpolation_is_linear_batched_and_differentiable(tetgen_mesh, two_blob_mask, layout):
    pts = _points(two_blob_mask.binary)[::5]
    B = barycentric_matrix(tetgen_mesh, pts, layout=layout, dtype=torch.float64)
    dense = B.to_dense()
    d = torch.randn(4, tetgen_mesh.n_vertices, 3, dtype=torch.float64, requires_grad=True)
    u = interpolate_vertex_field(B, d)
    _close(u, dense @ d)  # (n, v) @ (b, v, c) -> (b, n, c)
    _close(interpolate_vertex_field(B, d[1]), u[1])
    m = (torch.rand(tetgen_mesh.n_vertices, dtype=torch.float64) > 0.5).to(torch.float64)
    _close(interpolate_vertex_field(B, d, vertex_mask=m), dense @ (d * m[:, None]))
    g = torch.randn_like(u)
    (u * g).sum().backward()
    _close(d.grad, dense.T @ g)


def test_bad_inputs_raise(tetgen_mesh):
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        barycentric_matrix(tetgen_mesh, np.zeros((5, 2)))
    B = barycentric_matrix(tetgen_mesh, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="vertices"):
        interpolate_vertex_field(B, torch.zeros(2, tetgen_mesh.n_vertices + 1, 3))
    with pytest.raises(ValueError, match="method"):
        locate_points(tetgen_mesh, np.zeros((5, 3)), method="vtk")
