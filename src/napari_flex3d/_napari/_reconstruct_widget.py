"""Reconstruct: motion-corrected half maps of a trained run, flex and rigid FSC curves.

Wired to ``napari_flex3d.reconstruct.halfmaps.reconstruct_run`` (a generator of events:
``ReconstructProgress``, ``HalfMapDone``, ``ReconstructFinished``), run in a thread
worker. ``reconstruct`` (which pulls in torch) is imported in a worker (preloaded when the
widget opens), never in the GUI thread; ``io.mrc`` (numpy only) at the top. The finished
maps are read in the worker too; the GUI thread only puts the arrays into layers, and
only when the canvas can afford the repaint (``_paint_budget``), else on "Show maps".

State: ``run_dir``, ``particles_path`` (default: the run's own ``particles.star``),
``out_dir``, ``iterations``, ``rigid``; ``reconstruct()`` / ``stop()``; ``report`` and
``curves`` (``{"flex": (freq, fsc), "rigid": ...}``) once finished.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..io.mrc import read_map
from ._command import CommandButton
from ._layer_data import default_iso_threshold
from ._paint_budget import paint_budget
from ._plots import CurvePlot
from ._session import session_for
from ._workers import Preloads, WorkerControls, start_worker


def read_fsc_csv(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{curve name: (frequency 1/Å, fsc)}`` from the ``fsc.csv`` a reconstruction writes."""
    table = np.genfromtxt(path, delimiter=",", names=True)
    freq = np.atleast_1d(table["frequency_1_per_a"])
    return {n[len("fsc_"):]: (freq, np.atleast_1d(table[n])) for n in table.dtype.names if n.startswith("fsc_")}


def read_result(out: Path, report: dict) -> dict:
    """What the widget shows of a finished reconstruction, read in the worker: ``{"report",
    "curves", "maps": [(mode, (n, n, n) float32, apix Å, iso level)]}``."""
    csv = out / "fsc.csv"
    maps = []
    for mode in report.get("maps", {}):
        path = out / f"{mode}_map.mrc"
        if path.is_file():
            m = read_map(path)
            data = np.ascontiguousarray(m.data, dtype=np.float32)
            maps.append((mode, data, float(m.apix), default_iso_threshold(data)))
    return {"report": report, "curves": read_fsc_csv(csv) if csv.is_file() else {}, "maps": maps}


