"""Side by side: the maps at two latent points, next to each other or overlaid, and their difference.

The part of ``MotionWidget`` that owns the "Side by side" group box. ``compare_job`` renders
both maps in a worker (``RunVolumes.volume`` at the training box with the run's kernel, as
the explorer's refined view) and their difference ``A - B``; the GUI thread puts the three
arrays into layers. Imports Qt and napari notifications only.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QLabel, QPushButton

from ._explore_plot import hbox_row
from ._layer_data import default_iso_threshold

A_LAYER, B_LAYER, DIFF_LAYER = "latent A", "latent B", "A - B"
LAYOUTS = ("side by side", "overlay in two colours")
GAP = 1.15  # side by side: B starts this many box widths to the right of A


def compare_job(run, z_a, z_b) -> dict:
    """The maps at ``z_a`` and ``z_b (K,)``, ``(N, N, N)`` float32 each, their difference and voxel size."""
    a, apix = run.volume(z_a)
    b, _ = run.volume(z_b)
    return {"a": a, "b": b, "difference": a - b, "apix": float(apix), "z_a": np.asarray(z_a), "z_b": np.asarray(z_b)}


def difference_colormap():
    """Pink where ``A - B < 0`` (B denser), green where A is denser, clear near zero: drawn
    translucent, both signs show through each other in 3D."""
    from napari.utils import Colormap

    pink, green = [0.9, 0.2, 0.7], [0.2, 0.8, 0.2]
    return Colormap([pink + [1.0], pink + [0.0], [0.0, 0.0, 0.0, 0.0], green + [0.0], green + [1.0]],
                    controls=[0.0, 0.35, 0.5, 0.65, 1.0], name="flex3d difference")


def _z_text(z) -> str:
    return "not set" if z is None else "(" + ", ".join(f"{v:.2f}" for v in np.ravel(z)) + ")"


class SideBySide:
    """Mixin of ``MotionWidget``: the "Side by side" box.

    State: ``z_a``, ``z_b`` (``(K,)`` or ``None``), ``layout_mode`` (a ``LAYOUTS`` text),
    ``compared`` (``compare_job``'s result). Actions: ``set_a()`` / ``set_b()`` (take the
    explorer's current point), ``compare()``.
    """

    z_a: np.ndarray | None = None
    z_b: np.ndarray | None = None
    compared: dict | None = None

    def _build_compare_box(self) -> QGroupBox:
        box = QGroupBox("Side by side")
        form = QFormLayout(box)
        self.a_label, self.b_label = QLabel(_z_text(None)), QLabel(_z_text(None))
        set_a, set_b = QPushButton("A = current point"), QPushButton("B = current point")
        set_a.clicked.connect(lambda: self.set_a())
        set_b.clicked.connect(lambda: self.set_b())
        form.addRow("A", hbox_row(self.a_label, set_a))
        form.addRow("B", hbox_row(self.b_label, set_b))
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(LAYOUTS)
        form.addRow("layout", self.layout_combo)
        self.compare_btn = QPushButton("Show A, B and A - B")
        self.compare_btn.clicked.connect(self.compare)
        form.addRow(self.compare_btn)
        return box

    layout_mode = property(lambda self: self.layout_combo.currentText(), lambda self, v: self.layout_combo.setCurrentText(v))

    def _current_point(self) -> np.ndarray:
        ex = self._require_run()
        return np.asarray(ex.z if ex.z is not None else ex.latents.mean(0), np.float32).copy()

    def set_a(self, z=None) -> None:
        """Point A: ``z (K,)``, or the explorer's current point."""
        self._set_point("a", z)

    def set_b(self, z=None) -> None:
        """Point B: ``z (K,)``, or the explorer's current point."""
        self._set_point("b", z)

    def _set_point(self, which: str, z) -> None:
        try:
            z = self._current_point() if z is None else np.asarray(z, np.float32).ravel()
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        setattr(self, f"z_{which}", z)
        getattr(self, f"{which}_label").setText(_z_text(z))

    def compare(self) -> None:
        """Render A and B (training box) in a worker and show A, B and A - B as three layers."""
        try:
            ex = self._require_run()
            if self.z_a is None or self.z_b is None:
                raise ValueError("set A and B first: move the explorer to a point and press 'A = current point', "
                                 "then another and 'B = current point'")
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        self.status_label.setText("rendering A and B…")
        self._start(compare_job, ex.run, self.z_a, self.z_b, done=self._show_compare)

    def _show_compare(self, result: dict) -> None:
        self.compared = result
        apix, n = result["apix"], result["a"].shape[-1]
        shift = GAP * n * apix  # Å along x (the last world axis)
        side = self.layout_mode == LAYOUTS[0]
        level = default_iso_threshold(result["a"])
        top = float(np.abs(result["difference"]).max()) or 1.0
        specs = [
            (A_LAYER, result["a"], 0.0, dict(rendering="iso", iso_threshold=level,
                                             colormap="gray" if side else "magenta")),
            (B_LAYER, result["b"], shift if side else 0.0, dict(rendering="iso", iso_threshold=level,
                                                               colormap="gray" if side else "green")),
            (DIFF_LAYER, result["difference"], (2 if side else 1) * shift,
             dict(rendering="translucent", colormap=difference_colormap(), contrast_limits=(-top, top))),
        ]
        self.viewer.dims.ndisplay = 3
        for name, data, dx, style in specs:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)  # rendering and colours change with the layout
            self.viewer.add_image(data, name=name, scale=(apix,) * 3, translate=(0.0, 0.0, dx),
                                  blending="translucent" if side or name != B_LAYER else "additive", **style)
            self.viewer.layers[name].metadata.update(apix=apix)
        self.viewer.layers[A_LAYER].metadata["latent"] = result["z_a"].tolist()
        self.viewer.layers[B_LAYER].metadata["latent"] = result["z_b"].tolist()
        self.viewer.reset_view()
        self.status_label.setText(f"A {_z_text(result['z_a'])}, B {_z_text(result['z_b'])}; |A - B| up to {top:.3g} "
                                  f"(green: A denser, pink: B denser)")
