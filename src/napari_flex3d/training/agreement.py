"""How far two latent tables of the same particles agree, up to an affine map of the whole.

Pure NumPy statistics, no torch and no run: the training loop reports
:func:`latent_agreement` between epochs, and :mod:`napari_flex3d.evaluate.recovery` scores
latents against a simulation's true coordinates with :func:`canonical_correlations`.
Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

__all__ = ["canonical_correlations", "latent_agreement"]


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations between ``x (n, p)`` and ``y (n, q)``: ``(min(p, q),)``, largest first.

    The singular values of ``Qx^T Qy`` with ``Qx``, ``Qy`` orthonormal bases of the centred columns.
    """
    x = np.atleast_2d(np.asarray(x, np.float64).T).T
    y = np.atleast_2d(np.asarray(y, np.float64).T).T
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


def latent_agreement(before: np.ndarray, after: np.ndarray) -> float:
    """The smallest canonical correlation between two latent tables ``(n, K)`` of the same
    particles: 1 when one is an affine map of the other (a latent space that only moved as a
    whole), lower as particles move against each other; nan with fewer than ``K + 2``
    particles or a constant axis."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    k = before.shape[1]
    if len(before) < k + 2 or np.any(before.std(0) < 1e-8) or np.any(after.std(0) < 1e-8):
        return float("nan")
    return float(canonical_correlations(before, after).min())
