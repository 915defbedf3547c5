"""A consensus map at another box or pixel size than the particles': refused, or resampled on
request (``--resample-map``) by Fourier crop/pad, checked against maps made directly at the
target grid (an analytic Gaussian; the simulator's atoms rendered at both pixel sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.io.mrc import write_map
from napari_flex3d.ops.fourier import resample_volume
from napari_flex3d.training.setup import consensus_at_box


def _blob(box, apix, centre=(3.0, -2.0, 5.0), sigma_a=6.0):
    """A Gaussian of ``sigma_a`` Å at ``centre`` (xyz Å from voxel N//2), sampled on a ``box`` grid."""
    ax = (np.arange(box) - box // 2) * apix
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    r2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return np.exp(-r2 / (2 * sigma_a**2))


@pytest.mark.parametrize("box_in, apix_in, box_out, apix_out", [
    (48, 1.5, 64, 1.1),  # finer pixels, larger box
    (64, 1.1, 40, 1.9),  # coarser pixels, smaller box
    (48, 1.5, 40, 1.5),  # the box only
    (47, 1.3, 64, 1.0),  # an odd box in
    (64, 1.0, 64, 1.37),  # a ratio no small box hits exactly
])
def test_resampled_gaussian_matches_the_gaussian_sampled_there(box_in, apix_in, box_out, apix_out):
    vol, reached = resample_volume(torch.as_tensor(_blob(box_in, apix_in)), apix_in, box_out, apix_out)
    assert vol.shape == (box_out,) * 3
    assert abs(reached - apix_out) < 1e-3 * apix_out
    np.testing.assert_allclose(vol.numpy(), _blob(box_out, reached), atol=2e-4)  # peak 1


def test_leading_dimensions_survive_and_bad_sizes_are_refused():
    vols = torch.as_tensor(np.stack([_blob(32, 2.0), 2 * _blob(32, 2.0)]))
    out, _ = resample_volume(vols, 2.0, 24, 3.0)
    assert out.shape == (2, 24, 24, 24)
    torch.testing.assert_close(out[1], 2 * out[0])
    with pytest.raises(ValueError, match="pixel sizes must be positive"):
        resample_volume(vols, 0.0, 24, 3.0)


@pytest.fixture
def rendered(tmp_path):
    """The simulator's pseudo-atoms rendered at the particles' grid (24 voxels, 8 Å) and at another (40, 6 Å)."""
    from napari_flex3d.simulate.render import render_volume

    xyz = torch.as_tensor(np.random.default_rng(3).uniform(-40, 40, size=(60, 3)), dtype=torch.float32)
    maps = {}
    for box, apix in ((24, 8.0), (40, 6.0)):
        vol = render_volume(xyz, box, apix, sigma_a=9.0).numpy()
        maps[(box, apix)] = vol
        write_map(tmp_path / f"map_{box}.mrc", vol, apix)
    return tmp_path, maps


def test_a_map_on_another_grid_is_refused_naming_both_and_the_option(rendered):
    folder, _ = rendered
    with pytest.raises(ValueError, match=r"map_40.mrc: the map is 40 voxels at 6 Å, the particles' box is 24 pixels at "
                                         r"8 Å; pass --resample-map"):
        consensus_at_box(folder / "map_40.mrc", 24, 8.0, 24)


def test_resample_map_puts_the_other_rendering_on_the_particles_grid(rendered):
    folder, maps = rendered
    direct = maps[(24, 8.0)]
    got = consensus_at_box(folder / "map_40.mrc", 24, 8.0, 24, resample=True)
    assert got.shape == (24, 24, 24)
    corr = np.corrcoef(got.ravel(), direct.ravel())[0, 1]
    assert corr > 0.9999, corr
    # values are kept, and the simulator renders mass per voxel: the 6 Å map holds (6/8)^3 of the 8 Å one's
    scale = float(np.dot(got.ravel(), direct.ravel()) / np.dot(direct.ravel(), direct.ravel()))
    assert scale == pytest.approx((6.0 / 8.0) ** 3, rel=1e-3)
    assert consensus_at_box(folder / "map_24.mrc", 24, 8.0, 16, resample=True).shape == (16,) * 3  # then cropped
