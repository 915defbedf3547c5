"""The shape of the latent distribution: density images, 2D projections and clusters.

Pure functions on a ``(n, K)`` latent table, for the report and for the explorer alike:
:func:`log_density` (a 2D histogram, smoothed, in log counts), :func:`projections` (pairs
of axes and, for K >= 3, the first two principal axes), :func:`cluster_latents`
(scikit-learn's k-means and a Gaussian mixture whose number of components the BIC
chooses). Imports NumPy, SciPy and scikit-learn only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_COMPONENTS", "log_density", "pca", "projections", "Clustering", "cluster_latents"]

MAX_COMPONENTS = 8  # the BIC chooses the Gaussian mixture's size among 1..8


def log_density(xy: np.ndarray, bins: int = 80, smooth_bins: float = 1.0, extent=None):
    """``(log10(1 + counts) (bins, bins), x edges (bins+1,), y edges (bins+1,))`` of ``xy (n, 2)``.

    The histogram is smoothed by a Gaussian of ``smooth_bins`` bins (a cheap kernel
    density); the image's first axis is y, as ``imshow(origin="lower")`` expects.
    ``extent`` is ``((x0, x1), (y0, y1))``, default the 0.5-99.5 % range padded by 5 %.
    """
    from scipy.ndimage import gaussian_filter

    xy = np.asarray(xy, np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"log_density needs (n, 2) points, got {xy.shape}")
    if extent is None:
        lo, hi = np.percentile(xy, 0.5, axis=0), np.percentile(xy, 99.5, axis=0)
        pad = 0.05 * np.maximum(hi - lo, 1e-6)
        extent = ((lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1]))
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=extent)
    if smooth_bins > 0:
        counts = gaussian_filter(counts, smooth_bins)
    return np.log10(1.0 + counts.T), xe, ye


def pca(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(scores (n, K), axes (K, K) rows, explained variance ratio (K,))`` of the centred latents."""
    z = np.asarray(z, np.float64)
    zc = z - z.mean(0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    var = s**2
    return zc @ vt.T, vt, var / max(var.sum(), 1e-300)


def projections(z: np.ndarray, max_pairs: int = 6) -> list[tuple[str, str, np.ndarray]]:
    """2D views of the latents: ``[(x label, y label, xy (n, 2)), ...]``.

    Pairs of axes (``z1``-``z2``, ``z1``-``z3``, ...; at most ``max_pairs``) and, for
    K >= 3, the first two principal axes. K = 1 gives the latent against its rank.
    """
    z = np.asarray(z, np.float64)
    k_dim = z.shape[1]
    if k_dim == 1:
        order = np.argsort(np.argsort(z[:, 0])) / max(len(z) - 1, 1)
        return [("z1", "rank (fraction)", np.stack([z[:, 0], order], axis=1))]
    out = []
    for i in range(k_dim):
        for j in range(i + 1, k_dim):
            if len(out) < max_pairs:
                out.append((f"z{i + 1}", f"z{j + 1}", z[:, [i, j]]))
    if k_dim >= 3:
        scores, _, ratio = pca(z)
        out.append((f"PC1 ({ratio[0]:.0%})", f"PC2 ({ratio[1]:.0%})", scores[:, :2]))
    return out


@dataclass
class Clustering:
    """k-means and Gaussian-mixture clusters of the latents.

    ``labels (n,)`` int and ``centres (c, K)`` of the method the report uses (the
    mixture's, whose size the BIC chose, unless a number was asked for: then k-means);
    ``kmeans_labels``, ``kmeans_centres``, ``gmm_labels``, ``gmm_centres`` both methods;
    ``bic (MAX_COMPONENTS,)`` the mixture's BIC for 1..MAX_COMPONENTS components (NaN where
    too few particles); ``method`` "gmm" or "kmeans".
    """

    labels: np.ndarray
    centres: np.ndarray
    kmeans_labels: np.ndarray
    kmeans_centres: np.ndarray
    gmm_labels: np.ndarray
    gmm_centres: np.ndarray
    bic: np.ndarray
    method: str

    @property
    def counts(self) -> np.ndarray:
        """Particles per cluster ``(c,)``."""
        return np.bincount(self.labels, minlength=len(self.centres))


def _fit_sample(z: np.ndarray, max_fit: int, seed: int) -> np.ndarray:
    if len(z) <= max_fit:
        return z
    return z[np.random.default_rng(seed).choice(len(z), max_fit, replace=False)]


def cluster_latents(z: np.ndarray, n_clusters="auto", seed: int = 0, max_fit: int = 5000) -> Clustering:
    """Cluster latents ``z (n, K)``: ``n_clusters`` "auto" (the BIC over 1..8 mixture
    components decides) or an int (k-means with that many, and a mixture of the same size).

    Both fit on at most ``max_fit`` particles (a seeded sample) and label all of them.
    The mixture has full covariances and one restart per size; 5,000 particles place up to
    8 components in K <= 8 dimensions well (>= 600 per component), and the BIC sweep costs
    the same for any number of particles.
    """
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    z = np.asarray(z, np.float64)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"cluster_latents needs (n >= 2, K) latents, got {z.shape}")
    fit = _fit_sample(z, max_fit, seed)
    bic = np.full(MAX_COMPONENTS, np.nan)
    models = {}
    for c in range(1, MAX_COMPONENTS + 1):
        if c * (z.shape[1] + 2) > len(fit):  # fewer particles than a component's parameters
            break
        gm = GaussianMixture(c, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(fit)
        bic[c - 1], models[c] = gm.bic(fit), gm
    if n_clusters == "auto":
        n_gmm = int(np.nanargmin(bic)) + 1
        method = "gmm"
    else:
        n_gmm = int(n_clusters)
        if not 1 <= n_gmm <= len(z):
            raise ValueError(f"clusters must be 'auto' or a count in 1..{len(z)}, got {n_clusters}")
        method = "kmeans"
    gm = models.get(n_gmm) or GaussianMixture(n_gmm, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(fit)
    km = KMeans(n_gmm, n_init=4, random_state=seed).fit(fit)
    km_labels, gm_labels = km.predict(z), gm.predict(z)
    km_centres, gm_centres = km.cluster_centers_, gm.means_
    labels, centres = (gm_labels, gm_centres) if method == "gmm" else (km_labels, km_centres)
    return Clustering(labels.astype(np.int64), centres, km_labels.astype(np.int64), km_centres,
                      gm_labels.astype(np.int64), gm_centres, bic, method)
