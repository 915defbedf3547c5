"""Landscape: the BIC finds the number of separated states; the log density peaks where the particles are."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.analyze.landscape import cluster_latents, log_density, pca, projections


def _three_states(n_per=400, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    z = np.concatenate([c + 0.5 * rng.normal(size=(n_per, 2)) for c in centres])
    return z, centres, np.repeat(np.arange(3), n_per)


def test_bic_chooses_three_states_and_labels_them():
    z, centres, truth = _three_states()
    result = cluster_latents(z, "auto")
    assert len(result.centres) == 3 and result.method == "gmm"
    order = [int(np.argmin(np.linalg.norm(result.centres - c, axis=1))) for c in centres]
    np.testing.assert_allclose(result.centres[order], centres, atol=0.15)
    assert (np.array(order)[truth] == result.labels).mean() > 0.99
    assert sorted(result.counts.tolist()) == [400, 400, 400]
    fixed = cluster_latents(z, 5)
    assert fixed.method == "kmeans" and len(fixed.centres) == 5 and fixed.counts.sum() == len(z)


def test_one_gaussian_is_one_cluster():
    z = np.random.default_rng(3).normal(size=(1000, 2))
    assert len(cluster_latents(z).centres) == 1
    with pytest.raises(ValueError, match="clusters"):
        cluster_latents(z, 0)


def test_log_density_peaks_at_the_states():
    z, centres, _ = _three_states()
    dens, xe, ye = log_density(z, bins=60)
    iy, ix = np.unravel_index(np.argmax(dens), dens.shape)
    peak = np.array([0.5 * (xe[ix] + xe[ix + 1]), 0.5 * (ye[iy] + ye[iy + 1])])
    assert np.min(np.linalg.norm(centres - peak, axis=1)) < 0.5


def test_projections_and_pca():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 3)) * np.array([3.0, 1.0, 0.2])
    views = projections(z)
    assert [v[:2] for v in views[:3]] == [("z1", "z2"), ("z1", "z3"), ("z2", "z3")]
    assert views[-1][0].startswith("PC1")
    _, axes, ratio = pca(z)
    assert abs(axes[0, 0]) > 0.99 and ratio[0] > 0.8  # the widest axis first
    assert projections(z[:, :1])[0][1] == "rank (fraction)"
