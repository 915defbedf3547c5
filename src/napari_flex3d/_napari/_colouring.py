"""Per-particle values to colours: for each point of the latent scatter, and per bin of its density view.

A :class:`Colouring` turns one column (``values (n,)``; for the viewing direction
``(n, 3)``) into an index per point into a small ``palette (m, 4)`` uint8, so the scatter
draws with a few shared brushes, and into a colour per bin of the density view:

- continuous: a colour map over ``[lo, hi]`` (default the 1st-99th percentile), values
  outside clipped; the bin colour is the mean of the bin's values;
- cyclic (``rot_deg``, ``psi_deg``): a cyclic map over -180..180 degrees, the bin colour
  the circular mean (179 and -179 average to 180, not 0);
- categorical (optics group, half set, cluster; any column of at most
  :data:`MAX_CATEGORIES` integer values): one colour per value and a legend; the bin colour
  is its most frequent value;
- rgb (the viewing direction): ``|x|, |y|, |z|`` as red, green, blue; the bin colour the mean.

A missing value (NaN: an imported latent that matched none of our particles) is grey.
Imports NumPy and pyqtgraph's colour maps only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MAX_CATEGORIES", "CATEGORY_COLOURS", "MISSING", "Colouring", "colouring_for", "bin_index"]

MAX_CATEGORIES = 16  # an integer column with at most this many values is drawn as categories
CATEGORICAL = ("optics_group", "half_set", "cluster")
CYCLIC = ("rot_deg", "psi_deg")
CONTINUOUS = ("latent_norm", "defocus_a", "astigmatism_a", "tilt_deg", "view_x", "view_y", "view_z", "shift_x_a",
              "shift_y_a", "residual")  # never categories, even when a small simulated set has few values
LEVELS = 256  # colours of a continuous map
RGB_STEPS = 4  # per channel of the viewing-direction colours (4^3 = 64)
POINT_ALPHA = 180
MISSING = np.array([128, 128, 128, 90], np.uint8)
CATEGORY_COLOURS = np.array(  # Okabe-Ito then Tableau: distinguishable, also by most colour-blind readers
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0], [204, 121, 167],
     [255, 255, 255], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
     [227, 119, 194], [188, 189, 34]], np.uint8)


def _lut(name: str) -> np.ndarray:
    import pyqtgraph as pg

    return np.asarray(pg.colormap.get(name).getLookupTable(nPts=LEVELS, alpha=True), np.uint8)  # (LEVELS, 4)


def bin_index(xy: np.ndarray, extent, bins: int) -> np.ndarray:
    """``(n,)`` flat index ``ix * bins + iy`` of each point's bin on the ``bins x bins`` grid over
    ``extent`` (x0, x1, y0, y1); points outside are clipped to the edge bins."""
    x0, x1, y0, y1 = extent
    ix = np.clip(((xy[:, 0] - x0) * (bins / max(x1 - x0, 1e-12))).astype(np.int64), 0, bins - 1)
    iy = np.clip(((xy[:, 1] - y0) * (bins / max(y1 - y0, 1e-12))).astype(np.int64), 0, bins - 1)
    return ix * bins + iy


@dataclass
class Colouring:
    """One column's colours. ``kind``: "continuous" | "cyclic" | "categorical" | "rgb"."""

    name: str
    values: np.ndarray
    kind: str
    lo: float = 0.0
    hi: float = 1.0
    categories: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cmap: str = "viridis"

    @property
    def palette(self) -> np.ndarray:
        """``(m, 4)`` uint8 colours; the last one is the missing-value grey."""
        if self.kind in ("continuous", "cyclic"):
            pal = _lut(self.cmap)
        elif self.kind == "categorical":
            pal = CATEGORY_COLOURS[np.arange(len(self.categories)) % len(CATEGORY_COLOURS)]
            pal = np.column_stack([pal, np.full(len(pal), 255, np.uint8)])
        else:
            steps = (np.arange(RGB_STEPS) * 255 // (RGB_STEPS - 1)).astype(np.uint8)
            r, g, b = np.meshgrid(steps, steps, steps, indexing="ij")
            pal = np.stack([r.ravel(), g.ravel(), b.ravel(), np.full(r.size, 255, np.uint8)], axis=1)
        return np.vstack([pal, MISSING[None]]).astype(np.uint8)

    @property
    def missing(self) -> np.ndarray:
        """``(n,)`` bool: particles without a value."""
        v = self.values
        return ~np.isfinite(v).all(axis=1) if v.ndim == 2 else ~np.isfinite(v)

    def _unit(self, v: np.ndarray) -> np.ndarray:
        """Values to [0, 1] along the map (clipped; cyclic ones wrap)."""
        span = max(self.hi - self.lo, 1e-12)
        if self.kind == "cyclic":
            return np.mod(v - self.lo, span) / span
        return np.clip((v - self.lo) / span, 0.0, 1.0)

    def _levels_of(self, v: np.ndarray) -> np.ndarray:
        """Palette indices of values ``v`` ((n,), or (n, 3) for rgb); NaN gives the grey."""
        n_pal = len(self.palette) - 1
        with np.errstate(invalid="ignore"):
            if self.kind == "categorical":
                idx = np.searchsorted(self.categories, v)
                idx = np.where(np.isfinite(v), np.clip(idx, 0, max(n_pal - 1, 0)), n_pal)
            elif self.kind == "rgb":
                q = np.rint(np.clip(np.abs(v), 0, 1) * (RGB_STEPS - 1)).astype(np.int64)  # (n, 3)
                ok = np.isfinite(v).all(axis=1)
                idx = np.where(ok, (q[:, 0] * RGB_STEPS + q[:, 1]) * RGB_STEPS + q[:, 2], n_pal)
            else:
                u = self._unit(v)
                idx = np.where(np.isfinite(u), np.minimum((np.nan_to_num(u) * LEVELS).astype(np.int64), LEVELS - 1), n_pal)
        return idx.astype(np.int64)

    def point_levels(self) -> np.ndarray:
        """``(n,)`` index of each point's colour in :attr:`palette`."""
        return self._levels_of(self.values)

    def point_rgba(self) -> np.ndarray:
        """``(n, 4)`` uint8 colour of each point (alpha :data:`POINT_ALPHA`, grey fainter)."""
        pal = self.palette.copy()
        pal[:-1, 3] = POINT_ALPHA
        return pal[self.point_levels()]

    def bin_rgb(self, bins_of_points: np.ndarray, n_bins: int) -> np.ndarray:
        """``(n_bins, 4)`` uint8 colour of each bin from its points' values (mean, circular mean or
        the most frequent category; grey where no point has a value). ``bins_of_points (n,)``."""
        ok = ~self.missing
        b, v = bins_of_points[ok], self.values[ok]
        count = np.bincount(b, minlength=n_bins)
        empty = count == 0
        safe = np.maximum(count, 1)
        if self.kind == "categorical":
            cat = self._levels_of(v)
            m = len(self.categories)
            votes = np.bincount(b * m + cat, minlength=n_bins * m).reshape(n_bins, m)
            mean = self.categories[np.argmax(votes, axis=1)].astype(np.float64)
        elif self.kind == "rgb":
            mean = np.stack([np.bincount(b, np.abs(v[:, c]), minlength=n_bins) / safe for c in range(3)], axis=1)
        elif self.kind == "cyclic":
            ang = 2 * np.pi * self._unit(v)
            s, c = np.bincount(b, np.sin(ang), minlength=n_bins), np.bincount(b, np.cos(ang), minlength=n_bins)
            mean = self.lo + np.mod(np.arctan2(s, c), 2 * np.pi) / (2 * np.pi) * (self.hi - self.lo)
        else:
            mean = np.bincount(b, np.clip(v, self.lo, self.hi), minlength=n_bins) / safe
        if mean.ndim == 2:
            mean[empty] = np.nan
        else:
            mean = np.where(empty, np.nan, mean)
        return self.palette[self._levels_of(mean)]

    def describe(self) -> str:
        """One line for the status: the column, its kind and range or number of values."""
        if self.kind == "categorical":
            return f"{self.name}: {len(self.categories)} values"
        if self.kind == "rgb":
            return f"{self.name}: |x|, |y|, |z| as red, green, blue"
        return f"{self.name}: {self.lo:.4g} to {self.hi:.4g}"


def colouring_for(name: str, values: np.ndarray) -> Colouring:
    """The :class:`Colouring` a column gets by default (see the module docstring)."""
    v = np.asarray(values, np.float64)
    if v.ndim == 2:
        if v.shape[1] != 3:
            raise ValueError(f"colour by {name!r}: a 2D column must be (n, 3) directions, got {v.shape}")
        return Colouring(name, v, "rgb")
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        raise ValueError(f"colour by {name!r}: the column has no finite values")
    uniq = np.unique(finite)
    integral = np.all(uniq == np.round(uniq))
    if name.split(":")[-1] in CATEGORICAL or (integral and len(uniq) <= MAX_CATEGORIES and name not in CONTINUOUS
                                              and name not in CYCLIC):
        return Colouring(name, v, "categorical", float(uniq[0]), float(uniq[-1]), uniq)
    if name in CYCLIC:
        return Colouring(name, v, "cyclic", -180.0, 180.0, cmap="CET-C6")
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max()) + 1e-9
    return Colouring(name, v, "continuous", float(lo), float(hi))
