"""The latents in 3D: a points layer in a viewer of its own, and a box region that becomes the selection.

``Latent3DView`` is docked in that viewer. It shows three latent axes (or the first
three principal axes) of the explorer's latents as a Points layer coloured as the
explorer's scatter, the box region chosen by one range slider per axis as 12 edges, and
the explorer's selection in red. "Select box" sends the particles inside the box, "Select
picked" those picked with the Points layer's own select tool, to
``LatentExplorerWidget.set_selection(indices, "3D view")``. Above :data:`MAX_SHOWN`
particles a fixed random subset is drawn (the box still selects among all of them).
Imports Qt, superqt and napari.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget
from superqt import QLabeledDoubleRangeSlider

from ._explore_plot import hbox_row

__all__ = ["MAX_SHOWN", "Latent3DView", "latent_coords_3d", "box_edges"]

MAX_SHOWN = 100_000  # points drawn in 3D (a random subset above)
LAYER, REGION_LAYER, SELECTED_LAYER = "latents 3D", "box region", "selected"


def latent_coords_3d(latents: np.ndarray, axes: tuple[int, int, int], use_pca: bool) -> tuple[np.ndarray, list[str]]:
    """``(coords (n, 3), names)``: three latent axes, or with ``use_pca`` the first three
    principal components (K >= 3), as the x, y, z of the 3D view."""
    z = np.asarray(latents, np.float64)
    if z.ndim != 2 or z.shape[1] < 3:
        raise ValueError(f"a 3D view needs K >= 3 latent dimensions, got latents of shape {z.shape}")
    if use_pca:
        zc = z - z.mean(0)
        _, s, vt = np.linalg.svd(zc, full_matrices=False)
        ratio = s**2 / max(float((s**2).sum()), 1e-300)
        return zc @ vt[:3].T, [f"PC{i + 1} ({100 * ratio[i]:.0f} %)" for i in range(3)]
    return z[:, list(axes)], [f"z{a}" for a in axes]


def box_edges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 12 edges of the box ``[lo, hi]`` (3 coordinates each) as napari vectors ``(12, 2, 3)``
    (start, direction)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    edges = []
    for d in range(3):
        o1, o2 = [a for a in range(3) if a != d]
        for c1 in (lo[o1], hi[o1]):
            for c2 in (lo[o2], hi[o2]):
                start = lo.copy()
                start[o1], start[o2] = c1, c2
                step = np.zeros(3)
                step[d] = hi[d] - lo[d]
                edges.append([start, step])
    return np.array(edges)


def _to_layer(xyz: np.ndarray) -> np.ndarray:
    """x, y, z of the view to napari's (z, y, x) data order."""
    return np.asarray(xyz)[..., ::-1]


