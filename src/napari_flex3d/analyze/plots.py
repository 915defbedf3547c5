"""The report's figures, drawn with matplotlib's Agg backend (no display) and saved as PNG.

Each function takes plain arrays (what :mod:`.covariates`, :mod:`.landscape`,
:mod:`.residuals` and :mod:`.compare` return) and a path, and returns the path. Large
sets are drawn as a seeded random sample of at most ``MAX_POINTS`` points, so a figure of
a million particles takes as long as one of 20,000. Imports NumPy and matplotlib only.
"""

from __future__ import annotations

from ..io.atomic import atomic_path

from pathlib import Path

import numpy as np

__all__ = ["MAX_POINTS", "coloured_scatters", "density_figure", "histogram_figure", "bic_figure", "matrix_figure",
           "profile_figure"]

MAX_POINTS = 20000


def _figure(n_panels: int, size: float = 3.2, cols: int = 4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cols = max(1, min(cols, n_panels))
    rows = int(np.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.axis("off")
    return fig, axes.ravel()


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    # fixed margins: tight_layout measured every label's extent and took most of a figure's time
    fig.subplots_adjust(left=0.08, right=0.95, bottom=0.12, top=0.92, wspace=0.5, hspace=0.5)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=72, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _sample(n: int, seed: int = 0) -> np.ndarray:
    return np.arange(n) if n <= MAX_POINTS else np.sort(np.random.default_rng(seed).choice(n, MAX_POINTS, replace=False))


def coloured_scatters(xy: np.ndarray, colours: dict, path, xlabel: str = "z1", ylabel: str = "z2") -> Path:
    """One scatter of ``xy (n, 2)`` per ``{name: values (n,)}``, coloured by the values (5-95 % range)."""
    fig, axes = _figure(len(colours))
    keep = _sample(len(xy))
    for ax, (name, values) in zip(axes, colours.items()):
        v = np.asarray(values, np.float64)[keep]
        lo, hi = np.nanpercentile(v, [5, 95]) if np.isfinite(v).any() else (0, 1)
        art = ax.scatter(xy[keep, 0], xy[keep, 1], c=v, s=2, cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1,
                         rasterized=True, linewidths=0)
        fig.colorbar(art, ax=ax, shrink=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    return _save(fig, path)


def density_figure(panels: list, path, centres: list | None = None) -> Path:
    """Log-density images with contours: ``panels`` of ``(xlabel, ylabel, log density (b, b), x edges, y edges)``;
    ``centres``: per panel ``(c, 2)`` cluster centres to mark and number (or None)."""
    fig, axes = _figure(len(panels), size=3.6, cols=3)
    for i, (ax, (xl, yl, dens, xe, ye)) in enumerate(zip(axes, panels)):
        extent = (xe[0], xe[-1], ye[0], ye[-1])
        art = ax.imshow(dens, origin="lower", extent=extent, aspect="auto", cmap="magma")
        xc, yc = 0.5 * (xe[1:] + xe[:-1]), 0.5 * (ye[1:] + ye[:-1])
        if dens.max() > dens.min():
            ax.contour(xc, yc, dens, levels=6, colors="w", linewidths=0.5)
        fig.colorbar(art, ax=ax, shrink=0.8, label="log10(1 + count)")
        if centres is not None and centres[i] is not None:
            for j, (cx, cy) in enumerate(centres[i]):
                ax.plot(cx, cy, "c+", ms=10, mew=2)
                ax.annotate(str(j), (cx, cy), color="c", fontsize=9, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
    return _save(fig, path)


def histogram_figure(series: dict, thresholds: dict, path, log: bool = True) -> Path:
    """One histogram per ``{name: values}``, with ``thresholds[name]`` drawn as a red line."""
    fig, axes = _figure(len(series), size=3.6, cols=2)
    for ax, (name, values) in zip(axes, series.items()):
        v = np.asarray(values, np.float64)
        v = v[np.isfinite(v)]
        ax.hist(v, bins=80, color="0.4", log=log)
        if name in thresholds:
            ax.axvline(thresholds[name], color="r", lw=1.5)
            ax.set_title(f"{name}: {int((v > thresholds[name]).sum())} above {thresholds[name]:.3g}", fontsize=9)
        ax.set_xlabel(name, fontsize=8)
    return _save(fig, path)


def bic_figure(bic: np.ndarray, chosen: int, path) -> Path:
    """The Gaussian mixture's BIC against its number of components, the chosen one marked."""
    fig, (ax,) = _figure(1, size=3.6)
    c = np.arange(1, len(bic) + 1)
    ax.plot(c, bic, "o-", color="0.3")
    ax.axvline(chosen, color="r", lw=1)
    ax.set_xlabel("components", fontsize=8)
    ax.set_ylabel("BIC (lower is better)", fontsize=8)
    return _save(fig, path)


def matrix_figure(matrix: np.ndarray, rows: list, cols: list, path, title: str = "", threshold: float | None = None) -> Path:
    """A correlation matrix as a diverging heat map (-1..1) with the values written in; cells
    above ``threshold`` in magnitude are boxed."""
    fig, (ax,) = _figure(1, size=max(3.6, 0.55 * len(cols) + 1.5))
    m = np.asarray(matrix, np.float64)
    art = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(m):
        boxed = threshold is not None and abs(v) > threshold
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, fontweight="bold" if boxed else "normal",
                bbox={"fc": "none", "ec": "k"} if boxed else None)
    ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(art, ax=ax, shrink=0.8)
    return _save(fig, path)


def profile_figure(values_by_axis: np.ndarray, path, ylabel: str) -> Path:
    """Sorted per-vertex (or per-cell) values, one curve per latent axis: how much of the
    molecule moves (or bends) how far."""
    fig, (ax,) = _figure(1, size=3.6)
    for k, v in enumerate(np.asarray(values_by_axis)):
        s = np.sort(v)[::-1]
        ax.plot(np.linspace(0, 100, len(s)), s, label=f"z{k + 1}")
    ax.set_xlabel("% of the mesh", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, path)
