"""Plot widgets (pyqtgraph) sharing one napari-themed base; subclasses only draw.

Imports pyqtgraph, Qt and napari's theme; no library code.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from qtpy.QtCore import Signal

HIGHLIGHT_MAX = 5_000  # selected points marked at most (a random subset of a larger selection)
DENSITY_ABOVE = 50_000  # points: above this the scatter is drawn as a 2D histogram
POINT_GROUPS = 32  # colours of a continuous map in the point view (one pyqtgraph item each, ~2 ms apiece)
PALETTE = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"]


def _theme_colours(viewer) -> tuple[str, str]:
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme if viewer is not None else "dark")
        return theme.canvas.as_hex(), theme.text.as_hex()
    except Exception:
        return "#262930", "#f0f1f2"


class ThemedPlot(pg.PlotWidget):
    """A pyqtgraph plot coloured like the napari theme, with a title and axis labels."""

    def __init__(self, title: str = "", x_label: str = "", y_label: str = "", viewer=None, parent=None):
        background, foreground = _theme_colours(viewer)
        super().__init__(parent=parent, background=background)
        self._fg = foreground
        self.set_title(title)
        item = self.getPlotItem()
        for side, text in (("bottom", x_label), ("left", y_label)):
            axis = item.getAxis(side)
            axis.setPen(foreground)
            axis.setTextPen(foreground)
            if text:
                axis.setLabel(text, color=foreground)
        item.showGrid(x=True, y=True, alpha=0.2)
        self.setMinimumHeight(150)

    def set_title(self, title: str) -> None:
        """A new title in the theme's colour and size (``setTitle`` alone falls back to pyqtgraph's)."""
        self.getPlotItem().setTitle(title, color=self._fg, size="9pt")


class CurvePlot(ThemedPlot):
    """Named line curves, each replaced or extended as new values arrive."""

    def __init__(self, *args, log_y: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._curves: dict[str, pg.PlotDataItem] = {}
        self._data: dict[str, tuple[list, list]] = {}
        self.getPlotItem().addLegend(offset=(-5, 5), labelTextColor=self._fg)
        if log_y:
            self.getPlotItem().setLogMode(y=True)

    def _curve(self, name: str) -> pg.PlotDataItem:
        if name not in self._curves:
            colour = PALETTE[len(self._curves) % len(PALETTE)]
            self._curves[name] = self.getPlotItem().plot([], [], pen=pg.mkPen(colour, width=2), name=name)
            self._data[name] = ([], [])
        return self._curves[name]

    def append(self, name: str, x: float, y: float) -> None:
        curve = self._curve(name)
        xs, ys = self._data[name]
        xs.append(float(x))
        ys.append(float(y))
        curve.setData(xs, ys)

    def set_curve(self, name: str, x, y) -> None:
        curve = self._curve(name)
        self._data[name] = (list(np.asarray(x, float)), list(np.asarray(y, float)))
        curve.setData(*self._data[name])

    def data(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = self._data.get(name, ([], []))
        return np.asarray(xs), np.asarray(ys)

    def clear_curves(self) -> None:
        for curve in self._curves.values():
            self.getPlotItem().removeItem(curve)
        self.getPlotItem().legend.clear()
        self._curves.clear()
        self._data.clear()


class ImagePanel(pg.GraphicsLayoutWidget):
    """A still greyscale picture in an aspect-locked, y-down view: what ``pg.ImageView`` shows with
    its histogram and buttons hidden, without building them (``ImageView``'s colour-map menu lists
    matplotlib's maps, importing ``matplotlib.pyplot``: seconds of a widget's start-up)."""

    def __init__(self, parent=None):
        super().__init__(parent=parent)
        self.view = self.addViewBox(lockAspect=True, invertY=True)
        self.image_item = pg.ImageItem()
        self.view.addItem(self.image_item)

    def show_image(self, image: np.ndarray) -> None:
        """Show ``image`` (x along axis 0, as ``ImageView.setImage`` takes it) on its own min-max grey scale."""
        self.image_item.setImage(image, autoLevels=True)
        self.view.autoRange()

    def clear_image(self) -> None:
        self.image_item.clear()


def density_extent(xy: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of the density view of ``xy (n, 2)``: the points' range padded by 2 %."""
    x0, y0 = np.nanmin(xy, axis=0)
    x1, y1 = np.nanmax(xy, axis=0)
    pad_x, pad_y = max(x1 - x0, 1e-6) * 0.02, max(y1 - y0, 1e-6) * 0.02
    return (float(x0 - pad_x), float(x1 + pad_x), float(y0 - pad_y), float(y1 + pad_y))


