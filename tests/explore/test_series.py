"""The ChimeraX surface level of a series must cut through the molecule, never at 0."""

from __future__ import annotations

import numpy as np

from napari_flex3d.explore.series import series_level


def test_level_is_inside_the_density_range_for_masked_maps():
    vols = np.zeros((3, 32, 32, 32), dtype=np.float32)
    zz, yy, xx = np.meshgrid(*(np.arange(32) - 16,) * 3, indexing="ij")
    blob = np.exp(-(xx**2 + yy**2 + zz**2) / (2 * 2.0**2))  # occupies far less than 4 % of the box
    vols[:] = blob * (blob > 0.05)
    level = series_level(vols)
    assert 0.05 < level < blob.max()
    assert (vols[1] > level).sum() > 10  # the surface encloses a real volume


def test_level_for_dense_maps_keeps_the_top_four_percent():
    rng = np.random.default_rng(0)
    vols = rng.normal(size=(3, 16, 16, 16))
    level = series_level(vols)
    assert abs((vols[1] > level).mean() - 0.04) < 0.01
