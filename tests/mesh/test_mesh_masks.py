"""Solvent mask: threshold modes, dilation and soft pad against analytic spheres."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.mesh.masks import (
    default_threshold,
    lowpass_map,
    mask_voxel_indices,
    otsu_threshold,
    solvent_mask,
    voxel_centres_xyz_a,
)

APIX = 3.0
SIGMA = 12.0


@pytest.fixture(scope="module")
def one_blob(make_blobs):
    return make_blobs(48, APIX, [(1.0, (0.0, 0.0, 0.0), SIGMA)])


def _radius_a(box):
    idx = mask_voxel_indices(np.ones((box,) * 3))
    return np.linalg.norm(voxel_centres_xyz_a(idx, (box,) * 3, APIX), axis=1).reshape((box,) * 3)


def test_absolute_threshold_gives_the_analytic_sphere(one_blob):
    # exp(-r²/2σ²) > t  <=>  r < σ sqrt(2 ln(1/t)); no low-pass, no dilation, no pad.
    t = 0.3
    m = solvent_mask(one_blob, APIX, threshold=t, lowpass_a=None, dilate_a=0.0, soft_pad_a=0.0)
    r = _radius_a(48)
    radius = SIGMA * np.sqrt(2 * np.log(1 / t))
    np.testing.assert_array_equal(m.binary, r < radius)
    assert m.threshold_used == t
    np.testing.assert_array_equal(m.soft, m.binary.astype(np.float32))


def test_dilation_and_soft_pad_follow_distances(one_blob):
    t, dilate, pad = 0.3, 6.0, 9.0
    m = solvent_mask(one_blob, APIX, threshold=t, lowpass_a=None, dilate_a=dilate, soft_pad_a=pad)
    r = _radius_a(48)
    radius = SIGMA * np.sqrt(2 * np.log(1 / t))
    # Distances to a voxelised ball differ from r - radius by at most a voxel.
    assert m.binary[r <= radius + dilate - APIX].all()
    assert not m.binary[r > radius + dilate + APIX].any()
    assert np.all(m.soft[m.binary] == 1.0)
    assert np.all((m.soft >= 0) & (m.soft <= 1))
    assert np.all(m.soft[r > radius + dilate + pad + APIX] == 0.0)
    # The raised cosine is halfway down about half the pad beyond the dilated edge.
    shell = np.abs(r - (radius + dilate + pad / 2)) < 0.5
    assert abs(float(m.soft[shell].mean()) - 0.5) < 0.15
    # Soft values fall monotonically with radius (within voxelisation noise).
    outside = ~m.binary & (m.soft > 0)
    corr = np.corrcoef(r[outside], m.soft[outside])[0, 1]
    assert corr < -0.95


def test_volume_fraction_mode(two_blob_map):
    for frac in (0.01, 0.05):
        m = solvent_mask(two_blob_map, APIX, volume_fraction=frac, dilate_a=0.0, soft_pad_a=0.0)
        assert abs(m.fraction - frac) < 1e-3
        # The same threshold given absolutely gives the same mask.
        m2 = solvent_mask(two_blob_map, APIX, threshold=m.threshold_used, dilate_a=0.0, soft_pad_a=0.0)
        np.testing.assert_array_equal(m.binary, m2.binary)
    small = solvent_mask(two_blob_map, APIX, volume_fraction=0.01)
    big = solvent_mask(two_blob_map, APIX, volume_fraction=0.05)
    assert big.threshold_used < small.threshold_used
    assert big.binary.sum() > small.binary.sum()


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.15])
def test_default_threshold_separates_blobs_from_noise(two_blob_map, noise):
    rng = np.random.default_rng(0)
    noisy = two_blob_map + noise * rng.standard_normal(two_blob_map.shape).astype(np.float32)
    m = solvent_mask(noisy, APIX)
    assert m.threshold_used == pytest.approx(default_threshold(m.lowpassed))
    assert m.threshold_used >= otsu_threshold(m.lowpassed)
    if noise <= 0.05:  # a clean map: Otsu itself
        assert m.threshold_used == pytest.approx(otsu_threshold(m.lowpassed))
    # Between the solvent and the blob peaks, so the mask holds both blob centres, no box
    # corner, and (for every noise level) about the clean map's volume, not the noise.
    assert 0.05 < m.threshold_used < 0.6
    for x, y in ((-20.0, 0.0), (22.0, 5.0)):
        i = 32 + int(round(x / APIX)), 32 + int(round(y / APIX))
        assert m.binary[32, i[1], i[0]]
    assert not m.binary[:8, :8, :8].any()
    assert 0.004 < m.fraction < 0.015


def test_otsu_threshold_on_two_populations():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(0.0, 0.1, 20000), rng.normal(2.0, 0.1, 5000)])
    assert 0.5 < otsu_threshold(v) < 1.5


def test_lowpass_keeps_low_and_removes_high_frequencies():
    box = 32
    z, y, x = np.meshgrid(*(np.arange(box),) * 3, indexing="ij")
    low = np.cos(2 * np.pi * 2 * x / box)  # period 16 voxels = 48 Å
    high = np.cos(2 * np.pi * 12 * y / box)  # period 8/3 voxels = 8 Å
    out = lowpass_map(low + high, APIX, 10.0)
    np.testing.assert_allclose(out, low, atol=1e-4)


def test_bad_inputs_raise(two_blob_map):
    with pytest.raises(ValueError, match="either threshold or volume_fraction"):
        solvent_mask(two_blob_map, APIX, threshold=0.1, volume_fraction=0.1)
    with pytest.raises(ValueError, match="empty mask"):
        solvent_mask(two_blob_map, APIX, threshold=10.0)
    with pytest.raises(ValueError, match="volume_fraction"):
        solvent_mask(two_blob_map, APIX, volume_fraction=1.5)
    with pytest.raises(ValueError, match="3D"):
        solvent_mask(two_blob_map[0], APIX)


def test_voxel_centres_follow_the_convention():
    idx = np.array([[32, 32, 32], [0, 1, 2]])  # (z, y, x)
    xyz = voxel_centres_xyz_a(idx, (64, 64, 64), 2.0)
    np.testing.assert_allclose(xyz, [[0, 0, 0], [(2 - 32) * 2.0, (1 - 32) * 2.0, (0 - 32) * 2.0]])
