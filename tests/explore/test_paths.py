"""Latent paths and polygon subsets, the explorer's headless helpers."""

from __future__ import annotations

import numpy as np

from napari_flex3d.explore.paths import interpolate_path
from napari_flex3d.explore.subsets import points_in_polygon


def test_interpolated_path_is_evenly_spaced_and_hits_its_ends():
    path = np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]])
    zs = interpolate_path(path, 8)
    np.testing.assert_allclose(zs[0], path[0])
    np.testing.assert_allclose(zs[-1], path[-1])
    steps = np.linalg.norm(np.diff(zs, axis=0), axis=1)
    np.testing.assert_allclose(steps[[0, 1, 3, 5, 6]], 1.0, rtol=1e-5)  # 7 units in 7 steps (corner cut inside one)


def test_points_in_polygon_selects_the_inside():
    xy = np.array([[0.5, 0.5], [2.0, 0.5], [0.1, 0.9], [-0.1, 0.5]])
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(points_in_polygon(xy, square), [0, 2])
