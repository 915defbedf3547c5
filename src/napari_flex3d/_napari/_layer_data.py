"""Layer data shared by the reader, the sample and the widgets: iso level, map and particle layers.

Its own module so that the reader (which docks the Data and mesh widget) and that widget
(which reads particle files) both import it without importing each other. Imports numpy
and ``napari_flex3d.io`` only; no Qt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MONTAGE_COUNT = 16  # particle images shown in a reader's layer


def default_iso_threshold(data: np.ndarray) -> float:
    """A starting iso level: mean + 3 standard deviations, kept below the maximum."""
    mean, std = float(data.mean()), float(data.std())
    return float(min(mean + 3.0 * std, 0.5 * (mean + float(data.max()))))


def map_layer_data(data: np.ndarray, apix: float, name: str, **metadata) -> tuple:
    """A layer-data tuple for a 3D map: scale = voxel size, iso-surface rendering."""
    data = np.asarray(data, dtype=np.float32)
    kwargs = {
        "name": name,
        "scale": (apix, apix, apix),
        "rendering": "iso",
        "iso_threshold": default_iso_threshold(data),
        "colormap": "gray",
        "metadata": {"apix": float(apix), **metadata},
    }
    return (data, kwargs, "image")


def particles_layer_data(ps, name: str, count: int = MONTAGE_COUNT) -> tuple:
    """A few particle images ``(count, h, w)`` with the particle set in the metadata."""
    n = min(count, len(ps))
    idx = np.linspace(0, len(ps) - 1, n).round().astype(np.int64) if n else np.zeros(0, np.int64)
    images = np.asarray(ps.images(idx), dtype=np.float32)
    apix = float(ps.apix)
    kwargs = {
        "name": f"{name} ({len(ps)} particles)",
        "scale": (1.0, apix, apix),
        "colormap": "gray",
        "metadata": {"particles": ps, "indices": idx, "source": str(getattr(ps, "source", name))},
    }
    return (images, kwargs, "image")


def read_particle_file(path, passthrough=None, root=None):
    """``io.particles.read_particles``: image paths resolve as in the CLI (``io.image_source``)."""
    from ..io.particles import read_particles

    return read_particles(path, passthrough=passthrough, root=root)
    try:
        ps.images(np.array([0]))
    except (ValueError, FileNotFoundError, OSError):
        ps = read_particles(path, passthrough=passthrough, root=str(Path(path).resolve().parent))
    return ps
