"""Paths through latent space: a drawn polyline resampled into the latents of a movie's frames.

Numpy only. (Axis traversals, shared with the CLI, are ``explore.generate.axis_latents``.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["interpolate_path"]


def interpolate_path(path: np.ndarray, n_frames: int) -> np.ndarray:
    """``n_frames`` latents ``(n_frames, K)`` evenly spaced by arc length along ``path (m, K)``."""
    path = np.asarray(path, np.float64)
    if len(path) == 1:
        return np.repeat(path, n_frames, axis=0).astype(np.float32)
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n_frames)
    return np.stack([np.interp(t, s, path[:, k]) for k in range(path.shape[1])], axis=1).astype(np.float32)