def density_image(xy: np.ndarray, bins: int = 256) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """2D histogram ``(bins, bins)`` of ``xy (n, 2)`` (log-scaled counts) and its extent (x0, x1, y0, y1)."""
    extent = density_extent(xy)
    hist, _, _ = np.histogram2d(xy[:, 0], xy[:, 1], bins=bins, range=[extent[:2], extent[2:]])
    return np.log1p(hist).astype(np.float32), extent


def coloured_density_image(xy: np.ndarray, colouring, bins: int = 256):
    """``(bins, bins, 4)`` uint8 image of ``xy (n, 2)``: each bin in ``colouring``'s colour of its
    points (``Colouring.bin_rgb``: mean value, or most frequent category), opaque in proportion to
    its log count, empty bins transparent; and the extent (x0, x1, y0, y1)."""
    from ._colouring import bin_index

    extent = density_extent(xy)
    b = bin_index(xy, extent, bins)
    count = np.bincount(b, minlength=bins * bins)
    rgba = colouring.bin_rgb(b, bins * bins)  # (bins * bins, 4)
    logc = np.log1p(count)
    alpha = np.where(count > 0, 70 + 185 * logc / max(float(logc.max()), 1e-12), 0)
    rgba[:, 3] = alpha.astype(np.uint8)
    return rgba.reshape(bins, bins, 4), extent


