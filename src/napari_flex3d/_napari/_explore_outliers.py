"""The explorer's outliers: residual and latent-norm histograms with draggable thresholds, exclude and train.

``OutlierPanel(box)`` sits in the Analysis box (``box``, whose ``ex`` is the explorer).
The latent norm ``|z|`` is known as soon as a run is open; the per-particle residual
(``analyze.residuals.particle_residuals``: whitened, per Fourier coefficient, 1 = only
noise) needs a forward pass over every particle and runs in a worker with progress, at
the box ``flex3d analyze`` uses. Each histogram has a threshold line (first at a robust z
of 3.5, as ``flex3d analyze``; computed in workers); dragging either selects, throttled, the particles above
either line (``ex.set_selection(..., "residual > 1.3 or |z| > 2.9")``), which the scatter
marks. ``export_outliers(path)`` writes them, ``exclude_and_train()`` writes the others
and starts a run on them in the Train widget (the open one, or one it opens) with the
run's own settings (``analyze.retrain``: the same file and settings as the command
``flex3d analyze`` prints).

State: ``residual``, ``latent_norm`` (``(n,)`` or ``None``), ``residual_threshold``,
``norm_threshold``, ``outliers`` (``(n,)`` bool), ``retrain`` (``(TrainWidget, kept
path)`` of the last exclude and train). Imports Qt, pyqtgraph, ``._plots``, ``._workers``;
``analyze`` and the Train widget inside the methods that use them.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QLabel, QProgressBar, QPushButton, QTabWidget, QVBoxLayout, QWidget

from ._explore_plot import hbox_row
from ._plots import ThemedPlot

SELECT_DELAY_MS = 60  # a dragged threshold selects at most this often


def histogram(values: np.ndarray, threshold: float) -> dict:
    """Worker: what a :class:`ThresholdHistogram` shows of ``values (n,)`` (float64): the values,
    the first threshold, ``counts``/``edges`` (about 2 sqrt(n) bins, 10 to 200) and the x range
    (to the 99.5th percentile or the threshold, so a few far outliers do not squash the rest),
    computed off the GUI thread (a million values take a tenth of a second)."""
    values = np.asarray(values, np.float64)
    lo, hi = float(values.min()), float(values.max())
    bins = int(np.clip(2 * np.sqrt(len(values)), 10, 200))
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    top = min(hi, max(float(np.percentile(values, 99.5)), threshold) * 1.15)
    return {"values": values, "threshold": float(threshold), "counts": counts, "edges": edges,
            "x_range": (lo, top if top > lo else lo + 1.0), "median": float(np.median(values))}


def _norms_job(latents) -> dict:
    """Worker: the latent norms' :func:`histogram`, its line at a robust z of 3.5."""
    from ..analyze.residuals import robust_threshold

    norm = np.linalg.norm(np.asarray(latents, np.float64), axis=1)
    return histogram(norm, robust_threshold(norm))


class _Progress(QObject):
    """Carries a worker's ``(done, total)`` to the GUI thread (a queued signal)."""

    step = Signal(int, int)


class ThresholdHistogram(ThemedPlot):
    """A histogram of per-particle values with one draggable vertical threshold line."""

    def __init__(self, title: str, x_label: str, viewer=None):
        super().__init__(title, x_label, "particles", viewer=viewer)
        self.bars = pg.PlotDataItem([], [], stepMode="center", fillLevel=0, pen=pg.mkPen("#4fc3f7"),
                                    brush=pg.mkBrush(79, 195, 247, 90))
        self.line = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen("#e57373", width=2),
                                    hoverPen=pg.mkPen("#ffb74d", width=3))
        self.getPlotItem().addItem(self.bars)
        self.getPlotItem().addItem(self.line)
        self.setMinimumHeight(170)
        self.values = None

    def set_values(self, hist: dict) -> None:
        """Show a :func:`histogram` (computed in a worker) with its line at its threshold."""
        self.values = hist["values"]
        self.bars.setData(hist["edges"], hist["counts"])
        self.line.setValue(hist["threshold"])
        self.getPlotItem().setXRange(*hist["x_range"], padding=0.02)

    def clear_values(self) -> None:
        self.values = None
        self.bars.setData([], [])


