"""Rigid reconstruction: project a known map with CTF, back-project, compare with the truth."""

from __future__ import annotations

import dataclasses

import mrcfile
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.conventions import voxel_grid_xyz_a
from napari_flex3d.io.particles import OpticsGroup, ParticleSet
from napari_flex3d.ops.ctf import apply_ctf, ctf_2d
from napari_flex3d.ops.fourier import fourier_crop_3d, lowpass
from napari_flex3d.ops.fsc import fsc, fsc_resolution
from napari_flex3d.ops.project import project
from napari_flex3d.reconstruct.rigid import (
    finalize_reconstruction,
    half_set_indices,
    reconstruct_from_images,
    reconstruct_half_maps,
    reconstruct_rigid,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

N, APIX = 32, 3.0


def _truth(n=N, apix=APIX, seed=0, device="cpu") -> torch.Tensor:
    """Random map with signal up to 0.9 Nyquist inside a soft sphere (radius ~n/2.7)."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(n, n, n, generator=g)
    r = voxel_grid_xyz_a(n, 1.0).norm(dim=-1)
    vol = lowpass(vol, apix / (2 * apix / 0.9), 1.0 / n) * torch.clamp((n / 2.7 - r) / 3, 0, 1)  # to 0.9 Nyquist, 1 px edge
    return vol.to(device)


def _simulate(vol, b, seed, noise_std=0.0, apix=APIX):
    """Particles of ``vol`` at random poses/shifts/defoci: images, A, shifts, defocus."""
    rng = np.random.default_rng(seed)
    n = vol.shape[-1]
    a = Rotation.random(b, random_state=seed).as_matrix()
    shifts = rng.uniform(-2 * apix, 2 * apix, (b, 2))
    du = rng.uniform(8000, 20000, b)
    dv = du - rng.uniform(0, 500, b)
    ang = rng.uniform(0, 180, b)
    ctf = ctf_2d(n, apix, du, dv, ang, 300.0, 2.7, 0.1, device=vol.device)
    images = apply_ctf(project(vol, a, torch.from_numpy(shifts).to(vol), apix), ctf)
    if noise_std:
        images = images + noise_std * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images)
    return images, a, shifts, (du, dv, ang), ctf


@pytest.mark.parametrize("device", DEVICES)
def test_project_then_backproject_recovers_map(device):
    vol = _truth(device=device)
    images, a, shifts, _, ctf = _simulate(vol, 600, seed=1)
    values = weights = None
    for s in range(0, 600, 300):  # (values, weights) from chunks add up
        v, w = reconstruct_from_images(images[s : s + 300], a[s : s + 300], torch.from_numpy(shifts[s : s + 300]),
                                       ctf[s : s + 300], APIX)
        values = v if values is None else values + v
        weights = w if weights is None else weights + w
    rec = finalize_reconstruction(values, weights, N)
    assert rec.shape == (N, N, N) and rec.device.type == torch.device(device).type
    curve = fsc(rec, vol).cpu()
    shells = torch.arange(N // 2 + 1) / (N // 2)  # fraction of Nyquist
    print("FSC(rec, truth) at 0.25/0.5/0.7/0.8/0.9 Nyquist:",
          [round(float(curve[int(f * N // 2)]), 4) for f in (0.25, 0.5, 0.7, 0.8, 0.9)])
    assert curve[(shells > 0) & (shells <= 0.7)].min() > 0.97
    assert curve[(shells > 0) & (shells <= 0.9)].min() > 0.9
    scale = float((rec * vol).sum() / (vol * vol).sum())
    assert 0.85 < scale < 1.1, scale  # amplitudes are right (Wiener shrinks slightly)
    # sanity: the wrong convention (A^T) reconstructs garbage
    v_bad, w_bad = reconstruct_from_images(images[:300], np.swapaxes(a[:300], -1, -2),
                                           torch.from_numpy(shifts[:300]), ctf[:300], APIX)
    bad = fsc(finalize_reconstruction(v_bad, w_bad, N), vol).cpu()
    assert bad[4:].mean() < 0.5


def test_centre_stays_put():
    """An off-centre blob is reconstructed where it was (no CTF, few views)."""
    n, apix = 24, 2.0
    xyz = voxel_grid_xyz_a(n, 1.0)  # (n, n, n, 3) voxels
    centre = torch.tensor([4.0, -3.0, 2.0])
    vol = torch.exp(-((xyz - centre) ** 2).sum(-1) / (2 * 1.5**2))
    a = Rotation.random(300, random_state=5).as_matrix()
    shifts = torch.from_numpy(np.random.default_rng(5).uniform(-4, 4, (300, 2)))
    images = project(vol, a, shifts, apix)
    v, w = reconstruct_from_images(images, a, shifts, None, apix)
    rec = finalize_reconstruction(v, w, n)
    rec = torch.where(rec > 0.2 * rec.max(), rec, torch.zeros_like(rec))  # the blob, not the faint ringing
    got = (rec[..., None] * xyz).sum((0, 1, 2)) / rec.sum()
    torch.testing.assert_close(got, centre, atol=0.05, rtol=0)


def _particle_set(tmp_path, images, a, shifts, defocus, apix, half_set=None):
    path = tmp_path / "particles.mrcs"
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(images.cpu().numpy().astype(np.float32))
        m.voxel_size = apix
    optics = OpticsGroup(name="og1", number=1, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
                         apix=apix, box=images.shape[-1])
    du, dv, ang = defocus
    return ParticleSet.from_arrays(image_paths=str(path), image_indices=np.arange(len(a)), defocus_u_a=du,
                                   defocus_v_a=dv, defocus_angle_deg=ang, optics=optics, rotations=a,
                                   shifts_a=shifts, half_set=half_set)


def test_reconstruct_rigid_and_half_maps_from_particle_set(tmp_path):
    vol = _truth(seed=2)
    b = 1000
    signal = float(project(vol, np.eye(3)[None], None, APIX).std())
    images, a, shifts, defocus, _ = _simulate(vol, b, seed=3, noise_std=5 * signal)  # noise var 25x signal's
    half = (np.arange(b) % 2).astype(np.int8)
    ps = _particle_set(tmp_path, images, a, shifts, defocus, APIX, half_set=half)

    half_a, half_b = reconstruct_half_maps(ps, chunk_size=250)
    ha, hb = half_set_indices(ps)
    assert set(ha) == set(np.nonzero(half == 0)[0]) and len(hb) == b // 2
    curve = fsc(half_a, half_b)
    res = fsc_resolution(curve, N, APIX)
    truth_curve = fsc((half_a + half_b) / 2, vol)
    # Rosenthal & Henderson: the average of the halves correlates with the truth as sqrt(2 F / (1 + F))
    c_ref = torch.sqrt(2 * curve.clamp(min=0) / (1 + curve.clamp(min=0)))
    print(f"half-map FSC: {np.round(curve.numpy(), 3)}; resolution {res:.2f} Å (Nyquist {2 * APIX} Å)")
    print(f"FSC(average of halves, truth): {np.round(truth_curve.numpy(), 3)}")
    print(f"sqrt(2F/(1+F)) from the halves: {np.round(c_ref.numpy(), 3)}")
    assert 2 * APIX < res < 2 * APIX / 0.8  # crosses 0.143 between 0.8 Nyquist and Nyquist at this SNR
    assert (truth_curve[2:] - c_ref[2:]).abs().max() < 0.06  # shell 1 holds few voxels and little CTF
    assert truth_curve[2 : N // 4].min() > 0.8

    # Fourier-cropped box: compare with the cropped truth at the coarser pixel
    small = reconstruct_rigid(ps, idx=np.arange(0, b, 2), box=24, chunk_size=500)
    assert small.shape == (24, 24, 24)
    c_small = fsc(small, fourier_crop_3d(vol, 24))
    assert c_small[2:9].min() > 0.7
    with pytest.raises(ValueError, match="apix"):
        reconstruct_rigid(ps, idx=np.arange(4), box=24, apix=APIX)


def test_ctf_premultiplied_particles_give_the_same_map(tmp_path):
    """RELION's rlnCtfDataAreCtfPremultiplied: images already times the CTF are not multiplied again."""
    n = 24
    vol = _truth(n=n, seed=4)
    images, a, shifts, defocus, ctf = _simulate(vol, 200, seed=6)
    plain = _particle_set(tmp_path, images, a, shifts, defocus, APIX)
    (tmp_path / "pre").mkdir()
    pre = _particle_set(tmp_path / "pre", apply_ctf(images, ctf), a, shifts, defocus, APIX)
    pre = dataclasses.replace(pre, optics=[dataclasses.replace(pre.optics[0], ctf_premultiplied=True)])
    torch.testing.assert_close(reconstruct_rigid(pre), reconstruct_rigid(plain), atol=1e-4, rtol=1e-3)


def test_insertion_in_sub_batches_sums_to_the_same(monkeypatch):
    import napari_flex3d.reconstruct.rigid as rigid

    b, n = 40, 16
    g = torch.Generator().manual_seed(7)
    images, ctf = torch.randn(b, n, n, generator=g), torch.rand(b, n, n // 2 + 1, generator=g)
    a = Rotation.random(b, random_state=7).as_matrix()
    v1, w1 = reconstruct_from_images(images, a, None, ctf, 1.0)
    monkeypatch.setattr(rigid, "_MAX_POINTS", 3000)  # about 7 images at a time
    v2, w2 = reconstruct_from_images(images, a, None, ctf, 1.0)
    torch.testing.assert_close(v2, v1, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(w2, w1, atol=1e-3, rtol=1e-4)
