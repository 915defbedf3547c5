"""CTF: our closed form vs torch-ctf, vs a hand-evaluated RELION formula, and on a real STAR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_ctf

from napari_flex3d.conventions import electron_wavelength_a
from napari_flex3d.io.particles import read_particles
from napari_flex3d.ops.ctf import apply_ctf, ctf_2d, particle_ctf

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_ctf_matches_torch_ctf(device):
    """RELION's mapping: defocus (U+V)/2, astigmatism (U-V)/2 in µm, angle = rlnDefocusAngle."""
    rng = np.random.default_rng(0)
    b, box, apix = 5, 64, 1.7
    du = rng.uniform(5000, 30000, b)
    dv = du - rng.uniform(0, 2000, b)
    ang = rng.uniform(-180, 180, b)
    phase = rng.uniform(0, 90, b)
    ours = ctf_2d(box, apix, torch.tensor(du, device=device), dv, ang, 300.0, 2.7, 0.07, phase)
    ref = torch_ctf.calculate_ctf_2d(
        defocus=torch.tensor((du + dv) / 2e4), astigmatism=torch.tensor((du - dv) / 2e4),
        astigmatism_angle=torch.tensor(ang), voltage=300.0, spherical_aberration=2.7, amplitude_contrast=0.07,
        phase_shift=torch.tensor(phase), pixel_size=apix, image_shape=(box, box), rfft=True, fftshift=False,
    )
    assert ours.shape == (b, box, box // 2 + 1) and ours.device.type == torch.device(device).type
    torch.testing.assert_close(ours.cpu().double(), ref.double(), atol=1e-3, rtol=0)  # float32 chi ~ 100 rad
    full = ctf_2d(box, apix, du, dv, ang, 300.0, 2.7, 0.07, phase, rfft=False)
    assert full.shape == (b, box, box)
    torch.testing.assert_close(full[..., : box // 2], ours.cpu().float()[..., : box // 2], atol=1e-3, rtol=0)


def test_ctf_formula_by_hand():
    """The formula of docs/conventions.md at a few pixels, positive at DC; U along the astigmatism angle."""
    box, apix, du, dv, ang, kv, cs, w = 32, 2.0, 20000.0, 10000.0, 30.0, 200.0, 2.0, 0.1
    c = ctf_2d(box, apix, du, dv, ang, kv, cs, w)[0].double().numpy()
    lam = float(electron_wavelength_a(kv))
    for iy, ix in [(0, 0), (0, 3), (2, 5), (31, 4), (16, 16), (5, 0)]:
        ky = (iy if iy < box // 2 else iy - box) / (box * apix)
        kx = ix / (box * apix)
        k2 = kx * kx + ky * ky
        theta = np.arctan2(ky, kx)
        df = (du + dv) / 2 + (du - dv) / 2 * np.cos(2 * (theta - np.deg2rad(ang)))
        chi = np.pi * lam * df * k2 - np.pi / 2 * cs * 1e7 * lam**3 * k2 * k2
        expect = np.sqrt(1 - w * w) * np.sin(chi) + w * np.cos(chi)
        assert abs(c[iy, ix] - expect) < 1e-5, (iy, ix)
    assert c[0, 0] == pytest.approx(w, abs=1e-6)  # positive at low frequency
    # angle 0: defocus U along x (ky = 0), V along y (kx = 0)
    c0 = ctf_2d(box, apix, du, dv, 0.0, kv, 0.0, 0.0)[0].double().numpy()
    k = 3 / (box * apix)
    assert c0[0, 3] == pytest.approx(np.sin(np.pi * lam * du * k * k), abs=1e-5)
    assert c0[3, 0] == pytest.approx(np.sin(np.pi * lam * dv * k * k), abs=1e-5)


def test_ctf_differentiable_and_apply():
    du = torch.tensor([15000.0, 12000.0], requires_grad=True)
    c = ctf_2d(32, 2.0, du, du.detach() - 100, 10.0, 300.0, 2.7, 0.1)
    c.sum().backward()
    assert du.grad is not None and torch.isfinite(du.grad).all() and (du.grad != 0).all()
    images = torch.randn(2, 32, 32)
    torch.testing.assert_close(apply_ctf(images, torch.ones(2, 32, 17)), images, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="ctf shape"):
        apply_ctf(images, torch.ones(2, 32, 32))


def test_particle_ctf_from_star(formats_dir):
    ps = read_particles(formats_dir / "simplecryoem/relion_proj_batch_pfac2.star")
    got = particle_ctf(ps, [0, 3])
    t = ps.table
    expect = ctf_2d(64, 3.54, t.rlnDefocusU.values[[0, 3]], t.rlnDefocusV.values[[0, 3]],
                    t.rlnDefocusAngle.values[[0, 3]], 200.0, 1.4, 0.1)
    torch.testing.assert_close(got, expect)
    small = particle_ctf(ps, [0], box=32)  # Fourier-cropped box: pixel 2 x 3.54 Å
    torch.testing.assert_close(small, ctf_2d(32, 7.08, t.rlnDefocusU.values[:1], t.rlnDefocusV.values[:1],
                                             t.rlnDefocusAngle.values[:1], 200.0, 1.4, 0.1))


def test_per_particle_table_equals_tensor_arguments():
    """NumPy arguments go in as one table; tensors one by one: the same CTFs bit for bit (float32 and 64)."""
    rng = np.random.default_rng(4)
    b = 9
    du, dv = rng.uniform(5e3, 3e4, b), rng.uniform(5e3, 3e4, b)
    angle, phase = rng.uniform(-180, 180, b), rng.uniform(0, 90, b)
    for dtype in (torch.float32, torch.float64):
        table = ctf_2d(40, 1.7, du, dv, angle, 300.0, 2.7, np.full(b, 0.1), phase, dtype=dtype)
        du_t = torch.as_tensor(du, dtype=dtype)
        tensors = ctf_2d(40, 1.7, du_t, dv, angle, 300.0, 2.7, np.full(b, 0.1), phase, dtype=dtype)
        assert table.shape == (b, 40, 21) and table.dtype == dtype
        assert torch.equal(table, tensors)
