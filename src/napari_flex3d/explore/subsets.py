"""Particle subsets picked in latent space: points inside a drawn polygon, written as STAR or .cs.

The written file points at the original particle images (no images are copied). Imports
numpy, matplotlib's ``Path`` (point-in-polygon) and ``io.particles``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["points_in_polygon", "write_subset"]


def points_in_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``xy (n, 2)`` inside ``polygon (m, 2)`` (m >= 3)."""
    from matplotlib.path import Path as MplPath

    return np.nonzero(MplPath(np.asarray(polygon, float)).contains_points(np.asarray(xy, float)))[0]


def write_subset(particles, indices: np.ndarray, path) -> Path:
    """Write ``particles.subset(indices)`` to ``path``: RELION STAR or cryoSPARC ``.cs`` by suffix."""
    from ..io.particles import write_cs, write_star

    path = Path(path)
    writers = {".cs": write_cs, ".star": write_star}
    if path.suffix.lower() not in writers:
        raise ValueError(f"{path}: a subset is written as .star or .cs")
    writers[path.suffix.lower()](particles.subset(indices), path)
    return path