class Latent3DView(QWidget):
    """Dock widget of the 3D latent viewer (see the module docstring).

    State: ``axes`` (three latent indices), ``use_pca``, ``coords (n, 3)``, ``shown``
    (indices of the particles drawn), ``box`` (``(lo (3,), hi (3,))``).
    """

    def __init__(self, explorer, viewer, parent=None):
        super().__init__(parent)
        self.ex = explorer
        self.viewer = viewer
        self.coords = np.zeros((0, 3))
        self.names: list[str] = []
        k = explorer.latents.shape[1]
        n = len(explorer.latents)
        self.shown = np.arange(n) if n <= MAX_SHOWN else np.sort(
            np.random.default_rng(0).choice(n, MAX_SHOWN, replace=False))
        layout = QVBoxLayout(self)
        self.axis_combos = []
        for i in range(3):
            combo = QComboBox()
            combo.addItems([f"z{a}" for a in range(k)])
            combo.setCurrentIndex(i)
            combo.currentIndexChanged.connect(self._rebuild)
            self.axis_combos.append(combo)
        self.pca_check = QCheckBox("PCA")
        self.pca_check.toggled.connect(self._rebuild)
        layout.addWidget(hbox_row(QLabel("x"), self.axis_combos[0], QLabel("y"), self.axis_combos[1], QLabel("z"),
                                  self.axis_combos[2], self.pca_check))
        self.range_form = QFormLayout()
        self.sliders = []
        for i in range(3):
            s = QLabeledDoubleRangeSlider(Qt.Orientation.Horizontal)
            s.valueChanged.connect(self._box_moved)
            self.range_form.addRow("xyz"[i], s)
            self.sliders.append(s)
        layout.addLayout(self.range_form)
        select_box = QPushButton("Select box")
        select_box.setToolTip("select the particles inside the box (all of them, drawn or not)")
        select_box.clicked.connect(self.select_box)
        select_picked = QPushButton("Select picked")
        select_picked.setToolTip("select the points picked with the layer's select tool (click, shift-click)")
        select_picked.clicked.connect(self.select_picked)
        layout.addWidget(hbox_row(select_box, select_picked))
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)
        layout.addStretch(1)
        viewer.dims.ndisplay = 3
        explorer.selection_changed.connect(self._show_selection)
        self._rebuild()

    # ------------------------------------------------------------------ state
    @property
    def axes(self) -> tuple[int, int, int]:
        return tuple(c.currentIndex() for c in self.axis_combos)

    @axes.setter
    def axes(self, value) -> None:
        for combo, a in zip(self.axis_combos, value):
            combo.blockSignals(True)
            combo.setCurrentIndex(int(a))
            combo.blockSignals(False)
        self._rebuild()

    use_pca = property(lambda self: self.pca_check.isChecked(), lambda self, v: self.pca_check.setChecked(bool(v)))

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        values = np.array([s.value() for s in self.sliders], np.float64)  # (3, 2)
        return values[:, 0], values[:, 1]

    @box.setter
    def box(self, value) -> None:
        lo, hi = value
        for s, a, b in zip(self.sliders, lo, hi):
            s.setValue((float(a), float(b)))

    def box_indices(self) -> np.ndarray:
        """Indices of all particles inside the box (bounds included)."""
        lo, hi = self.box
        return np.flatnonzero(((self.coords >= lo) & (self.coords <= hi)).all(axis=1))

    # ------------------------------------------------------------------ drawing
    def _rebuild(self, *_) -> None:
        for combo in self.axis_combos:
            combo.setEnabled(not self.use_pca)
        self.coords, self.names = latent_coords_3d(self.ex.latents, self.axes, self.use_pca)
        lo, hi = self.coords.min(0), self.coords.max(0)
        for i, s in enumerate(self.sliders):
            s.blockSignals(True)
            s.setRange(float(lo[i]), float(hi[i]))
            s.setValue((float(lo[i]), float(hi[i])))
            s.blockSignals(False)
            self.range_form.labelForField(s).setText(self.names[i])
        size = 0.015 * float(np.max(hi - lo) or 1.0)
        data = _to_layer(self.coords[self.shown])
        if LAYER in self.viewer.layers:
            layer = self.viewer.layers[LAYER]
            layer.data = data
            layer.size = size
        else:
            self.viewer.add_points(data, name=LAYER, size=size, border_width=0, face_color="#4fc3f7")
        self.viewer.dims.axis_labels = tuple(self.names[::-1])
        self.refresh_colours()
        self._box_moved()
        self._show_selection(self.ex.selection)
        self.viewer.reset_view()
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 moved the camera there
        camera = scene.camera if scene is not None else self.viewer.camera
        camera.angles = (0.0, -30.0, 60.0)  # oblique: all three axes visible at once
        camera.zoom *= 0.65  # the box's corners stay in the picture when turned

    def refresh_colours(self) -> None:
        """The points in the explorer's current colouring (one colour without one)."""
        layer = self.viewer.layers[LAYER]
        c = getattr(self.ex, "colouring", None)
        if c is None or len(c.values) != len(self.coords):
            layer.face_color = "#4fc3f7"
        else:
            layer.face_color = c.point_rgba()[self.shown] / 255.0

    def _box_moved(self, *_) -> None:
        if not self.sliders or len(self.coords) == 0:
            return
        lo, hi = self.box
        edges = _to_layer(box_edges(lo, hi))
        if REGION_LAYER in self.viewer.layers:
            self.viewer.layers[REGION_LAYER].data = edges
        else:
            self.viewer.add_vectors(edges, name=REGION_LAYER, edge_color="#ffb74d", edge_width=0.01 * float(
                np.max(hi - lo) or 1.0), vector_style="line")
        self.info_label.setText(f"{len(self.box_indices()):,} of {len(self.coords):,} particles inside the box")

    def _show_selection(self, indices) -> None:
        idx = np.zeros(0, np.int64) if indices is None else np.asarray(indices)
        idx = idx[np.isin(idx, self.shown)] if len(self.shown) < len(self.coords) else idx
        data = _to_layer(self.coords[idx]) if len(idx) else np.zeros((0, 3))
        if SELECTED_LAYER in self.viewer.layers:
            self.viewer.layers[SELECTED_LAYER].data = data
        else:
            size = 0.025 * float(np.ptp(self.coords, axis=0).max() or 1.0)
            self.viewer.add_points(data, name=SELECTED_LAYER, size=size, border_width=0, face_color="#e53935",
                                   opacity=0.9)

    # ------------------------------------------------------------------ selection
    def select_box(self) -> np.ndarray:
        """The particles inside the box become the explorer's selection."""
        return self.ex.set_selection(self.box_indices(), "3D view")

    def select_picked(self) -> np.ndarray:
        """The points picked in the 3D viewer's latents layer become the explorer's selection."""
        picked = np.array(sorted(self.viewer.layers[LAYER].selected_data), np.int64)
        return self.ex.set_selection(self.shown[picked] if len(picked) else picked, "3D view")


def open_latent_3d(explorer, viewer=None) -> Latent3DView:
    """A 3D view of ``explorer``'s latents in ``viewer`` (default: a new napari viewer), docked there."""
    if explorer.latents is None or explorer.latents.shape[1] < 3:
        raise ValueError("a 3D view needs a run with K >= 3 latent dimensions")
    if viewer is None:
        import napari

        viewer = napari.Viewer(title="napari-flex3d: latents in 3D", ndisplay=3)
    view = Latent3DView(explorer, viewer)
    viewer.window.add_dock_widget(view, name="Latent region", area="right")
    return view