class ReconstructWidget(Preloads, WorkerControls, QWidget):
    """Run the half-map reconstruction of a training run and show its maps and FSC curves."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.state = "idle"
        self.report: dict | None = None
        self.curves: dict = {}
        self.error: Exception | None = None
        self._t0 = 0.0
        self.pending_maps: list | None = None  # read maps the canvas could not afford to paint yet
        self.budget = paint_budget(napari_viewer)
        self._schedule_preload("napari_flex3d.reconstruct.halfmaps")

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self._run_edit = QLineEdit(str(self.session.run_dir or ""))
        self._run_b_edit = QLineEdit()
        self._run_b_edit.setPlaceholderText("optional: a run trained with --half-set B (independent half flows)")
        self._particles_edit = QLineEdit()
        self._particles_edit.setPlaceholderText("default: the run's particles.star")
        self._out_edit = QLineEdit()
        self._out_edit.setPlaceholderText("default: <run>/reconstruct")
        self.iter_spin = QSpinBox()
        self.iter_spin.setRange(1, 1000)
        self.iter_spin.setValue(20)
        self.rigid_check = QCheckBox("also the rigid baseline (same solver, zero flow)")
        self.rigid_check.setChecked(True)
        form.addRow("run folder", self._run_edit)
        form.addRow("half B run", self._run_b_edit)
        form.addRow("particles", self._particles_edit)
        form.addRow("output folder", self._out_edit)
        form.addRow("L-BFGS iterations", self.iter_spin)
        form.addRow(self.rigid_check)
        layout.addLayout(form)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.run_btn = QPushButton("Reconstruct half maps")
        self.run_btn.clicked.connect(self.reconstruct)
        self.stop_btn = QPushButton("Stop")
        self.stop_btn.clicked.connect(self.stop)
        self.show_btn = QPushButton("Show maps")
        self.show_btn.setToolTip("add the reconstructed maps as layers (kept back when a 3D repaint would take seconds)")
        self.show_btn.clicked.connect(self.show_maps)
        self.command_btn = CommandButton()
        for b in (self.run_btn, self.stop_btn, self.show_btn, self.command_btn):
            hl.addWidget(b)
        layout.addWidget(row)
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        layout.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.fsc_plot = CurvePlot("half-map FSC", "resolution (1/Å)", "FSC", viewer=napari_viewer)
        self.fsc_plot.getPlotItem().setYRange(-0.1, 1.05)
        self.fsc_plot.getPlotItem().addLine(y=0.143, pen="#888888")
        layout.addWidget(self.fsc_plot)
        self._update_buttons()
        self.session.changed.connect(self._on_session)

    run_dir = property(lambda self: self._run_edit.text(), lambda self, v: self._run_edit.setText(str(v)))
    run_b_dir = property(lambda self: self._run_b_edit.text(), lambda self, v: self._run_b_edit.setText(str(v)))
    particles_path = property(lambda self: self._particles_edit.text(), lambda self, v: self._particles_edit.setText(str(v)))
    out_dir = property(lambda self: self._out_edit.text(), lambda self, v: self._out_edit.setText(str(v)))
    iterations = property(lambda self: self.iter_spin.value(), lambda self, v: self.iter_spin.setValue(int(v)))
    rigid = property(lambda self: self.rigid_check.isChecked(), lambda self, v: self.rigid_check.setChecked(bool(v)))

    def _on_session(self, name: str) -> None:
        if name == "run_dir" and not self.run_dir and self.session.run_dir is not None:
            self.run_dir = str(self.session.run_dir)

    def _update_buttons(self) -> None:
        self.run_btn.setEnabled(self.state == "idle")
        self.stop_btn.setEnabled(self.state == "running")
        self.show_btn.setEnabled(bool(self.pending_maps))

    def _inputs(self) -> tuple[Path, Path, Path]:
        if not self.run_dir:
            raise ValueError("choose a training run folder")
        run = Path(self.run_dir)
        if self.run_b_dir and not self.particles_path:  # a half run's particles.star holds its half only
            raise ValueError("with a half B run, set 'particles' to the full particle set (both halves)")
        particles = Path(self.particles_path) if self.particles_path else run / "particles.star"
        if not particles.is_file():
            raise ValueError(f"{particles}: no particle file (set 'particles')")
        out = Path(self.out_dir) if self.out_dir else run / "reconstruct"
        return run, particles, out

    def reconstruct(self) -> None:
        """Solve the flex (and rigid) half maps in a worker; plot their FSC; add the maps as layers."""
        if self.state != "idle":
            return
        try:
            run, particles, out = self._inputs()
            self._write_command(run, particles, out)
        except Exception as exc:
            show_error(f"napari-flex3d: cannot reconstruct: {exc}")
            return
        self.report, self.curves, self.error = None, {}, None
        self.fsc_plot.clear_curves()
        self.state = "running"
        self._update_buttons()
        self.progress.setFormat("starting…")
        self._t0 = time.perf_counter()
        s = self.session
        iterations, rigid = self.iterations, self.rigid
        run_b = Path(self.run_b_dir) if self.run_b_dir else None

        def job():
            from ..reconstruct.halfmaps import reconstruct_run  # in the worker: its first import takes seconds

            for ev in reconstruct_run(run, particles, out, passthrough=s.passthrough_path or None,
                                      root=s.root or None, iterations=iterations, rigid=rigid, run_b=run_b):
                if type(ev).__name__ == "ReconstructFinished":  # maps and curves read here, not in the GUI thread
                    ev = read_result(Path(ev.out_dir), ev.report)
                yield ev

        self.worker = start_worker(job, yielded=self._on_event, errored=self._on_error, finished=self._on_finished)

    def _write_command(self, run, particles, out) -> None:
        """The job as ``flex3d reconstruct`` (its defaults are the widget's, the device said
        outright): written to the output folder's COMMAND_FILE and offered by "Copy command"."""
        from ..config import command_line
        from ..io.atomic import COMMAND_FILE, write_command

        s, run_b = self.session, self.run_b_dir or None
        absolute = lambda p: None if not p else str(Path(p).expanduser().resolve())  # noqa: E731
        argv = command_line("reconstruct", run=absolute(run), particles=absolute(particles), out=absolute(out),
                            run_b=absolute(run_b), iterations=self.iterations, no_rigid=not self.rigid, device="cpu",
                            passthrough=absolute(s.passthrough_path), root=absolute(s.root))
        path = write_command(Path(out) / COMMAND_FILE, argv, "the reconstruction started from the Reconstruct widget")
        self.command_btn.set_command(argv, path)

    def _on_event(self, ev) -> None:
        kind = type(ev).__name__
        if kind == "ReconstructProgress":
            self.progress.setRange(0, max(ev.iterations, 1))
            self.progress.setValue(ev.iteration)
            self.progress.setFormat(
                f"{ev.mode} half {ev.half}: iteration {ev.iteration}/{ev.iterations}  ETA {ev.eta_s:,.0f} s"
            )
        elif kind == "HalfMapDone":
            self.status_label.setText(f"{ev.mode} half {ev.half} written: {Path(ev.path).name}")
        elif kind == "dict":
            self._show_result(ev)

    def _show_result(self, result: dict) -> None:
        report = self.report = result["report"]
        self.curves = result["curves"]
        for name, (freq, curve) in self.curves.items():
            self.fsc_plot.set_curve(name, freq, curve)
        self.pending_maps = result["maps"]
        if self.budget.affords_volumes():
            self.show_maps()
        lines = []
        for mode, entry in report.get("maps", {}).items():
            g = entry.get("global", {})
            lines.append(f"{mode}: {g.get('fsc_0143_a', float('nan')):.2f} Å at 0.143")
        nyq = report.get("training_nyquist_a")
        if nyq:
            lines.append(f"training Nyquist {nyq:.2f} Å")
        if self.pending_maps:
            lines.append(f"press 'Show maps' to add them ({self.budget.describe()})")
        self.status_label.setText("; ".join(lines) + f"  ({time.perf_counter() - self._t0:.0f} s)")
        self._update_buttons()

    def show_maps(self) -> None:
        """Put the reconstructed maps into their layers (data swapped in place when the layer exists)."""
        for mode, data, apix, level in self.pending_maps or []:
            name = f"{mode} map (sharpened)"
            if name in self.viewer.layers:
                layer = self.viewer.layers[name]
                layer.data = data
                layer.scale = (apix,) * 3
                layer.iso_threshold = level
            else:
                self.viewer.add_image(data, name=name, scale=(apix,) * 3, rendering="iso", iso_threshold=level,
                                      colormap="cyan" if mode == "flex" else "gray", visible=(mode == "flex"))
        self.pending_maps = None
        self._update_buttons()
