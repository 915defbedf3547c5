"""Reconstruct: motion-corrected half maps of a trained run, flex and rigid FSC curves.

Wired to ``napari_flex3d.reconstruct.halfmaps``; when that module is absent the widget
says so and its button stays disabled (no result is ever made up here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFormLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ._library import available, piece
from ._plots import CurvePlot
from ._session import session_for
from ._workers import start_worker

MODULE = "reconstruct.halfmaps"
FUNCTION = "reconstruct_run"


class ReconstructWidget(QWidget):
    """Run the half-map reconstruction of a training run and show its maps and FSC curves."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.result = None
        self.missing = available(MODULE, FUNCTION)

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self._run_edit = QLineEdit(str(self.session.run_dir or ""))
        self._out_edit = QLineEdit()
        form.addRow("run folder", self._run_edit)
        form.addRow("output folder", self._out_edit)
        layout.addLayout(form)
        self.run_btn = QPushButton("Reconstruct half maps")
        self.run_btn.clicked.connect(self.reconstruct)
        layout.addWidget(self.run_btn)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.fsc_plot = CurvePlot("half-map FSC", "resolution (1/Å)", "FSC", viewer=napari_viewer)
        self.fsc_plot.getPlotItem().setYRange(-0.1, 1.05)
        layout.addWidget(self.fsc_plot)
        if self.missing:
            self.run_btn.setEnabled(False)
            self.status_label.setText(
                f"High-resolution reconstruction is not available in this version: {self.missing}."
            )
        self.session.changed.connect(self._on_session)

    run_dir = property(lambda self: self._run_edit.text(), lambda self, v: self._run_edit.setText(str(v)))
    out_dir = property(lambda self: self._out_edit.text(), lambda self, v: self._out_edit.setText(str(v)))

    @property
    def available(self) -> bool:
        return self.missing is None

    def _on_session(self, name: str) -> None:
        if name == "run_dir" and not self.run_dir and self.session.run_dir is not None:
            self.run_dir = str(self.session.run_dir)

    def reconstruct(self) -> None:
        """Solve the flex and rigid half maps in a worker; plot their FSC; add the maps as layers."""
        if not self.available:
            show_error(f"napari-flex3d: {self.missing}")
            return
        if not self.run_dir:
            show_error("napari-flex3d: choose a training run folder")
            return
        fn = piece(MODULE, FUNCTION)
        out = self.out_dir or str(Path(self.run_dir) / "reconstruct")
        self.status_label.setText("reconstructing…")
        self.run_btn.setEnabled(False)
        self.worker = start_worker(fn, self.run_dir, out, returned=self._on_result, finished=self._on_finished)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_btn.setEnabled(self.available)

    def _on_result(self, result) -> None:
        self.result = result
        for name, curve in (("flex", getattr(result, "fsc_flex", None)), ("rigid", getattr(result, "fsc_rigid", None))):
            if curve is not None:
                self.fsc_plot.set_curve(name, result.frequencies_per_a, np.asarray(curve))
        for name, path in getattr(result, "maps", {}).items():
            m = piece("io.mrc", "read_map")(path)
            self.viewer.add_image(m.data, name=name, scale=(m.apix,) * 3, rendering="iso")
        self.status_label.setText(getattr(result, "summary", lambda: "done")())
