"""FlexModel.at_box: the model at a smaller box for latent inference matches the cropped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from napari_flex3d.mesh import build_mesh, solvent_mask
from napari_flex3d.model.flex import FlexModel
from napari_flex3d.ops.ctf import ctf_2d
from napari_flex3d.ops.fourier import crop_rfft_2d, fourier_crop_2d
from napari_flex3d.simulate.molecule import build_molecule
from napari_flex3d.simulate.render import render_volume

BOX, APIX, SMALL = 48, 4.0, 32


@pytest.fixture(scope="module")
def model():
    mol = build_molecule(BOX, APIX, n_atoms=1500, seed=1)
    vol = render_volume(torch.as_tensor(mol.xyz_a, dtype=torch.float32), BOX, APIX, mol.sigma_a)
    masks = solvent_mask(vol.numpy(), APIX)
    mesh = build_mesh(masks.binary, APIX, cells_across=10, method="grid")
    torch.manual_seed(0)
    m = FlexModel.from_map(vol, APIX, mesh, masks.soft > 0, latent_dim=2, hidden=32, layers=3, init_std_a=8.0)
    m.max_freq_px = 0.8 * SMALL / 2
    return m


def _ring_correlation(a, b, k_max):
    """Correlation of two image stacks' Fourier coefficients with ``0 < |k| <= k_max`` (oracle written here)."""
    n = a.shape[-1]
    k = torch.sqrt(torch.fft.fftfreq(n, 1 / n)[:, None] ** 2 + torch.fft.rfftfreq(n, 1 / n)[None, :] ** 2)
    sel = (k > 0) & (k <= k_max)
    fa, fb = torch.fft.rfft2(a)[..., sel], torch.fft.rfft2(b)[..., sel]
    return float((fa * fb.conj()).real.sum() / torch.sqrt(fa.abs().pow(2).sum() * fb.abs().pow(2).sum()))


def test_view_projects_the_cropped_model(model):
    view = model.at_box(SMALL)
    assert view.box == SMALL and view.apix == pytest.approx(APIX * BOX / SMALL)
    assert view.flow is model.flow  # shared: updates of the model's flow show in the view
    view.copy_canonical_from(model)
    rot = torch.as_tensor(Rotation.random(6, random_state=2).as_matrix(), dtype=torch.float32)
    shifts = torch.as_tensor(np.random.default_rng(2).normal(0, 5.0, (6, 2)), dtype=torch.float32)
    z = torch.as_tensor(np.random.default_rng(3).normal(0, 1.5, (6, 2)), dtype=torch.float32)
    with torch.no_grad():
        fine = fourier_crop_2d(model.project(z, rot, shifts), SMALL)
        small = view.project(z, rot, shifts)
        rigid = fourier_crop_2d(model.project(torch.zeros_like(z), rot, shifts), SMALL)
    # the flow moves the density by several Å, and the view follows it
    assert _ring_correlation(fine, rigid, 0.6 * SMALL / 2) < 0.97
    assert _ring_correlation(fine, small, 0.6 * SMALL / 2) > 0.99
    # with an updated flow, the view follows without a rebuild
    with torch.no_grad():
        for p in model.flow.parameters():
            p.mul_(1.5)
        fine2 = fourier_crop_2d(model.project(z, rot, shifts), SMALL)
        small2 = view.project(z, rot, shifts)
    assert _ring_correlation(fine2, small2, 0.6 * SMALL / 2) > 0.99
    assert _ring_correlation(fine2, small, 0.6 * SMALL / 2) < _ring_correlation(fine2, small2, 0.6 * SMALL / 2)


def test_cropped_ctf_is_the_ctf_at_the_small_box():
    kw = dict(defocus_u_a=[15000.0, 9000.0], defocus_v_a=[14000.0, 9500.0], astig_angle_deg=[30.0, -10.0],
              voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    big = ctf_2d(BOX, APIX, *kw.values())
    small = ctf_2d(SMALL, APIX * BOX / SMALL, *kw.values())
    torch.testing.assert_close(crop_rfft_2d(big, SMALL), small, atol=1e-5, rtol=0)


def test_bad_view_boxes_raise(model):
    assert model.at_box(BOX) is model
    for bad in (64, 31, 6):
        with pytest.raises(ValueError, match="even"):
            model.at_box(bad)
