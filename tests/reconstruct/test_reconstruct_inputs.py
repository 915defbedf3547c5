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
    with pytest.raises(ValueError, match=r"other.mrc: mask: 32 voxels at 4 Å \(128.0 Å across\), the map 24 voxels at "
                                         r"4 Å \(96.0 Å\): made for another map.*--resample-map"):
        _load_mask_file(tmp_path / "other.mrc", 24, 4.0)
    placed = _load_mask_file(tmp_path / "other.mrc", 24, 4.0, resample=True)
    np.testing.assert_array_equal(placed > 0.5, _cube(24, 4.0) > 0.5)  # the same cube in Å, centre kept
    write_map(tmp_path / "coarse.mrc", _cube(24, 5.0), 5.0)  # same box, another pixel size
    with pytest.raises(ValueError, match=r"coarse.mrc: mask: 24 voxels at 5 Å \(120.0 Å across\)"):
        _load_mask_file(tmp_path / "coarse.mrc", 24, 4.0)


def test_a_solve_that_would_write_an_all_zero_half_map_stops_before_writing(tmp_path):
    """Images that carry nothing (here all zero, bypassing the jobs' check) give a zero map: a stop, not a report."""
    import torch

    from napari_flex3d.io.particles import OpticsGroup, ParticleSet
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.reconstruct.halfmaps import solve_half_maps

    box, apix, n = 24, 4.0, 12
    write_map(tmp_path / "zeros.mrcs", np.zeros((n, box, box), np.float32), apix)
    ps = ParticleSet.from_arrays(
        image_paths=str(tmp_path / "zeros.mrcs"), image_indices=np.arange(n), defocus_u_a=np.full(n, 1.5e4),
        optics=OpticsGroup("opticsGroup1", 1, 300.0, 2.7, 0.1, apix, box), rotations=np.tile(np.eye(3), (n, 1, 1)),
        half_set=np.arange(n) % 2,
    )
    mask = _cube(box, apix) > 0
    torch.manual_seed(0)
    model = FlexModel.from_map(_cube(box, apix), apix, build_grid_mesh(mask, apix, cell_size_a=16.0), mask,
                               latent_dim=1, hidden=2, layers=1, kernel="linear")
    with pytest.raises(ValueError, match=r"flex_half_A.mrc: the solved flex half map A: every voxel is 0"):
        list(solve_half_maps(model, torch.zeros(n, 1), ps, tmp_path / "rec", iterations=1, rigid=False,
                             noise_particles=n))
    assert not (tmp_path / "rec" / "flex_half_A.mrc").exists()
