"""Solvent masks from a consensus map, and masks painted by the user.

A room of ``mesh``; it imports numpy, scipy and ``ops`` (the shared low-pass and soft edge).

A solvent mask follows cryoSPARC's recipe and defaults: low-pass the map to 10 Å,
threshold it, dilate the result by 2 Å and add a 5 Å soft (raised-cosine) pad.

The threshold is either an absolute density (``threshold=``), or chosen so that a given
fraction of the box's voxels lies above it (``volume_fraction=``), or, by default,
:func:`default_threshold`: Otsu's threshold of the low-passed map (the level that best
splits its histogram into two classes, solvent and molecule), raised when needed to at
least ``5 sigma`` above the solvent level, with the solvent's level and ``sigma`` the
median and the scaled median absolute deviation of the low-passed map (the solvent fills
most of a box). Otsu alone needs no knowledge of the map's scale and lands near the
visual contour level of a clean map; on a noisy one, where solvent voxels outnumber the
molecule's many times, it can cut into the noise, which the floor prevents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..ops.fourier import lowpass, raised_cosine

__all__ = [
    "MaskResult",
    "solvent_mask",
    "lowpass_map",
    "otsu_threshold",
    "default_threshold",
    "threshold_for_volume_fraction",
    "mask_voxel_indices",
    "voxel_centres_xyz_a",
]


@dataclass(frozen=True)
class MaskResult:
    """A solvent mask.

    Attributes:
        binary: ``(d, h, w)`` bool, the thresholded map dilated by ``dilate_a``.
        soft: ``(d, h, w)`` float32 in [0, 1]: 1 on ``binary``, a raised-cosine fall-off
            over ``soft_pad_a`` beyond it, 0 further out.
        threshold_used: the absolute density threshold applied to the low-passed map.
        lowpassed: ``(d, h, w)`` float32, the low-passed map the threshold was applied to.
    """

    binary: np.ndarray
    soft: np.ndarray
    threshold_used: float
    lowpassed: np.ndarray

    @property
    def fraction(self) -> float:
        """Fraction of the box's voxels in ``binary``."""
        return float(self.binary.mean())


def _check_volume(volume, name: str = "volume") -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"{name} must be a 3D (d, h, w) array, got shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"{name} holds non-finite values")
    return vol


def lowpass_map(volume: np.ndarray, apix: float, resolution_a: float, edge_shells: float = 2.0) -> np.ndarray:
    """Low-pass a ``(d, h, w)`` map to ``resolution_a`` Å with a raised-cosine edge.

    The filter is 1 below ``1/resolution_a`` minus half the edge and 0 above it plus half
    the edge; the edge is ``edge_shells`` Fourier shells of the largest axis wide. A
    resolution at or below Nyquist (``2 * apix``) leaves the map as it is.
    Returns ``(d, h, w)`` float32.
    """
    vol = _check_volume(volume).astype(np.float32)
    if resolution_a is None or resolution_a <= 2.0 * apix:
        return vol.copy()
    k_cut = 1.0 / resolution_a
    width = edge_shells / (max(vol.shape) * apix)
    out = lowpass(torch.from_numpy(vol.astype(np.float64)), k_cut - width / 2, width, ndim=3, d=apix)  # in 1/Å
    return out.numpy().astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of an array: maximises the between-class variance of its histogram."""
    v = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)  # weight of the class below each cut
    w1 = 1.0 - w0
    m0 = np.cumsum(p * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Cuts inside an empty stretch of the histogram tie; take the middle of the tied run.
    top = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run = top[top - top[0] == np.arange(len(top))]  # the first contiguous run of maxima
    return float(0.5 * (edges[run[0] + 1] + edges[run[-1] + 1]))  # values above are the upper class


def default_threshold(lowpassed: np.ndarray, n_sigma: float = 5.0) -> float:
    """Otsu's threshold of a low-passed map, floored at ``median + n_sigma * 1.4826 * MAD``."""
    v = np.asarray(lowpassed, dtype=np.float64).ravel()
    med = float(np.median(v))
    sigma = 1.4826 * float(np.median(np.abs(v - med)))
    return max(otsu_threshold(v), med + n_sigma * sigma)


