"""Rigidity prior (paper eq. 5 with signed singular values), cell weights and painted labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.mesh import (
    RigidityPrior,
    build_grid_mesh,
    cell_density_weights,
    motion_mask_from_labels,
    raise_rigid_cells,
    rigidity_energy,
    signed_singular_values,
)
from napari_flex3d.mesh.rigidity import cell_sample_points, rest_edge_inverse

BOX, APIX = 64, 3.0  # the box and pixel size of the fixtures in tests/mesh/conftest.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _close(a, b, rtol=1e-7, atol=1e-9):
    """``np.testing.assert_allclose`` on tensors (torch.testing costs a slow first import)."""
    np.testing.assert_allclose(a.detach().cpu().numpy(), b.detach().cpu().numpy(), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def small_mesh():
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 5:11, 6:10] = True
    return build_grid_mesh(mask, 2.0, cell_size_a=4.0)


def _X(mesh, device="cpu", dtype=torch.float64):
    return torch.as_tensor(mesh.vertices_a, dtype=dtype, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_plus_translation_costs_nothing(any_mesh, device, dtype):
    X = _X(any_mesh, device, dtype)
    R = torch.as_tensor(Rotation.random(5, random_state=0).as_matrix(), dtype=dtype, device=device)
    t = torch.randn(5, 1, 3, dtype=dtype, device=device) * 20
    disp = X @ R.transpose(1, 2) + t - X  # (b, v, 3)
    w = torch.as_tensor(np.random.default_rng(0).uniform(0.5, 1, any_mesh.n_cells), device=device)
    e = rigidity_energy(X, disp, any_mesh.cells, w)
    assert e.shape == (5,)
    assert e.abs().max().item() < 1e-5
    prior = RigidityPrior(any_mesh.vertices_a, any_mesh.cells, w.cpu().numpy(), dtype=dtype).to(device)
    assert prior(disp).abs().max().item() < 1e-5


@pytest.mark.parametrize("s", [0.7, 1.1, 1.5])
def test_uniform_scaling_costs_three_squared_strains_per_unit_weight(any_mesh, s):
    X = _X(any_mesh)
    w = np.random.default_rng(1).uniform(0.5, 1, any_mesh.n_cells)
    e = rigidity_energy(X, ((s - 1) * X)[None], any_mesh.cells, torch.as_tensor(w))
    assert e.item() == pytest.approx(3 * (s - 1) ** 2 * w.sum(), rel=1e-9)
    # About a different centre, plus a translation: the same.
    e2 = rigidity_energy(X, ((s - 1) * (X - 7.0) + 3.0)[None], any_mesh.cells, torch.as_tensor(w))
    assert e2.item() == pytest.approx(e.item(), rel=1e-9)


@pytest.mark.parametrize("gamma", [0.1, 0.5])
def test_shear_costs_its_singular_value_strains(small_mesh, gamma):
    # Simple shear x += gamma * y: singular values sqrt(1 + g²/4) ± g/2 and 1.
    X = _X(small_mesh)
    disp = torch.zeros_like(X)
    disp[:, 0] = gamma * X[:, 1]
    s1 = np.sqrt(1 + gamma**2 / 4) + gamma / 2
    s2 = np.sqrt(1 + gamma**2 / 4) - gamma / 2
    expected = ((s1 - 1) ** 2 + (s2 - 1) ** 2) * small_mesh.n_cells
    e = rigidity_energy(X, disp, small_mesh.cells)
    assert e.item() > 0
    assert e.item() == pytest.approx(expected, rel=1e-9)


def test_inverted_cells_are_penalised(small_mesh):
    # A mirror image has singular values (1, 1, 1) but det -1: signed values (1, 1, -1) cost 4.
    X = _X(small_mesh)
    mirrored = X * torch.tensor([-1.0, 1.0, 1.0], dtype=X.dtype)
    e = rigidity_energy(X, (mirrored - X)[None], small_mesh.cells)
    # an exact mirror: singular values (1, 1, 1), no strain but the sign (mesh/strain.py)
    assert e.item() == pytest.approx(4.0 * small_mesh.n_cells, rel=1e-12)
    # One vertex pushed through the opposite face of its cell: that cell is inverted.
    cell = small_mesh.cells[0]
    x = X[cell]
    face_centre = x[1:].mean(0)
    disp = torch.zeros_like(X)
    disp[cell[0]] = 2 * (face_centre - x[0])  # x0 -> mirror through the face centre
    F_det = torch.linalg.det(((x[1:] - x[0] - disp[cell[0]]).T) @ torch.linalg.inv((x[1:] - x[0]).T))
    assert F_det < 0
    signed = rigidity_energy(X, disp, small_mesh.cells[:1])
    s = torch.linalg.svdvals(((x[1:] - x[0] - disp[cell[0]]).T) @ torch.linalg.inv((x[1:] - x[0]).T))
    unsigned = ((s - 1) ** 2).sum()
    assert signed.item() > unsigned.item() + 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_svd_free_energy_matches_the_singular_values(device):
    # The energy is |F|^2 - 2 p + 3 with p = s1 + s2 + sign(det F) s3 found without an SVD;
    # oracle: torch.linalg.svdvals in float64 on strains of 0.1% to 1e3-fold stretches,
    # random matrices (half of them inverted) and inverted near-identities; the gradient of p
    # is the polar rotation, compared with the SVD's.
    from napari_flex3d.mesh.rigidity import rotation_trace

    g = torch.Generator().manual_seed(0)
    n = 4000
    rot = [torch.as_tensor(Rotation.random(n, random_state=k).as_matrix()) for k in (1, 2)]
    stretch = torch.diag_embed(torch.exp(torch.empty(n, 3, dtype=torch.float64).uniform_(-3.5, 3.5, generator=g)))
    eye = torch.eye(3, dtype=torch.float64)
    cases = {
        "near identity": eye + 1e-3 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "moderate": eye + 0.3 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "random": torch.randn(n, 3, 3, dtype=torch.float64, generator=g),
        "stretched": rot[0] @ stretch @ rot[1],
        "inverted": (eye + 0.3 * torch.randn(n, 3, 3, dtype=torch.float64, generator=g)) * torch.tensor([-1.0, 1, 1], dtype=torch.float64),
    }
    for name, F in cases.items():
        F = F.to(device)
        ref = F.clone().requires_grad_(True)
        p_ref = signed_singular_values(ref).sum(-1)
        p_ref.sum().backward()
        new = F.clone().requires_grad_(True)
        p_new = rotation_trace(new)
        p_new.sum().backward()
        assert ((p_new - p_ref).abs() / p_ref.abs().clamp_min(1)).max().item() < 1e-11, name
        assert (new.grad - ref.grad).abs().max().item() < 1e-8, name
    # float32 in, float32 out, with the float64 result rounded
    F = cases["moderate"].to(device)
    _close(rotation_trace(F.float()), rotation_trace(F).float(), rtol=1e-6, atol=0)


def test_signed_singular_values():
    F = torch.diag(torch.tensor([2.0, 0.5, -3.0], dtype=torch.float64))
    np.testing.assert_allclose(signed_singular_values(F).numpy(), [3.0, 2.0, -0.5])
    R = torch.as_tensor(Rotation.random(random_state=3).as_matrix())
    np.testing.assert_allclose(signed_singular_values(R).numpy(), [1.0, 1.0, 1.0], atol=1e-12)


def test_gradient_finite_at_identity_and_matches_finite_differences(small_mesh):
    X = _X(small_mesh)
    d0 = torch.zeros(2, *X.shape, dtype=torch.float64, requires_grad=True)
    rigidity_energy(X, d0, small_mesh.cells).sum().backward()
    assert torch.isfinite(d0.grad).all()
    assert d0.grad.abs().max().item() < 1e-9  # identity is the minimum
    # Finite differences on a mesh of two cubes (12 vertices, 12 cells), random weights.
    mask = np.zeros((8, 8, 8), bool)
    mask[4, 4, 4:6] = True
    tiny = build_grid_mesh(mask, 1.0, cell_size_a=1.0)
    assert tiny.n_cells == 12
    Xt = _X(tiny)
    d = (0.3 * torch.randn(1, len(Xt), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    w = torch.rand(tiny.n_cells, dtype=torch.float64) + 0.5
    inv = rest_edge_inverse(Xt, torch.as_tensor(tiny.cells))
    fn = lambda dd: rigidity_energy(Xt, dd, tiny.cells, w, rest_inv=inv)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (d.requires_grad_(),), eps=1e-6, atol=1e-5, fast_mode=True)


def test_prior_module_matches_function_and_moves_to_device(tetgen_mesh):
    w = cell_density_weights(tetgen_mesh, np.ones((BOX,) * 3, np.float32))
    prior = RigidityPrior.from_mesh(tetgen_mesh.replace(rigidity_weights=w), dtype=torch.float64)
    X = _X(tetgen_mesh)
    d = torch.randn(3, *X.shape, dtype=torch.float64)
    _close(prior(d), rigidity_energy(X, d, tetgen_mesh.cells, torch.as_tensor(w, dtype=torch.float64)))
    _close(prior(d[0]), prior(d)[0])
    assert {n for n, _ in prior.named_buffers()} == {"cells", "rest_inv", "weights"}
    with pytest.raises(ValueError, match="vertices"):
        prior(torch.zeros(1, 3, 3, dtype=torch.float64))


def test_density_weights_are_the_normalised_mean_density(tetgen_mesh):
    # For a density linear in x the cell mean is its value at the centroid (the sample lattice
    # is symmetric, trilinear interpolation exact), so w = (a + b x_c) / max, floored.
    c = (np.arange(BOX) - BOX // 2) * APIX
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    a, b = 200.0, 1.0
    density = a + b * x
    xc = tetgen_mesh.centroids_a()[:, 0]
    mean = a + b * xc
    w0 = cell_density_weights(tetgen_mesh, density, min_weight=0.0)
    np.testing.assert_allclose(w0, mean / mean.max(), rtol=1e-5)
    assert w0.max() == pytest.approx(1.0)
    w5 = cell_density_weights(tetgen_mesh, density - 190.0, min_weight=0.5)  # some cells below half
    expected = np.maximum(np.clip(mean - 190.0, 0, None) / (mean - 190.0).max(), 0.5)
    np.testing.assert_allclose(w5, expected, rtol=1e-5)
    assert (w5 == 0.5).any() and w5.max() == pytest.approx(1.0)


def test_density_weights_follow_the_blobs(tetgen_mesh, two_blob_map):
    w = cell_density_weights(tetgen_mesh, two_blob_map, min_weight=0.5)
    assert w.dtype == np.float32 and w.shape == (tetgen_mesh.n_cells,)
    assert w.max() == pytest.approx(1.0) and w.min() >= 0.5
    # The densest cell is near the stronger blob's centre (-20, 0, 0) Å.
    densest = tetgen_mesh.centroids_a()[np.argmax(w)]
    assert np.linalg.norm(densest - [-20.0, 0.0, 0.0]) < 10.0


def test_sample_points_lie_inside_their_cells(small_mesh):
    pts = cell_sample_points(small_mesh)  # (t, p, 3)
    assert pts.shape[1] == 20
    np.testing.assert_allclose(pts.mean(1), small_mesh.centroids_a(), atol=1e-12)


def test_rigid_labels_raise_weights_and_fixed_labels_zero_the_mask(tetgen_mesh):
    labels = np.zeros((BOX,) * 3, np.int32)
    labels[:, :, : BOX // 2] = 2  # x < 0 (x index < N//2) painted with label 2
    labels[:, :, BOX // 2 + 6 :] = 3  # x > 6 voxels painted with label 3
    w = np.full(tetgen_mesh.n_cells, 0.5, np.float32)
    xc = tetgen_mesh.centroids_a()[:, 0]
    raised = raise_rigid_cells(tetgen_mesh, w, labels, factor=10.0, label_ids=[2])
    assert np.all(raised[xc < -6.0] == 5.0)
    assert np.all(raised[xc > 0.0] == 0.5)
    set_to = raise_rigid_cells(tetgen_mesh, w, labels, value=3.0)  # every label > 0
    assert np.all(set_to[(xc < -6.0) | (xc > 24.0)] == 3.0)
    assert np.all(set_to[(xc > 3.0) & (xc < 12.0)] == 0.5)
    m = motion_mask_from_labels(tetgen_mesh, labels, label_ids=[3])
    vx = tetgen_mesh.vertices_a[:, 0]
    assert m.dtype == np.float32 and m.shape == (tetgen_mesh.n_vertices,)
    np.testing.assert_array_equal(m, np.where(np.rint(vx / APIX) >= 6, 0.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        motion_mask_from_labels(tetgen_mesh, labels[:10])


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


def test_rigidity_keeps_only_what_its_written_out_gradient_needs():
    # the gradient is written out (autograd through the quartic's formulas kept about twenty
    # float64 tensors of the batch's size): rotation_trace keeps F and p, the energy that
    # training uses keeps F - I and p per particle and cell, and a few numbers per cell
    from napari_flex3d.mesh.rigidity import rotation_trace

    n = 5000
    F = (torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(n, 3, 3, dtype=torch.float64)).requires_grad_(True)
    assert _saved_bytes(lambda: rotation_trace(F)) <= (9 + 1) * 8 * n
    rotation_trace(F).sum().backward()
    assert torch.isfinite(F.grad).all()

    mesh = build_grid_mesh(np.ones((5, 5, 5), bool), 1.0, cell_size_a=1.0)
    X, b, t = _X(mesh, dtype=torch.float32), 64, mesh.n_cells
    d = (0.1 * torch.randn(b, len(X), 3)).requires_grad_(True)
    w = torch.rand(t) + 0.5
    assert _saved_bytes(lambda: rigidity_energy(X, d, mesh.cells, w)) <= (9 + 1) * 8 * b * t + 128 * t


def test_energy_in_pieces_of_the_batch_equals_it_whole(small_mesh, monkeypatch):
    # large meshes are processed a few particles at a time to bound the transient memory;
    # the pieces must give the whole batch's energy and gradient (here 1, 2 and 3 particles
    # per piece over a batch of 7, so the last piece is short)
    import napari_flex3d.mesh.rigidity as rigidity

    X, t = _X(small_mesh, dtype=torch.float32), small_mesh.n_cells
    d0 = 0.3 * torch.randn(7, len(X), 3, generator=torch.Generator().manual_seed(3))
    w = torch.rand(t, generator=torch.Generator().manual_seed(4)) + 0.5

    def energy_and_grad():
        d = d0.clone().requires_grad_(True)
        e = rigidity_energy(X, d, small_mesh.cells, w)
        (e * torch.arange(1.0, 8.0)).sum().backward()  # a different weight per particle
        return e.detach(), d.grad

    e_whole, g_whole = energy_and_grad()
    assert (e_whole > 0).all()
    for per_piece in (1, 2, 3):
        monkeypatch.setattr(rigidity, "_CHUNK_BYTES", per_piece * 72 * t)
        e, g = energy_and_grad()
        _close(e, e_whole, rtol=1e-6, atol=0)
        _close(g, g_whole, rtol=1e-6, atol=1e-9)
    monkeypatch.setattr(rigidity, "_CHUNK_BYTES", 1)  # smaller than one particle: one per piece
    _close(energy_and_grad()[0], e_whole, rtol=1e-6, atol=0)
