"""Canonical map: masked values <-> full volumes, band limit for frequency marching."""

from __future__ import annotations

import torch

from napari_flex3d.conventions import voxel_grid_xyz_a
from napari_flex3d.model.canonical import CanonicalMap, bandlimit
from napari_flex3d.ops.fourier import frequency_radius_grid


def _ball_mask(n, r):
    g = voxel_grid_xyz_a(n, 1.0)
    return g.norm(dim=-1) <= r


def test_round_trip_and_coordinates():
    torch.manual_seed(0)
    n, apix = 24, 2.5
    vol = torch.randn(n, n, n)
    mask = _ball_mask(n, 8)
    cm = CanonicalMap.from_volume(vol, mask, apix)
    assert cm.n_voxels == int(mask.sum())
    full = cm.to_volume()
    torch.testing.assert_close(full[mask], vol[mask])
    assert (full[~mask] == 0).all()
    torch.testing.assert_close(cm.from_full(vol), cm.values.detach())
    # voxel (z, y, x) = (i, j, k) sits at ((k - n//2), (j - n//2), (i - n//2)) * apix
    zyx = torch.nonzero(mask)[5]
    expect = torch.stack([zyx[2], zyx[1], zyx[0]]).float().sub(n // 2) * apix
    torch.testing.assert_close(cm.points_xyz_a[5], expect)


def test_bandlimit_cuts_exactly_at_the_radius():
    torch.manual_seed(1)
    n = 32
    vol = torch.randn(n, n, n)
    out = bandlimit(vol, 6.0)
    k = frequency_radius_grid((n, n, n), d=1.0 / n)  # Fourier pixels
    spec_in, spec_out = torch.fft.rfftn(vol), torch.fft.rfftn(out)
    assert spec_out[k > 6.0].abs().max() < 1e-3
    torch.testing.assert_close(spec_out[k <= 6.0], spec_in[k <= 6.0], atol=1e-3, rtol=1e-4)
    assert bandlimit(vol, None) is vol
    # soft edge: unchanged inside, zero beyond the edge, in between strictly between
    soft = torch.fft.rfftn(bandlimit(vol, 6.0, edge_px=3.0))
    ratio = (soft / spec_in).real
    assert torch.allclose(ratio[k <= 6.0], torch.ones(()), atol=1e-3)
    assert ratio[k >= 9.0].abs().max() < 1e-3
    mid = (k > 6.5) & (k < 8.5)
    assert (ratio[mid] > 0).all() and (ratio[mid] < 1).all()


def test_lowpass_initialisation_and_gradients():
    torch.manual_seed(2)
    n, apix = 24, 2.0
    vol = torch.randn(n, n, n)
    mask = _ball_mask(n, 9)
    cm = CanonicalMap.from_volume(vol, mask, apix, lowpass_a=8.0, edge_px=0.0)
    expect = bandlimit(vol, n * apix / 8.0)[mask]
    torch.testing.assert_close(cm.values.detach(), expect)
    v = cm.band_limited(3.0)
    v.pow(2).sum().backward()
    assert cm.values.grad is not None and cm.values.grad.abs().sum() > 0