class LatentScatter(ThemedPlot):
    """Latent points in 2D: a scatter for few points, a density image for many.

    Overlays: a drawn path (``set_path``), a polygon being drawn (``set_polygon``) and a
    cursor marking the current latent (``set_cursor``). ``clicked`` carries the data
    coordinates of a left click.
    """

    clicked = Signal(float, float)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        item = self.getPlotItem()
        self._default_brush = pg.mkBrush(79, 195, 247, 120)
        self.scatter = pg.ScatterPlotItem(size=4, pen=None, brush=self._default_brush, pxMode=True)
        self.density = pg.ImageItem()
        self.density.setColorMap(pg.colormap.get("viridis"))
        self.path_item = pg.PlotDataItem([], [], pen=pg.mkPen("#ffb74d", width=2), symbol="o", symbolSize=7,
                                         symbolBrush="#ffb74d")
        self.polygon_item = pg.PlotDataItem([], [], pen=pg.mkPen("#e57373", width=2, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.cursor = pg.ScatterPlotItem(size=16, pen=pg.mkPen("w", width=2), brush=pg.mkBrush("#e53935"), symbol="+")
        self.highlight = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush(229, 115, 115, 200), pxMode=True)
        for it in (self.density, self.scatter, self.highlight, self.path_item, self.polygon_item, self.cursor):
            item.addItem(it)
        self.density.setZValue(-10)
        self._groups: list[pg.ScatterPlotItem] = []  # coloured points, one item per colour
        self.point_levels = self.point_palette = None
        self.colour_density = pg.ImageItem()
        item.addItem(self.colour_density)
        self.colour_density.setZValue(-9)
        self.mode = "empty"
        self.scene().sigMouseClicked.connect(self._on_scene_click)

    def set_points(self, xy: np.ndarray, colouring=None) -> None:
        """Show ``xy (n, 2)``: a scatter up to ``DENSITY_ABOVE`` points, a density image above.

        ``colouring`` (a ``_colouring.Colouring`` of the same ``n`` points) colours each point,
        or each density bin by its points' mean value; ``None``: one colour, density in viridis.
        """
        xy = np.asarray(xy, dtype=np.float32)
        if colouring is not None and len(colouring.values) != len(xy):
            raise ValueError(f"colouring {colouring.name!r} has {len(colouring.values)} values for {len(xy)} points")
        if len(xy) > DENSITY_ABOVE:
            self.scatter.clear()
            self._draw_groups(None, None, None)
            if colouring is None:
                img, extent = density_image(xy)
                self.density.setImage(img, autoLevels=True)
                shown, hidden = self.density, self.colour_density
            else:
                img, extent = coloured_density_image(xy, colouring)
                self.colour_density.setImage(img, autoLevels=False, levels=(0, 255))
                shown, hidden = self.colour_density, self.density
            x0, x1, y0, y1 = extent
            shown.setRect(pg.QtCore.QRectF(x0, y0, x1 - x0, y1 - y0))
            shown.show()
            hidden.hide()
            self.mode = "density"
        else:
            self.density.hide()
            self.colour_density.hide()
            if colouring is None:
                self.scatter.setData(pos=xy, brush=self._default_brush)
                self._draw_groups(None, None, None)
            else:
                self.scatter.clear()
                self._draw_groups(xy, colouring.point_levels(), colouring.palette)
            self.mode = "points"
        self.getPlotItem().enableAutoRange()

    def _draw_groups(self, xy, levels, palette) -> None:
        """Coloured points as one scatter item per colour (``levels (n,)`` into ``palette (m, 4)``;
        the last colour, missing values, drawn first, under the rest). pyqtgraph styles a point
        with its own brush in Python, point by point (about 10 µs each); a group shares one.
        A continuous map is drawn in :data:`POINT_GROUPS` steps. Higher colours are drawn over
        lower ones; ``None`` clears."""
        used = 0
        if xy is not None:
            if len(palette) - 1 > POINT_GROUPS:  # a continuous map: POINT_GROUPS steps of it, ends kept
                step = np.rint(np.linspace(0, len(palette) - 2, POINT_GROUPS)).astype(np.int64)
                missing = levels == len(palette) - 1
                levels = np.where(missing, POINT_GROUPS, (levels * POINT_GROUPS) // (len(palette) - 1))
                palette = np.vstack([palette[step], palette[-1:]])
            m = len(palette)
            order = np.argsort((levels + 1) % m, kind="stable")  # missing first, then colour by colour
            counts = np.bincount(levels, minlength=m)
            starts = np.concatenate([[0], np.cumsum(counts[np.r_[m - 1, : m - 1]])])
            self.point_levels, self.point_palette = levels, palette
            for g, level in enumerate(np.r_[m - 1, : m - 1]):
                a, b = starts[g], starts[g + 1]
                if b == a:
                    continue
                if used == len(self._groups):
                    item = pg.ScatterPlotItem(size=4, pen=None, pxMode=True)
                    self.getPlotItem().addItem(item)
                    item.setZValue(-1)
                    self._groups.append(item)
                alpha = palette[level][3] if level == m - 1 else 180
                self._groups[used].setData(pos=xy[order[a:b]], brush=pg.mkBrush(*map(int, palette[level][:3]), int(alpha)))
                self._groups[used].show()
                used += 1
        else:
            self.point_levels = self.point_palette = None
        for item in self._groups[used:]:
            item.clear()

    def set_highlight(self, xy) -> None:
        """Mark ``xy (m, 2)`` (the selected particles) over the scatter or density; empty clears."""
        xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
        if len(xy) > HIGHLIGHT_MAX:  # a random subset shows where they are (pyqtgraph's spots cost ~20 µs each)
            xy = xy[np.random.default_rng(0).choice(len(xy), HIGHLIGHT_MAX, replace=False)]
        self.highlight.setData(pos=xy)

    def set_path(self, xy) -> None:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        self.path_item.setData(xy[:, 0], xy[:, 1])

    def set_polygon(self, xy) -> None:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        if len(xy) > 2:
            xy = np.vstack([xy, xy[:1]])
        self.polygon_item.setData(xy[:, 0], xy[:, 1])

    def set_cursor(self, x: float | None, y: float | None = None) -> None:
        if x is None:
            self.cursor.clear()
        else:
            self.cursor.setData([x], [y])

    def _on_scene_click(self, event) -> None:
        if event.button() != pg.QtCore.Qt.MouseButton.LeftButton:
            return
        vb = self.getPlotItem().vb
        if not vb.sceneBoundingRect().contains(event.scenePos()):
            return
        p = vb.mapSceneToView(event.scenePos())
        self.clicked.emit(float(p.x()), float(p.y()))