def threshold_for_volume_fraction(volume: np.ndarray, volume_fraction: float) -> float:
    """The density above which ``volume_fraction`` of the voxels of ``volume`` lie."""
    if not 0.0 < volume_fraction < 1.0:
        raise ValueError(f"volume_fraction must lie in (0, 1), got {volume_fraction}")
    return float(np.quantile(np.asarray(volume, dtype=np.float64), 1.0 - volume_fraction))


def solvent_mask(
    volume: np.ndarray,
    apix: float,
    threshold: float | None = None,
    volume_fraction: float | None = None,
    lowpass_a: float | None = 10.0,
    dilate_a: float = 2.0,
    soft_pad_a: float = 5.0,
) -> MaskResult:
    """Solvent mask of a consensus map, cryoSPARC's defaults.

    Args:
        volume: ``(d, h, w)`` consensus map.
        apix: voxel size in Å.
        threshold: absolute density threshold on the low-passed map.
        volume_fraction: instead of ``threshold``, the fraction of the box's voxels that
            the thresholded (not yet dilated) mask should hold, in (0, 1).
        lowpass_a: low-pass resolution in Å before thresholding (``None``: none).
        dilate_a: dilation of the thresholded mask in Å.
        soft_pad_a: width of the raised-cosine soft edge beyond the dilated mask, in Å.

    With neither ``threshold`` nor ``volume_fraction``, the threshold is
    :func:`default_threshold` of the low-passed map (see the module docstring).

    Returns:
        :class:`MaskResult` with ``binary`` (dilated, bool), ``soft`` (float32) and the
        threshold used.
    """
    vol = _check_volume(volume)
    if apix <= 0:
        raise ValueError(f"apix must be positive, got {apix}")
    if threshold is not None and volume_fraction is not None:
        raise ValueError("give either threshold or volume_fraction, not both")
    if dilate_a < 0 or soft_pad_a < 0:
        raise ValueError(f"dilate_a and soft_pad_a must be >= 0, got {dilate_a}, {soft_pad_a}")
    low = lowpass_map(vol, apix, lowpass_a)
    if threshold is None and volume_fraction is None and not float(low.max()) > float(low.min()):
        raise ValueError(f"the map is constant ({float(low.min()):.4g} everywhere): no automatic mask threshold; "
                         "check the map, or give a threshold")
    if threshold is not None:
        thr = float(threshold)
    elif volume_fraction is not None:
        thr = threshold_for_volume_fraction(low, volume_fraction)
    else:
        thr = default_threshold(low)
    core = low > thr
    if not core.any():
        raise ValueError(
            f"threshold {thr:.4g} leaves an empty mask (low-passed map spans {low.min():.4g} .. {low.max():.4g})"
        )
    # Distance (Å) from every voxel to the nearest voxel above threshold.
    dist_a = ndimage.distance_transform_edt(~core, sampling=apix)
    binary = dist_a <= dilate_a + 1e-6
    if soft_pad_a > 0:
        soft = raised_cosine((dist_a - dilate_a) / soft_pad_a)
        soft[binary] = 1.0
    else:
        soft = binary.astype(np.float64)
    return MaskResult(binary=binary, soft=soft.astype(np.float32), threshold_used=thr, lowpassed=low)


def mask_voxel_indices(mask: np.ndarray, level: float = 0.0) -> np.ndarray:
    """Indices of the voxels of a ``(d, h, w)`` mask above ``level``, as ``(n, 3)`` int64 (z, y, x).

    Order is C order (z slowest, x fastest), the order of ``volume[mask > level]``.
    """
    m = _check_volume(mask, "mask")
    return np.argwhere(m > level).astype(np.int64)


def voxel_centres_xyz_a(zyx_idx: np.ndarray, shape: tuple[int, int, int], apix: float) -> np.ndarray:
    """Centres of voxels given as ``(n, 3)`` (z, y, x) indices, as ``(n, 3)`` xyz Å.

    Voxel ``i`` of an axis of length ``n`` sits at ``(i - n // 2) * apix`` (docs/conventions.md).
    """
    idx = np.asarray(zyx_idx, dtype=np.float64)
    centre = np.array([s // 2 for s in shape], dtype=np.float64)
    return ((idx - centre) * apix)[:, ::-1].copy()  # (n, 3) zyx -> xyz
