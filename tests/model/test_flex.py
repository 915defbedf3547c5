"""FlexModel: zero flow = rigid projector, flow moves density, CTF, rigidity, gradients, state."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.mesh import build_mesh, solvent_mask
from napari_flex3d.model.flex import FlexModel
from napari_flex3d.model.flow import FlowGenerator
from napari_flex3d.model.loss import data_loss, n_shells_2d
from napari_flex3d.ops.ctf import apply_ctf, ctf_2d
from napari_flex3d.ops.project import project
from napari_flex3d.simulate.molecule import build_molecule
from napari_flex3d.simulate.render import render_volume

BOX, APIX = 32, 6.0


@pytest.fixture(scope="module")
def scene():
    mol = build_molecule(BOX, APIX, n_atoms=1000, seed=0)
    vol = render_volume(torch.as_tensor(mol.xyz_a, dtype=torch.float32), BOX, APIX, mol.sigma_a)
    masks = solvent_mask(vol.numpy(), APIX)
    mask = masks.soft > 0
    mesh = build_mesh(masks.binary, APIX, cells_across=12, method="grid")
    return vol, mask, mesh


@pytest.fixture()
def model(scene):
    vol, mask, mesh = scene
    torch.manual_seed(0)
    return FlexModel.from_map(vol, APIX, mesh, mask, latent_dim=2, hidden=32, layers=3)


def _poses(n, seed=0):
    a = Rotation.random(n, random_state=seed).as_matrix()  # any rotation is a valid A
    shifts = np.random.default_rng(seed).normal(0, 4.0, (n, 2))
    return torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(shifts, dtype=torch.float32)


def _frc(a, b):
    """Fourier ring correlation per image, ``(b, N//2 + 1)`` (oracle written here)."""
    n = a.shape[-1]
    fa, fb = torch.fft.rfft2(a), torch.fft.rfft2(b)
    ky = torch.fft.fftfreq(n, 1 / n)
    kx = torch.fft.rfftfreq(n, 1 / n)
    r = torch.round(torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).long().reshape(-1)
    out = []
    for i in range(a.shape[0]):
        cross = torch.zeros(n).index_add_(0, r, (fa[i] * fb[i].conj()).real.reshape(-1).double().float())
        pa = torch.zeros(n).index_add_(0, r, fa[i].abs().pow(2).reshape(-1))
        pb = torch.zeros(n).index_add_(0, r, fb[i].abs().pow(2).reshape(-1))
        out.append((cross / torch.sqrt(pa * pb))[: n // 2 + 1])
    return torch.stack(out)


class _ConstantFlow(torch.nn.Module):
    """A stand-in flow generator: every vertex moves by ``t`` (Å) times ``z[:, 0]``."""

    def __init__(self, n_vertices, t):
        super().__init__()
        self.latent_dim, self.n_vertices = 2, n_vertices
        self.register_buffer("vertex_mask", torch.ones(n_vertices))
        self.t = torch.as_tensor(t, dtype=torch.float32)

    def forward(self, z):
        return z[:, :1, None] * self.t.expand(z.shape[0], self.n_vertices, 3)


def test_zero_flow_matches_reference_projector(model):
    """With zero flow the fused splat equals ops.project of the canonical map.

    The molecule's map: correlation > 0.99 per image. Random values in the molecule's mask
    (signal to Nyquist): FRC > 0.99 out to 0.7 Nyquist and > 0.98 out to 0.8 Nyquist
    (measured 0.995 and 0.988 at box 32, cubic kernel; real-space correlation of white
    noise is dominated by the last shells, where the B-spline and the Fourier-slice
    projector differ, so it is not used there).
    """
    rot, sh = _poses(5)
    with torch.no_grad():
        ours = model.project(None, rot, sh, kernel="cubic")
    ref = project(model.canonical.to_volume().detach(), rot, sh, APIX)
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.flatten(), b.flatten())[0, 1] > 0.99
    # a fresh flow generator is (almost) the rigid model
    z = torch.randn(5, 2)
    with torch.no_grad():
        fresh = model.project(z, rot, sh)
    torch.testing.assert_close(fresh, ours, atol=1e-3 * float(ours.abs().max()), rtol=0)

    torch.manual_seed(1)
    with torch.no_grad():
        model.canonical.values.copy_(torch.randn(model.canonical.n_voxels))
        ours = model.project(None, rot, sh, kernel="cubic")
    ref = project(model.canonical.to_volume().detach(), rot, sh, APIX)
    frc = _frc(ours, ref)
    assert frc[:, 1 : int(0.7 * BOX / 2) + 1].min() > 0.99, frc.min(0).values
    assert frc[:, 1 : int(0.8 * BOX / 2) + 1].min() > 0.98, frc.min(0).values


def test_translation_flow_equals_image_shift(model):
    """A flow moving every vertex by t moves the particle image by (A t)_xy: the same as
    shifting with shifts_a - (A t)_xy. Checks FEM rows sum to one and the flow sign."""
    t = torch.tensor([5.0, -3.0, 4.0])
    model.flow = _ConstantFlow(model.vertices_a.shape[0], t)
    rot, sh = _poses(4, seed=3)
    z = torch.zeros(4, 2)
    z[:, 0] = 1.0
    at = rot @ t  # (b, 3): (A t)
    with torch.no_grad():
        moved = model.project(z, rot, sh)
        shifted = model.project(None, rot, sh - at[:, :2])
    torch.testing.assert_close(moved, shifted, atol=1e-4 * float(shifted.abs().max()), rtol=0)
    pts = model.voxel_points(z)
    torch.testing.assert_close(pts - model.canonical.points_xyz_a, t.expand_as(pts), atol=1e-4, rtol=0)
    # a pure translation is rigid
    assert model.rigidity(z).abs().max() < 1e-6
    # and the volume moves with it (centre of mass)
    w0, w1 = model.volume(None).detach(), model.volume(z[0]).detach()
    grid = torch.stack(torch.meshgrid(*[torch.arange(BOX) - BOX // 2] * 3, indexing="ij"), -1).float() * APIX
    com = lambda w: (w[..., None] * grid).sum((0, 1, 2)) / w.sum()  # noqa: E731  (z, y, x) Å
    torch.testing.assert_close(com(w1) - com(w0), t.flip(0), atol=0.2, rtol=0)


def test_ctf_applied_in_fourier_space(model):
    rot, sh = _poses(3, seed=4)
    ctf = ctf_2d(BOX, APIX, [15000.0, 20000.0, 12000.0], [14800.0, 19900.0, 12000.0], [10.0, 45.0, 0.0],
                 300.0, 2.7, 0.1)
    with_ctf = model.project(None, rot, sh, ctf=ctf)
    torch.testing.assert_close(with_ctf, apply_ctf(model.project(None, rot, sh), ctf), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="ctf"):
        model.project(None, rot, sh, ctf=ctf[:2])


def test_spectrum_is_the_projections_transform(model):
    # the data loss's model spectrum skips the transform back to images and forward again; in
    # float64 it is the orthonormal rfft2 of the CTF-modulated projection inside |k| < N/2 (the
    # round trip makes the Nyquist row and column Hermitian, which an astigmatic CTF is not
    # there), and the loss and its gradients within any band up to N/2 are the same
    from napari_flex3d.model.loss import data_loss, radial_frequency_2d, spectral_data_loss

    model = model.double()
    rot, sh = _poses(3, seed=5)
    rot, sh = rot.double(), sh.double()
    ctf = ctf_2d(BOX, APIX, [15000.0, 20000.0, 12000.0], [14800.0, 19900.0, 12000.0], [10.0, 45.0, 0.0],
                 300.0, 2.7, 0.1).double()
    z = torch.tensor([[0.3, -1.0], [1.2, 0.4], [-0.7, 0.0]], dtype=torch.float64, requires_grad=True)
    images = model.project(z, rot, sh, ctf=ctf)
    spectrum = model.project_spectrum(z, rot, sh, ctf=ctf)
    inside = radial_frequency_2d(BOX) < BOX // 2
    torch.testing.assert_close(spectrum[:, inside], torch.fft.rfft2(images, norm="ortho")[:, inside], rtol=1e-10, atol=1e-10)
    target = images.detach() + torch.randn(images.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = torch.linspace(2.0, 0.5, 24, dtype=torch.float64)
    via_images = data_loss(images, target, noise, max_freq_px=10.0, scale="fit")
    (g_images,) = torch.autograd.grad(via_images.sum(), z)
    via_spectrum = spectral_data_loss(spectrum, torch.fft.rfft2(target, norm="ortho"), noise, BOX, max_freq_px=10.0)
    (g_spectrum,) = torch.autograd.grad(via_spectrum.sum(), z)
    torch.testing.assert_close(via_spectrum, via_images, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_spectrum, g_images, rtol=1e-8, atol=1e-10)


def test_rigidity_of_rotations_and_stretches(model):
    v = model.vertices_a
    flow_rot = Rotation.from_rotvec([0.0, 0.0, 0.4]).as_matrix()
    d_rot = v @ (torch.as_tensor(flow_rot, dtype=torch.float32) - torch.eye(3)).T  # rotate the whole mesh
    d_str = v * torch.tensor([0.2, 0.0, 0.0])  # stretch x by 20 %

    class Fixed(torch.nn.Module):
        latent_dim, n_vertices = 2, v.shape[0]
        vertex_mask = torch.ones(v.shape[0])

        def forward(self, z):
            return torch.stack([d_rot, d_str])

    model.flow = Fixed()
    e = model.rigidity(torch.zeros(2, 2))
    assert e[0] < 1e-6 * e[1]
    w = model.rigidity_weights
    torch.testing.assert_close(e[1], (w * 0.2**2).sum(), rtol=1e-3, atol=0)


def test_gradients_reach_flow_and_canonical(model):
    torch.manual_seed(2)
    rot, sh = _poses(4, seed=5)
    target = model.project(torch.randn(4, 2), rot, sh).detach() + 0.1 * torch.randn(4, BOX, BOX)
    z = torch.randn(4, 2, requires_grad=True)
    model.max_freq_px = 10.0  # frequency marching: the canonical map is band-limited
    pred = model.project(z, rot, sh)
    loss = data_loss(pred, target, torch.ones(n_shells_2d(BOX)), max_freq_px=10.0).sum() + model.rigidity(z).sum()
    loss.backward()
    assert model.canonical.values.grad is not None and model.canonical.values.grad.abs().sum() > 0
    for name, p in model.flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert z.grad.abs().sum() > 0


def test_state_dict_round_trip(model, scene):
    vol, mask, mesh = scene
    torch.manual_seed(3)
    with torch.no_grad():
        model.flow.out.weight.mul_(1e3)  # make the flow visible
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert all(t.layout == torch.strided for t in model.state_dict().values())
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = FlexModel.from_map(vol * 0, APIX, mesh, mask, latent_dim=2, hidden=32, layers=3)
    other.load_state_dict(state)
    rot, sh = _poses(2, seed=6)
    z = torch.randn(2, 2)
    torch.testing.assert_close(other.project(z, rot, sh), model.project(z, rot, sh))


def test_motion_mask_freezes_voxels(scene):
    vol, mask, mesh = scene
    torch.manual_seed(4)
    dmask = (mesh.vertices_a[:, 0] > 0).astype(np.float32)  # only the +x half may move
    m = FlexModel.from_map(vol, APIX, mesh, mask, latent_dim=2, hidden=16, layers=2, motion_mask=dmask,
                           init_std_a=1.0)
    z = torch.randn(3, 2)
    d = m.displacements(z)
    assert d[:, dmask == 0].abs().max() == 0 and d[:, dmask == 1].abs().max() > 0.1
    u = m.voxel_flow(z)
    frozen = (m.bary_weight * torch.as_tensor(dmask)[m.bary_index]).sum(1) == 0  # voxels in frozen cells
    assert frozen.any() and u[:, frozen].abs().max() == 0


def test_bad_inputs_raise(model):
    rot, sh = _poses(2)
    with pytest.raises(ValueError, match="rows"):
        model.project(torch.zeros(3, 2), rot, sh)
    with pytest.raises(ValueError, match="kernel"):
        FlexModel(model.canonical, model.flow, model.vertices_a, model.cells, model.bary_index, model.bary_weight,
                  kernel="nearest")
    with pytest.raises(ValueError, match="vertices"):
        FlexModel(model.canonical, FlowGenerator(2, 5), model.vertices_a, model.cells, model.bary_index,
                  model.bary_weight)


def test_bad_vertex_indices_raise(model):
    bad = model.bary_index.clone()
    bad[0, 0] = model.vertices_a.shape[0]
    with pytest.raises(ValueError, match="bary_index"):
        FlexModel(model.canonical, model.flow, model.vertices_a, model.cells, bad, model.bary_weight)


def test_frequency_marching_band_limits_the_canonical_map(model):
    from napari_flex3d.model.canonical import bandlimit

    torch.manual_seed(5)
    with torch.no_grad():
        model.canonical.values.copy_(torch.randn(model.canonical.n_voxels))
    assert model.canonical_values() is model.canonical.values  # no limit set
    model.max_freq_px = 5.0
    full_map = model.canonical.to_volume()
    mask = torch.zeros(BOX**3, dtype=torch.bool)
    mask[model.canonical.voxel_index] = True
    expect = bandlimit(full_map, 5.0).reshape(-1)[mask]  # C order = voxel_index order
    torch.testing.assert_close(model.canonical_values(), expect)
    rot, sh = _poses(2, seed=7)
    with torch.no_grad():
        low = model.project(None, rot, sh)
        model.max_freq_px = None
        full = model.project(None, rot, sh)
    k = torch.sqrt(torch.fft.fftfreq(BOX, 1 / BOX)[:, None] ** 2 + torch.fft.rfftfreq(BOX, 1 / BOX)[None] ** 2)
    high = k > 10
    ratio = torch.fft.rfft2(low).abs()[:, high].pow(2).sum() / torch.fft.rfft2(full).abs()[:, high].pow(2).sum()
    assert ratio < 0.2  # masking re-creates a little high-frequency power, most is gone


def test_displacements_made_once_give_the_same_terms_and_gradients(scene):
    """The update makes the flow's displacements once for the data and rigidity terms: the same values
    and gradients as each term making its own (float64)."""
    vol, mask, mesh = scene
    model = FlexModel.from_map(vol, APIX, mesh, mask, latent_dim=2, init_std_a=0.3).double()
    rot, sh = _poses(3, seed=7)
    z = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def terms(shared: bool):
        model.zero_grad()
        d = model.displacements(z) if shared else None
        images = model.project_spectrum(z, rot.double(), sh.double(), displacements=d)
        loss = images.abs().square().sum() + model.rigidity(z, displacements=d).sum()
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    for a, b in zip(terms(False), terms(True), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