class OutlierPanel(QWidget):
    """Residual and latent-norm histograms, thresholds that select, export, exclude and train."""

    def __init__(self, box):
        super().__init__()
        self.box = box
        self.ex = box.ex
        self.residual: np.ndarray | None = None
        self.latent_norm: np.ndarray | None = None
        self.retrain = None
        self.worker = None
        self._latents = None  # the latents the values belong to
        self._progress = _Progress()
        self._progress.step.connect(self._on_progress)
        self._select_timer = QTimer(self)
        self._select_timer.setSingleShot(True)
        self._select_timer.setInterval(SELECT_DELAY_MS)
        self._select_timer.timeout.connect(self.select_outliers)
        layout = QVBoxLayout(self)
        self.residual_btn = QPushButton("Residuals")
        self.residual_btn.setToolTip("the whitened residual of every particle against the model at its latent "
                                     "(1 = only noise left); a forward pass over all particles, in the background")
        self.residual_btn.clicked.connect(lambda: self.compute_residuals())
        self.progress = QProgressBar()
        self.progress.setFormat("residuals not computed")
        self.progress.setTextVisible(True)
        layout.addWidget(hbox_row(self.residual_btn, self.progress))
        viewer = self.ex.viewer
        self.residual_plot = ThresholdHistogram("residual per coefficient (1 = noise)", "residual", viewer=viewer)
        self.norm_plot = ThresholdHistogram("latent norm |z|", "|z|", viewer=viewer)
        self.hist_tabs = QTabWidget()  # both lines select, whichever page shows
        for plot, name in ((self.residual_plot, "residual"), (self.norm_plot, "latent norm")):
            plot.line.sigPositionChanged.connect(lambda *_: self._select_timer.start())
            self.hist_tabs.addTab(plot, name)
        self.hist_tabs.setTabPosition(QTabWidget.TabPosition.West)
        layout.addWidget(self.hist_tabs)
        buttons = []
        for text, slot, tip in (
            ("Select", self.select_outliers, "select the particles above either threshold"),
            ("Export outliers…", self._export_dialog, "write the particles above the thresholds (STAR or .cs)"),
            ("Exclude and train…", self._train_dialog,
             "write the particles below both thresholds and train again on them, with this run's settings"),
        ):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda *_, s=slot: s())
            buttons.append(b)
        layout.addWidget(hbox_row(*buttons))
        self.outlier_label = QLabel("")
        self.outlier_label.setWordWrap(True)
        layout.addWidget(self.outlier_label)

    # ------------------------------------------------------------------ state
    residual_threshold = property(lambda self: float(self.residual_plot.line.value()),
                                  lambda self, v: self.residual_plot.line.setValue(float(v)))
    norm_threshold = property(lambda self: float(self.norm_plot.line.value()),
                              lambda self, v: self.norm_plot.line.setValue(float(v)))

    @property
    def idle(self) -> bool:
        return self.worker is None and not self._select_timer.isActive()

    @property
    def outliers(self) -> np.ndarray | None:
        """``(n,)`` bool: a latent norm above its line, or a residual (once computed) above its line."""
        if self.latent_norm is None:
            return None
        mask = self.latent_norm > self.norm_threshold
        if self.residual is not None:
            mask |= self.residual > self.residual_threshold
        return mask

    def describe(self) -> str:
        """What selects the outliers, as the status line says it: "residual > 1.3 or |z| > 2.9"."""
        norm = f"|z| > {self.norm_threshold:.3g}"
        return f"residual > {self.residual_threshold:.3g} or {norm}" if self.residual is not None else norm

    def sync_latents(self) -> None:
        """The explorer's latents changed (a run opened): new latent norms, residuals forgotten."""
        z = self.ex.latents
        if z is self._latents:
            return
        self._latents = z
        self.residual = None
        self.residual_plot.clear_values()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("residuals not computed")
        self.latent_norm = None
        self.norm_plot.clear_values()
        if z is not None:
            self.ex.background.start(_norms_job, z, returned=lambda hist: self._on_norms(z, hist))

    def _on_norms(self, latents, hist: dict) -> None:
        if latents is not self._latents:
            return  # another run opened meanwhile
        self.latent_norm = hist["values"]
        with _quiet(self.norm_plot.line):
            self.norm_plot.set_values(hist)
        self._count()

    # ------------------------------------------------------------------ residuals
    def compute_residuals(self, box: int | None = None, batch: int = 256) -> None:
        """In a worker: the whitened residual of every particle (at ``box``, default the box
        ``flex3d analyze`` uses), with progress; then its histogram and threshold."""
        ex = self.ex
        if ex.run is None:
            show_error("napari-flex3d: open a trained run first")
            return
        if self.worker is not None:
            return
        run_dir, latents, step = ex.run_dir, ex.latents, self._progress.step

        def compute(config, ps):
            def job():
                from ..analyze.pipeline import residual_box_for
                from ..analyze.residuals import particle_residuals, robust_threshold

                rbox = residual_box_for(config, ex.run.box, box)
                residual = particle_residuals(run_dir, ps, latents, box=rbox, batch=batch,
                                              progress=lambda done, total: step.emit(done, total))
                return histogram(residual, robust_threshold(residual))

            def done(hist):
                if latents is not self.ex.latents:
                    return  # another run opened meanwhile
                self.residual = hist["values"]
                with _quiet(self.residual_plot.line):
                    self.residual_plot.set_values(hist)
                self.progress.setFormat(f"median residual {hist['median']:.3f}")
                self._count()

            self.progress.setFormat("residuals: starting…")
            self.worker = self.ex.background.start(job, returned=done, finished=lambda: setattr(self, "worker", None))

        self.with_inputs(compute)

    def with_inputs(self, then) -> None:
        try:
            self.box.with_inputs(then)
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(f"residuals: {done:,}/{total:,} particles")

    # ------------------------------------------------------------------ selection
    def _count(self) -> int:
        mask = self.outliers
        n = 0 if mask is None else int(mask.sum())
        total = 0 if mask is None else len(mask)
        self.outlier_label.setText(f"{n:,} of {total:,} particles above: {self.describe()}" if total else "")
        return n

    def select_outliers(self) -> np.ndarray | None:
        """Select the particles above the thresholds (``ex.set_selection``); their indices."""
        self._select_timer.stop()
        mask = self.outliers
        if mask is None:
            return None
        self._count()
        return self.ex.set_selection(np.flatnonzero(mask), self.describe())

    def export_outliers(self, path) -> Path:
        """Write the particles above the thresholds to ``path`` (STAR or ``.cs``) in a worker."""
        mask = self._require_outliers()

        def write(config, ps):
            from ..explore.subsets import write_subset

            self.worker = self.ex.background.start(
                write_subset, ps, np.flatnonzero(mask), path,
                returned=lambda p: show_info(f"napari-flex3d: wrote {int(mask.sum())} outliers to {p}"),
                finished=lambda: setattr(self, "worker", None))

        self.with_inputs(write)
        return Path(path)

    def _require_outliers(self) -> np.ndarray:
        mask = self.outliers
        if mask is None:
            raise ValueError("open a trained run first")
        if not mask.any():
            raise ValueError(f"no particle lies above the thresholds ({self.describe()})")
        return mask

    # ------------------------------------------------------------------ exclude and train
    def exclude_and_train(self, out_dir=None, train=None) -> None:
        """Write the particles below both thresholds and start training on them.

        The kept file goes into the new run folder (``out_dir``, default ``RUN_without_outliers``
        beside the run), as ``.cs`` for a ``.cs`` input, else STAR. The run's own settings go
        into ``train`` (default: the viewer's Train widget, opened if need be) pointing at that
        file, the shared session's particles become the kept ones (with the run's map and
        mesh, unless the Data and mesh widget holds another map or a mesh), and the run
        starts; its ``flex3d train`` equivalent is in the status line. Refuses while
        ``train`` is running.
        """
        mask = self._require_outliers()
        if self._select_timer.isActive():  # a threshold just moved: its selection now, not over the message below
            self._select_timer.stop()
            self.select_outliers()
        train = train or self._train_widget()
        if train.running:
            raise ValueError("the Train widget is running a job: stop it or wait for it first")
        run_dir = self.ex.run_dir

        def write(config, ps):
            def job():
                import shlex

                from ..analyze.retrain import (KEPT_STEM, kept_suffix, retrain_config, retrain_dir, run_mesh,
                                               train_argv, write_kept)
                from ..mesh.mesh import load_mesh

                out = Path(out_dir) if out_dir else retrain_dir(run_dir)
                if (out / "checkpoints").is_dir():
                    raise ValueError(f"{out} already holds a training run: choose another folder")
                out.mkdir(parents=True, exist_ok=True)
                path, kept = write_kept(ps, mask, out / f"{KEPT_STEM}{kept_suffix(ps)}")
                cfg = retrain_config(config, path, out, run_mesh(run_dir))
                mesh = load_mesh(cfg.mesh) if cfg.mesh else None
                return cfg, mesh, ps.subset(kept), shlex.join(train_argv(cfg))

            self.outlier_label.setText(f"writing the {len(mask) - int(mask.sum()):,} kept particles…")
            self.worker = self.ex.background.start(job, returned=lambda r: self._start_training(train, *r),
                                                   finished=lambda: setattr(self, "worker", None))

        self.with_inputs(write)

    def _start_training(self, train, cfg, mesh, kept, command: str) -> None:
        session = self.ex.session
        train.config = cfg  # the form: every setting of the run, the new folder
        inputs = {}
        if not session.map_path or session.map_path == cfg.map:  # the run's map: its mesh too, painted masks and all
            inputs["map_path"] = cfg.map
            if session.mesh is None and mesh is not None:
                inputs["mesh"] = mesh
        session.set(particles=kept, particles_path=cfg.particles, passthrough_path="", root=cfg.root or "", **inputs)
        self.retrain = (train, Path(cfg.particles))
        train.start()
        self.outlier_label.setText(f"training on {len(kept):,} particles in {cfg.out} (the same as: {command})"
                                   if train.running else f"the Train widget did not start: {train.status_label.text()}")

    def _train_widget(self):
        """The Train widget on this viewer (the first docked one), else a new one docked now."""
        from qtpy.QtWidgets import QApplication

        from ._train_widget import TrainWidget

        for widget in QApplication.allWidgets():
            if isinstance(widget, TrainWidget) and widget.session is self.ex.session:
                return widget
        _, widget = self.ex.viewer.window.add_plugin_dock_widget("napari-flex3d", "Train")
        return widget

    # ------------------------------------------------------------------ dialogs
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save outliers", "outliers.star", "Particles (*.star *.cs)")
        if path:
            _refusals_shown(self.export_outliers, path)

    def _train_dialog(self) -> None:
        if self.ex.run_dir is None:
            show_error("napari-flex3d: open a trained run first")
            return
        folder = QFileDialog.getExistingDirectory(self, "Folder of the new run (empty)", str(Path(self.ex.run_dir).parent))
        if folder:
            _refusals_shown(self.exclude_and_train, folder)


def _refusals_shown(action, *args) -> None:
    try:
        action(*args)
    except ValueError as exc:
        show_error(f"napari-flex3d: {exc}")


@contextmanager
def _quiet(line):
    """``with _quiet(line):`` moves a threshold line without selecting (its signals blocked)."""
    line.blockSignals(True)
    try:
        yield
    finally:
        line.blockSignals(False)
