"""The explorer's latent plot: scatter, axes or PCA view, sliders, clicks by mode (volume, path, lasso).

``latent_view`` maps between latents and plot coordinates; ``LatentPlot`` is the part of
``LatentExplorerWidget`` that owns the ``Latent space`` group box and turns clicks and
slider moves into latents (``show_latent`` is the volume preview's). Imports Qt, superqt
and ``._plots``; no library compute.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ._plots import LatentScatter

MODES = ("volume", "path", "lasso")
MODE_TIPS = ("click: show the volume there", "click: add a path point", "click: add a polygon vertex")


def latent_view(latents: np.ndarray, axes: tuple[int, int], use_pca: bool):
    """2D coordinates shown in the plot, and the map back from a plot point to a latent.

    Returns ``(xy (n, 2), to_latent(x, y, base (K,)) -> (K,), from_latent(z (m, K)) -> (m, 2))``.
    With ``use_pca`` the plot shows the first two principal components of ``latents``;
    ``from_latent.explained`` is then their share of the variance ``(2,)``.
    """
    z = np.asarray(latents, np.float64)
    k = z.shape[1]
    if use_pca and k > 2:
        mean = z.mean(axis=0)
        zc = z - mean
        var, vecs = np.linalg.eigh(zc.T @ zc)  # (K,), (K, K) columns: a K x K problem, fast at 10^6 rows
        order = np.argsort(var)[::-1]
        s, basis = np.sqrt(np.maximum(var[order], 0.0)), vecs[:, order[:2]].T  # (2, K) orthonormal rows
        basis = basis * np.where(basis[np.arange(2), np.abs(basis).argmax(1)] < 0, -1.0, 1.0)[:, None]  # fixed sign

        def from_latent(p):
            return (np.atleast_2d(p) - mean) @ basis.T

        def to_latent(x, y, base):
            b = np.asarray(base, np.float64)
            b = b - ((b - mean) @ basis.T) @ basis  # keep what lies off the plotted plane
            return (b + x * basis[0] + y * basis[1]).astype(np.float32)

        from_latent.explained = s[:2] ** 2 / max(float((s**2).sum()), 1e-300)
        return from_latent(z).astype(np.float32), to_latent, from_latent
    i, j = axes if k > 1 else (0, 0)

    def from_latent(p):
        p = np.atleast_2d(p)
        return np.column_stack([p[:, i], p[:, j] if k > 1 else np.zeros(len(p))])

    def to_latent(x, y, base):
        out = np.array(base, np.float32, copy=True)
        out[i] = x
        if k > 1:
            out[j] = y
        return out

    return from_latent(z).astype(np.float32), to_latent, from_latent


def hbox_row(*widgets) -> QWidget:
    """The widgets side by side in one borderless row (a form row or a box line)."""
    row = QWidget()
    hl = QHBoxLayout(row)
    hl.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        hl.addWidget(w)
    return row


class LatentPlot:
    """Mixin of ``LatentExplorerWidget``: the scatter, its axes, the sliders and the click modes.

    Uses the host's ``latents``, ``z``, ``path``, ``polygon``, ``show_latent``,
    ``open_3d_view`` and ``traverse_combo``; sets ``_xy``, ``_to_latent``, ``_from_latent`` and ``_sliders``.
    """

    def _build_latent_box(self, napari_viewer) -> QGroupBox:
        box = QGroupBox("Latent space")
        vl = QVBoxLayout(box)
        self.axis_x, self.axis_y, self.pca_check = QComboBox(), QComboBox(), QCheckBox("PCA")
        self.axis_x.currentIndexChanged.connect(self._redraw)
        self.axis_y.currentIndexChanged.connect(self._redraw)
        self.pca_check.toggled.connect(self._redraw)
        self.view3d = None  # _latent3d.Latent3DView once opened
        self.view3d_btn = QPushButton("3D…")
        self.view3d_btn.setToolTip("the latents in 3D in a viewer of their own, with a box region to select (K >= 3)")
        self.view3d_btn.clicked.connect(lambda: self.open_3d_view())
        self.view3d_btn.setEnabled(False)
        vl.addWidget(hbox_row(QLabel("x"), self.axis_x, QLabel("y"), self.axis_y, self.pca_check, self.view3d_btn))
        self._mode_group = QButtonGroup(self)
        buttons = []
        for i, (name, tip) in enumerate(zip(MODES, MODE_TIPS)):
            rb = QRadioButton(name)
            rb.setToolTip(tip)
            rb.setChecked(i == 0)
            self._mode_group.addButton(rb, i)
            buttons.append(rb)
        clear = QPushButton("Clear")
        clear.clicked.connect(self.clear_path)
        vl.addWidget(hbox_row(*buttons, clear))
        self.plot = LatentScatter("latents", "z0", "z1", viewer=napari_viewer)
        self.plot.setMinimumHeight(260)
        self.plot.clicked.connect(self.click)
        vl.addWidget(self.plot)
        self.slider_box = QWidget()
        self.slider_form = QFormLayout(self.slider_box)
        vl.addWidget(self.slider_box)
        return box

    @property
    def mode(self) -> str:
        return MODES[self._mode_group.checkedId()]

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode_group.button(MODES.index(value)).setChecked(True)

    @property
    def axes(self) -> tuple[int, int]:
        return self.axis_x.currentIndex(), self.axis_y.currentIndex()

    @axes.setter
    def axes(self, value: tuple[int, int]) -> None:
        self.axis_x.setCurrentIndex(int(value[0]))
        self.axis_y.setCurrentIndex(int(value[1]))

    use_pca = property(lambda self: self.pca_check.isChecked(), lambda self, v: self.pca_check.setChecked(bool(v)))

    def set_latents(self, latents: np.ndarray) -> None:
        """Show ``latents (n, K)``: axes menus, sliders (±3 std of each axis), the scatter."""
        z = np.asarray(latents, np.float32)
        if z.ndim != 2 or z.shape[0] == 0:
            raise ValueError(f"latents must be (n, K) with n > 0, got {z.shape}")
        self.latents = z
        k = z.shape[1]
        for combo in (self.axis_x, self.axis_y):
            combo.blockSignals(True)  # one redraw at the end, not one per item
            combo.clear()
            combo.addItems([f"z{i}" for i in range(k)])
            combo.blockSignals(False)
        self.axis_y.setCurrentIndex(min(1, k - 1))
        self.pca_check.setEnabled(k > 2)
        self.view3d_btn.setEnabled(k > 2)
        self.traverse_combo.clear()
        self.traverse_combo.addItems(["drawn path"] + [f"axis z{i}" for i in range(k)])
        self._make_sliders(z)
        self.z = z.mean(axis=0).astype(np.float32)
        self._redraw()

    def _make_sliders(self, z: np.ndarray) -> None:
        while self.slider_form.rowCount():
            self.slider_form.removeRow(0)
        self._sliders = []
        std = z.std(axis=0) + 1e-6
        mean = z.mean(axis=0)
        for i in range(z.shape[1]):
            s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            s.setRange(float(mean[i] - 3 * std[i]), float(mean[i] + 3 * std[i]))
            s.setValue(float(mean[i]))
            s.valueChanged.connect(lambda v, i=i: self.set_axis_value(i, v))
            self.slider_form.addRow(f"z{i}", s)
            self._sliders.append(s)

    def _sync_sliders(self) -> None:
        """Sliders to the current ``z``, without their signals (which would render again)."""
        for i, s in enumerate(self._sliders):
            if abs(s.value() - float(self.z[i])) > 1e-6:
                s.blockSignals(True)
                s.setValue(float(self.z[i]))
                s.blockSignals(False)

    def _redraw(self, *_):
        if self.latents is None:
            return
        self._xy, self._to_latent, self._from_latent = latent_view(self.latents, self.axes, self.use_pca)
        colouring = getattr(self, "colouring", None)  # _explore_colour's, when the widget has that box
        if colouring is not None and len(colouring.values) != len(self._xy):
            colouring = None  # of the run open before: its box catches up once the new run's table is read
        self.plot.set_points(self._xy, colouring)
        self.plot.set_highlight(self._xy[self.selection] if self.selection is not None else np.zeros((0, 2)))
        if self.use_pca and self.latents.shape[1] > 2:
            names = tuple(f"PC{i + 1} ({100 * v:.0f} % of the variance)" for i, v in enumerate(self._from_latent.explained))
        else:
            names = tuple(f"z{a}" for a in self.axes)
        self.plot.getPlotItem().setLabel("bottom", names[0])
        self.plot.getPlotItem().setLabel("left", names[1])
        self._draw_overlays()

    def _draw_overlays(self):
        if self._from_latent is None:
            return
        self.plot.set_path(self._from_latent(np.array(self.path)) if self.path else np.zeros((0, 2)))
        self.plot.set_polygon(np.array(self.polygon) if self.polygon else np.zeros((0, 2)))
        if self.z is not None:
            x, y = self._from_latent(self.z)[0]
            self.plot.set_cursor(x, y)

    def click(self, x: float, y: float) -> None:
        """A click on the scatter at plot coordinates ``(x, y)``, handled by the current mode."""
        if self.latents is None:
            return
        z = self._to_latent(x, y, self.z)
        if self.mode == "lasso":
            self.polygon.append((float(x), float(y)))
        elif self.mode == "path":
            self.path.append(z)
        else:
            self.show_latent(z)
        self._draw_overlays()

    def set_axis_value(self, k: int, value: float) -> None:
        """A slider moved: latent axis ``k`` to ``value``; the volume follows (throttled)."""
        if self.z is None:
            return
        z = self.z.copy()
        z[k] = value
        self.show_latent(z, refine=False)
        self._draw_overlays()

    def set_selection(self, indices, source: str = "") -> np.ndarray:
        """Select particles by index (``None`` clears): stored in ``selection``, marked on the
        scatter, counted in the status line and sent by ``selection_changed``. ``source`` says
        what chose them ("lasso", "cluster 2", "residual > 1.3") in that line."""
        if indices is None:
            self.selection = None
            self.plot.set_highlight(np.zeros((0, 2)))
            self.status_label.setText("")
        else:
            idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
            n = 0 if self.latents is None else len(self.latents)
            if len(idx) and (idx[0] < 0 or idx[-1] >= n):
                raise ValueError(f"particle indices must lie in [0, {n}), got {idx[0]}..{idx[-1]}")
            self.selection = idx
            if self._xy is not None:
                self.plot.set_highlight(self._xy[idx])
            by = f" by {source}" if source else ""
            self.status_label.setText(f"{len(idx):,} particles selected{by}")
        self.selection_changed.emit(self.selection)
        return self.selection

    def clear_path(self) -> None:
        self.path = []
        self.polygon = []
        self._draw_overlays()
