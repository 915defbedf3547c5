"""Subset to map: the flex and rigid half maps of the particles selected in the explorer.

The part of ``MotionWidget`` that owns the "Subset to map" group box. ``subset_half_maps``
writes the selection as ``subset_particles.star`` (the selected rows of the run's particle
file) and then runs ``flex3d reconstruct --subset`` on it
(``reconstruct.halfmaps.reconstruct_run``: the run's frozen flow and latents, the particles
at their full box, the particles matched by image name), in a worker with progress; the
maps and FSC curves are read there too (``_reconstruct_widget.read_result``). The same
command is written to the output folder (``flex3d_command.sh``) and offered by "Copy command".
Imports the library by name inside the functions the worker runs.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox

from ._command import CommandButton
from ._explore_plot import hbox_row
from ._plots import CurvePlot
from ._reconstruct_widget import read_result
from ._workers import start_worker


SUBSET_FILE = "subset_particles.star"


def subset_half_maps(run_dir, particles, rows, out_dir, *, passthrough=None, root=None, iterations: int = 20,
                     rigid: bool = True):
    """Flex (and rigid) half maps of the particles at ``rows`` of a trained run (rows of its
    latents: the run's particle file without its unusable images); a generator of
    ``reconstruct.halfmaps`` events, its ``ReconstructFinished`` replaced by ``read_result``'s dict.

    Writes ``OUT/subset_particles.star`` and then runs exactly what :func:`subset_command` says."""
    from ..explore.subsets import write_subset
    from ..io.image_check import MAX_UNUSABLE_FRACTION
    from ..io.particles import read_particles
    from ..reconstruct.halfmaps import reconstruct_run
    from ..reconstruct.halfsets import usable_particles

    out = Path(out_dir)
    ps = read_particles(particles, passthrough=passthrough, root=root).require_images()
    ps, _ = usable_particles(ps, out, MAX_UNUSABLE_FRACTION)  # the latents' rows; the record kept for the job
    rows = np.unique(np.asarray(rows, np.int64))
    if rows.size == 0:
        raise ValueError("the selection is empty")
    if rows[0] < 0 or rows[-1] >= len(ps):
        raise ValueError(f"selected rows must lie in [0, {len(ps)}) ({particles}); got {rows[0]}..{rows[-1]}")
    out.mkdir(parents=True, exist_ok=True)
    write_subset(ps, rows, out / SUBSET_FILE)
    for ev in reconstruct_run(run_dir, particles, out, subset=out / SUBSET_FILE, passthrough=passthrough, root=root,
                              iterations=iterations, rigid=rigid):
        if type(ev).__name__ == "ReconstructFinished":
            ev = read_result(Path(ev.out_dir), ev.report)
        yield ev


def subset_command(run_dir, particles, out_dir, *, passthrough=None, root=None, iterations: int = 20,
                   rigid: bool = True) -> list[str]:
    """``flex3d reconstruct --subset OUT/subset_particles.star ...``: the job of :func:`subset_half_maps`
    as a command line, its paths absolute."""
    from ..config import command_line

    absolute = lambda p: None if not p else str(Path(p).expanduser().resolve())  # noqa: E731
    return command_line("reconstruct", run=absolute(run_dir), particles=absolute(particles), out=absolute(out_dir),
                        subset=absolute(Path(out_dir) / SUBSET_FILE), iterations=iterations, no_rigid=not rigid,
                        device="cpu", passthrough=absolute(passthrough), root=absolute(root))


def default_subset_folder(run_dir, rows) -> Path:
    """``RUN/subset_<n>_<hash of the rows>``: the same selection always maps into the same folder."""
    rows = np.unique(np.asarray(rows, np.int64))
    digest = hashlib.sha1(rows.tobytes()).hexdigest()[:8]
    return Path(run_dir) / f"subset_{rows.size}_{digest}"


class SubsetToMap:
    """Mixin of ``MotionWidget``: the "Subset to map" box.

    State: ``selection`` (the explorer's, on every ``selection_changed``), ``iterations``,
    ``rigid``, ``particles_path`` (default the run's ``particles.star``), ``out_dir``
    (default :func:`default_subset_folder`), ``subset_rows`` and ``subset_result`` of the
    last job (``read_result``'s dict). Actions: ``map_selection()``, ``stop_subset()``.
    """

    selection: np.ndarray | None = None
    subset_worker = None
    subset_rows: np.ndarray | None = None
    subset_result: dict | None = None
    subset_error: Exception | None = None

    def _build_subset_box(self) -> QGroupBox:
        box = QGroupBox("Subset to map")
        form = QFormLayout(box)
        self.selection_label = QLabel("no selection (lasso, cluster or outlier filter in the explorer)")
        self.selection_label.setWordWrap(True)
        form.addRow(self.selection_label)
        self._subset_particles_edit = QLineEdit()
        self._subset_particles_edit.setPlaceholderText("default: the run's particles.star")
        form.addRow("particles", self._subset_particles_edit)
        self._subset_out_edit = QLineEdit()
        self._subset_out_edit.setPlaceholderText("default: <run>/subset_<n>_<id>")
        form.addRow("output folder", self._subset_out_edit)
        self.subset_iter_spin = QSpinBox()
        self.subset_iter_spin.setRange(1, 1000)
        self.subset_iter_spin.setValue(20)
        self.subset_rigid_check = QCheckBox("also the rigid baseline")
        self.subset_rigid_check.setChecked(True)
        form.addRow("L-BFGS iterations", hbox_row(self.subset_iter_spin, self.subset_rigid_check))
        self.subset_btn = QPushButton("Map the selection")
        self.subset_btn.setToolTip("flex and rigid half maps of the selected particles at their full box, with FSC")
        self.subset_btn.clicked.connect(self.map_selection)
        self.subset_stop_btn = QPushButton("Stop")
        self.subset_stop_btn.clicked.connect(self.stop_subset)
        self.subset_command_btn = CommandButton()
        form.addRow(hbox_row(self.subset_btn, self.subset_stop_btn, self.subset_command_btn))
        self.subset_progress = QProgressBar()
        self.subset_progress.setFormat("idle")
        form.addRow(self.subset_progress)
        self.subset_fsc = CurvePlot("FSC of the selection's half maps", "resolution (1/Å)", "FSC", viewer=self.viewer)
        self.subset_fsc.getPlotItem().setYRange(-0.1, 1.05)
        self.subset_fsc.getPlotItem().addLine(y=0.143, pen="#888888")
        form.addRow(self.subset_fsc)
        return box

    iterations = property(lambda self: self.subset_iter_spin.value(), lambda self, v: self.subset_iter_spin.setValue(int(v)))
    rigid = property(lambda self: self.subset_rigid_check.isChecked(), lambda self, v: self.subset_rigid_check.setChecked(bool(v)))
    particles_path = property(lambda self: self._subset_particles_edit.text(),
                              lambda self, v: self._subset_particles_edit.setText(str(v)))
    out_dir = property(lambda self: self._subset_out_edit.text(), lambda self, v: self._subset_out_edit.setText(str(v)))

    def _on_selection(self, indices) -> None:
        self.selection = None if indices is None else np.asarray(indices, np.int64)
        n = 0 if self.selection is None else self.selection.size
        self.selection_label.setText(f"selection: {n:,} particles" if n else
                                     "no selection (lasso, cluster or outlier filter in the explorer)")
        self._update_subset_buttons()

    def _update_subset_buttons(self) -> None:
        running = self.subset_worker is not None
        has = self.selection is not None and self.selection.size > 0
        self.subset_btn.setEnabled(has and not running)
        self.subset_stop_btn.setEnabled(running)

    def map_selection(self) -> None:
        """Reconstruct the flex (and rigid) half maps of the explorer's selection in a worker."""
        if self.subset_worker is not None:
            return
        try:
            ex = self._require_run()
            rows = None if ex.selection is None else np.asarray(ex.selection, np.int64).copy()
            if rows is None or rows.size == 0:
                raise ValueError("select particles in the explorer first (lasso, a cluster or an outlier filter)")
            particles = Path(self.particles_path) if self.particles_path else Path(ex.run_dir) / "particles.star"
            if not particles.is_file():
                raise ValueError(f"{particles}: no particle file (set 'particles')")
            out = Path(self.out_dir) if self.out_dir else default_subset_folder(ex.run_dir, rows)
            self._write_subset_command(ex.run_dir, particles, out)
        except (ValueError, OSError) as exc:
            show_error(f"napari-flex3d: cannot map the selection: {exc}")
            return
        self.subset_rows, self.subset_result, self.subset_error = rows, None, None
        self.subset_fsc.clear_curves()
        self.subset_progress.setFormat("starting…")
        self._subset_t0 = time.perf_counter()
        s = self.session
        self.subset_worker = start_worker(
            subset_half_maps, ex.run_dir, particles, rows, out, passthrough=s.passthrough_path or None,
            root=s.root or None, iterations=self.iterations, rigid=self.rigid,
            yielded=self._on_subset_event, errored=self._on_subset_error, finished=self._on_subset_finished,
        )
        self.status_label.setText(f"mapping {rows.size:,} particles into {out}…")
        self._update_subset_buttons()

    def _write_subset_command(self, run_dir, particles, out) -> None:
        """The job as ``flex3d reconstruct --subset``: written to the output folder's COMMAND_FILE
        and offered by "Copy command"."""
        from ..io.atomic import COMMAND_FILE, write_command

        s = self.session
        argv = subset_command(run_dir, particles, out, passthrough=s.passthrough_path or None, root=s.root or None,
                              iterations=self.iterations, rigid=self.rigid)
        path = write_command(Path(out) / COMMAND_FILE, argv, "the subset map started from the Motion analysis widget")
        self.subset_command_btn.set_command(argv, path)

    def stop_subset(self) -> None:
        """Stop after the current iteration (finished half maps and solver states stay on disk)."""
        if self.subset_worker is not None:
            self.subset_progress.setFormat("stopping…")
            self.subset_worker.quit()

    def _on_subset_event(self, ev) -> None:
        kind = type(ev).__name__
        if kind == "ReconstructProgress":
            self.subset_progress.setRange(0, max(ev.iterations, 1))
            self.subset_progress.setValue(ev.iteration)
            self.subset_progress.setFormat(f"{ev.mode} half {ev.half}: iteration {ev.iteration}/{ev.iterations}  "
                                           f"ETA {ev.eta_s:,.0f} s")
        elif kind == "HalfMapDone":
            self.status_label.setText(f"{ev.mode} half {ev.half} written: {Path(ev.path).name}")
        elif kind == "dict":
            self._show_subset(ev)

    def _show_subset(self, result: dict) -> None:
        self.subset_result = result
        for name, (freq, curve) in result["curves"].items():
            self.subset_fsc.set_curve(name, freq, curve)
        for mode, data, apix, level in result["maps"]:
            name = f"selection {mode} map (sharpened)"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(data, name=name, scale=(apix,) * 3, rendering="iso", iso_threshold=level,
                                  colormap="cyan" if mode == "flex" else "gray", visible=(mode == "flex"))
        report = result["report"]
        used = report.get("particles_used", {})
        lines = [f"{mode}: {entry.get('global', {}).get('fsc_0143_a', float('nan')):.2f} Å at 0.143"
                 for mode, entry in report.get("maps", {}).items()]
        lines.append(f"{sum(used.values()):,} particles ({used.get('A', 0)} + {used.get('B', 0)})")
        self.status_label.setText("selection: " + "; ".join(lines) + f"  ({time.perf_counter() - self._subset_t0:.0f} s)")

    def _on_subset_error(self, exc) -> None:
        self.subset_error = exc
        self.status_label.setText(f"error: {type(exc).__name__}: {exc}")

    def _on_subset_finished(self) -> None:
        self.subset_worker = None
        self.subset_progress.setFormat("failed" if self.subset_error else ("done" if self.subset_result else "stopped"))
        self._update_subset_buttons()
