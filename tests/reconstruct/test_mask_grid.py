"""``flex3d reconstruct --mask``: a mask on the half maps' extent is used (resampled when only the
sampling differs); one made for a map of another extent is refused unless ``--resample-map``."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.io.mrc import write_map
from napari_flex3d.reconstruct.halfmaps import _load_mask_file


def _cube(box, apix, half_a=20.0):
    """A cube of half-width ``half_a`` Å about voxel ``box // 2``."""
    ax = np.abs((np.arange(box) - box // 2) * apix) <= half_a
    return (ax[:, None, None] & ax[None, :, None] & ax[None, None, :]).astype(np.float32)


def test_a_mask_on_the_half_maps_grid_is_used_as_it_is(tmp_path):
    write_map(tmp_path / "m.mrc", _cube(24, 4.0), 4.0)
    np.testing.assert_array_equal(_load_mask_file(tmp_path / "m.mrc", 24, 4.0), _cube(24, 4.0))


def test_a_mask_of_the_same_extent_at_another_sampling_is_resampled(tmp_path):
    """``--box`` smaller than the particles': the mask made at their full box spans the same Å."""
    write_map(tmp_path / "full.mrc", _cube(48, 2.0), 2.0)
    got = _load_mask_file(tmp_path / "full.mrc", 24, 4.0)
    assert got.shape == (24,) * 3
    inside = got > 0.5
    np.testing.assert_array_equal(inside, _cube(24, 4.0) > 0.5)


def test_a_mask_made_for_another_map_is_refused_or_placed_on_request(tmp_path):
    write_map(tmp_path / "other.mrc", _cube(32, 4.0), 4.0)  # 128 Å, the half maps 96 Å
    with pytest.raises(ValueError, match=r"other.mrc: the mask is 32 voxels \(4 Å\), the half maps 24 voxels at 4 Å, "
                                         r"a box of another size in Å.*--resample-map"):
        _load_mask_file(tmp_path / "other.mrc", 24, 4.0)
    placed = _load_mask_file(tmp_path / "other.mrc", 24, 4.0, resample=True)
    np.testing.assert_array_equal(placed > 0.5, _cube(24, 4.0) > 0.5)  # the same cube in Å, centre kept
    write_map(tmp_path / "coarse.mrc", _cube(24, 5.0), 5.0)  # same box, another pixel size
    with pytest.raises(ValueError, match=r"coarse.mrc: the mask is 24 voxels \(5 Å\)"):
        _load_mask_file(tmp_path / "coarse.mrc", 24, 4.0)
