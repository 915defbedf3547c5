"""Latent explorer: click the latent scatter or drag one slider per axis to see the volume.

State: ``run_dir``, ``latents (n, K)``, ``axes`` (the two axes shown), ``use_pca``,
``z (K,)`` (current latent), ``mode`` ("volume" | "path" | "lasso"), ``path (m, K)``,
``polygon`` (plot coordinates), ``preview_box``. Actions: ``open_run()`` (``run_opened``),
``click(x, y)``, ``refine_now()``, ``set_axis_value(k, v)``, ``set_selection(indices, source)`` (with its
``selection_changed`` signal), ``colour_by`` / ``colour_range`` / ``add_colour_columns``,
``compute_residual()``, ``load_comparison(source)``, ``open_3d_view()``, ``play_path()``,
``export_movie(path)``, ``export_series(folder)``, ``export_subset(path)``.

The widget is put together from parts, one module each: the latent plot
(``_explore_plot``), its colouring by per-particle values (``_explore_colour``), the
comparison with other tools' latents (``_explore_compare``), the volume preview
(``_explore_preview``) and the exports (``_explore_export``); ``open_3d_view`` opens
``_latent3d``'s 3D view. This module holds the run, the frame latents and playback.
Volumes, series, paths and subsets are ``napari_flex3d.explore``'s, imported inside the
methods that need them (``explore.generate`` pulls in torch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..explore.paths import interpolate_path
from ._explore_analysis import AnalysisBox
from ._explore_colour import ExplorerColour
from ._explore_compare import ExplorerCompare
from ._explore_export import ExplorerExports
from ._explore_plot import LatentPlot, hbox_row
from ._explore_preview import VOLUME_LAYER, VolumePreview
from ._paint_budget import paint_budget
from ._session import session_for
from ._workers import Background

__all__ = ["LatentExplorerWidget", "VOLUME_LAYER"]

SIGMA_RANGE = 1.5  # an axis movie spans the mean +- this many standard deviations, as `flex3d generate --axis`


def read_run_volumes(run_dir):
    """The run's ``explore.generate.RunVolumes`` (config, model, latents read): a worker's job,
    which imports the library (torch) too, and ``analyze``: the run's table workers start
    together once it returns, and two threads importing that package at once deadlock in its
    circular imports (Python then hands one a half-imported module: an ImportError)."""
    from .. import analyze  # noqa: F401 - imported here, in one thread, before the workers that use it
    from ..explore.generate import RunVolumes

    run = RunVolumes(run_dir)
    if run.latents.ndim != 2 or len(run.latents) == 0:
        raise ValueError(f"the run has no latents to plot (shape {run.latents.shape})")
    return run


def read_run_for_view(run_dir, surface: bool):
    """A worker's job: ``(read_run_volumes(run_dir), layer)``, ``layer`` the explorer's surface
    layer for that run (``placeholder_surface``) if ``surface``, else ``None``."""
    from ._explore_preview import placeholder_surface

    run = read_run_volumes(run_dir)
    return run, (placeholder_surface(run.box, run.apix) if surface else None)


class LatentExplorerWidget(LatentPlot, ExplorerColour, ExplorerCompare, VolumePreview, ExplorerExports, QWidget):
    """Scatter of the latents, one slider per axis, paths, movies, series and subsets."""

    #: the selected particles' indices (``np.ndarray``) or ``None``, after every ``set_selection``
    selection_changed = Signal(object)
    #: a run was opened and its latents are shown (``open_run``)
    run_opened = Signal()

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        paint_budget(napari_viewer)  # its frames are timed from now on
        self._init_state()
        self._init_preview()
        self._init_colour()
        self._init_compare()
        # the boxes are taller than a docked panel: they scroll (napari does not wrap dock widgets)
        content = QWidget()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        layout.addWidget(self._build_run_box())
        layout.addWidget(self._build_latent_box(napari_viewer))
        layout.addWidget(self._build_colour_box())
        layout.addWidget(self._build_compare_box())
        layout.addWidget(self._build_export_box())
        layout.addWidget(AnalysisBox(self))  # clusters and outliers; sets self.analysis
        layout.addStretch(1)
        self._timer = QTimer(self)
        self._timer.setInterval(80)
        self._timer.timeout.connect(self._play_step)
        self.session.changed.connect(self._on_session)
        if self.session.run_dir is not None:
            self.run_dir_text = str(self.session.run_dir)

    def _init_state(self) -> None:
        self.run = None  # explore.generate.RunVolumes of the open run
        self.run_dir: Path | None = None
        self.latents: np.ndarray | None = None
        self.z: np.ndarray | None = None
        self.path: list[np.ndarray] = []
        self.polygon: list[tuple[float, float]] = []
        self.selection: np.ndarray | None = None
        self.preview_box = 32
        self.refine = True
        self.frames_written: int = 0
        self.movie_images: np.ndarray | None = None
        self.last_volume_box: int | None = None
        self.volumes_shown = 0
        self.series_written = None
        self.refined = False
        self._xy = None
        self._to_latent = None
        self._from_latent = None
        self._sliders = []
        self._play_frames: np.ndarray | None = None
        self._play_i = 0
        self.worker = None
        self._open_seq = self._open_done = 0  # open_run's requests asked for / answered
        self._views_pending = 0  # opened runs whose latents wait for their own event-loop turn
        self.background = Background()  # every worker the explorer and its boxes start, but the LatestOnly ones

    def _build_run_box(self) -> QGroupBox:
        box = QGroupBox("Run")
        form = QFormLayout(box)
        self._run_edit = QLineEdit()
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(lambda: self.open_run(wait=False))  # read in a worker; not clicked(bool)
        form.addRow("run folder", hbox_row(self._run_edit, self.open_btn))
        self.info_label = QLabel("no run open")
        self.info_label.setWordWrap(True)
        form.addRow(self.info_label)
        return box

    def _build_export_box(self) -> QGroupBox:
        box = QGroupBox("Path and export")
        form = QFormLayout(box)
        self.frames_spin = QSpinBox()
        self.frames_spin.setRange(2, 1000)
        self.frames_spin.setValue(21)
        form.addRow("frames", self.frames_spin)
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(16, 512)
        self.preview_spin.setSingleStep(16)
        self.preview_spin.setValue(self.preview_box)
        # maps are even-sized (RunVolumes refuses an odd box): a typed odd size rounds down
        self.preview_spin.valueChanged.connect(lambda v: setattr(self, "preview_box", int(v) - int(v) % 2))
        self.refine_btn = QPushButton("Refine")
        self.refine_btn.setToolTip("the current map at the training box with the run's kernel (automatic, except "
                                   "where a 3D frame is slow: software OpenGL)")
        self.refine_btn.clicked.connect(lambda: self.refine_now())
        form.addRow("preview box", hbox_row(self.preview_spin, self.refine_btn))
        self.traverse_combo = QComboBox()
        self.traverse_combo.addItem("drawn path")
        form.addRow("movie along", self.traverse_combo)
        buttons = []
        for text, slot in (
            ("Play", self.play_path),
            ("Movie…", self._movie_dialog),
            ("Series…", self._series_dialog),
            ("Subset…", self._subset_dialog),
        ):
            b = QPushButton(text)
            b.clicked.connect(slot)
            buttons.append(b)
        form.addRow(hbox_row(*buttons))
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        return box

    # ------------------------------------------------------------------ plain state
    run_dir_text = property(lambda self: self._run_edit.text(), lambda self, v: self._run_edit.setText(str(v)))

    @property
    def n_frames(self) -> int:
        return self.frames_spin.value()

    @n_frames.setter
    def n_frames(self, value: int) -> None:
        self.frames_spin.setValue(int(value))

    @property
    def idle(self) -> bool:
        """All background work finished: no worker of the explorer or of its boxes (table,
        residual, comparison, exports, clusters, outliers) runs, the preview and density
        renders have nothing queued, and no outlier selection waits on its timer."""
        return self._render.idle and self.background.idle and self.analysis.idle and not self._views_pending

    def _on_session(self, name: str) -> None:
        if name == "run_dir" and self.session.run_dir is not None and not self.run_dir_text:
            self.run_dir_text = str(self.session.run_dir)

    # ------------------------------------------------------------------ run
    def open_run(self, run_dir=None, wait: bool = True) -> None:
        """Open a trained run (``run_dir`` or the folder typed in the box) and plot its latents.

        The run (config, model, latents) is read by :func:`read_run_volumes`: here with ``wait``
        (scripts, tests), else in a worker (the Open button), counted in ``idle``, which also
        builds the surface layer a slow 3D canvas needs (``prepare_view``); the GUI thread
        then only swaps them in, the layer and the latents in two event-loop turns. The last
        open asked for wins: a read still running when another starts is dropped when it
        returns. ``run_opened`` is emitted once the run is shown; a folder that cannot be
        opened says why in the widget.
        """
        if run_dir is not None:
            self.run_dir_text = str(run_dir)
        path = self.run_dir_text
        self._open_seq += 1
        seq = self._open_seq
        if wait:
            try:
                run = read_run_volumes(path)
            except Exception as exc:  # noqa: BLE001 - any reason becomes the widget's message
                self._open_failed(seq, path, exc)
                return
            self._run_loaded(seq, path, run)
            return
        self.info_label.setText(f"opening {path}…")
        self.background.start(read_run_for_view, path, self.surface_wanted(),
                              returned=lambda result: self._run_loaded(seq, path, *result, later=True),
                              errored=lambda exc: self._open_failed(seq, path, exc, shown=True))

    @property
    def opening(self) -> bool:
        """A run is being read in a worker (the last ``open_run(..., wait=False)`` has not returned)."""
        return self._open_seq != self._open_done

    def _open_failed(self, seq: int, path: str, exc: BaseException, shown: bool = False) -> None:
        if seq != self._open_seq:
            return  # another open was asked for meanwhile
        self._open_done = seq
        message = f"cannot open run {path!r}: {exc}"
        self.info_label.setText(message if self.run is None else f"{message} (still showing {self.run_dir})")
        if not shown:  # a worker's error is shown by start_worker
            show_error(f"napari-flex3d: {message}")

    def _run_loaded(self, seq: int, path: str, run, surface=None, later: bool = False) -> None:
        """Show the run read for open ``seq``: its surface layer (``surface``, built in the
        worker; ``prepare_view``), then its latents. With ``later`` the latents wait for the
        next event-loop turn: two short stalls, not one long, and napari's insertion of the
        layer does not share the GIL with the run's table workers, which the latents start."""
        if seq != self._open_seq:
            return  # another open was asked for meanwhile: the last one wins
        self._open_done = seq
        self.run = run
        self.run_dir = Path(path)
        self.prepare_view(surface)  # a slow 3D canvas: the surface layer added now, not at the first click
        if not later:
            self._show_latents(run)
            return
        self._views_pending += 1
        # a timer, not a 0 ms call (a posted event, run in the same pass): the canvas's frame of
        # the new layer and input due meanwhile come first
        QTimer.singleShot(1, lambda: self._show_latents(run, pending=True))

    def _show_latents(self, run, pending: bool = False) -> None:
        if pending:
            self._views_pending -= 1
        if run is not self.run:
            return  # another run was opened meanwhile
        self.set_latents(self.run.latents)
        self._colour_run_opened()
        self._compare_run_opened()
        k = self.latents.shape[1]
        self.info_label.setText(
            f"{len(self.latents):,} particles, K = {k}, box {self.run.box} at {self.run.apix:.2f} Å"
        )
        self.run_opened.emit()

    def open_3d_view(self, viewer=None):
        """The latents in 3D (``_latent3d``) in ``viewer`` (default a new napari viewer); K >= 3."""
        from ._latent3d import open_latent_3d

        try:
            self.view3d = open_latent_3d(self, viewer)
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
        return self.view3d

    # ------------------------------------------------------------------ path, animation
    def movie_latents(self, along: str | None = None) -> np.ndarray:
        """The ``(n_frames, K)`` latents of a movie: the drawn path, or an axis traversal
        (``explore.generate.axis_latents``, the same frames as ``flex3d generate --axis``)."""
        along = along or self.traverse_combo.currentText()
        if along.startswith("axis"):
            from ..explore.generate import axis_latents

            k = int(along.split("z")[-1])
            return axis_latents(self.latents, k, self.n_frames, SIGMA_RANGE).numpy()
        if len(self.path) < 2:
            raise ValueError("draw a path first: choose 'path' and click two or more points")
        return interpolate_path(np.array(self.path), self.n_frames)

    def play_path(self) -> None:
        """Animate the path: the cursor moves along it and the volume follows."""
        try:
            self._play_frames = self.movie_latents()
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        self._play_i = 0
        self._timer.start()

    def _play_step(self) -> None:
        if self._play_frames is None or self._play_i >= len(self._play_frames):
            self._timer.stop()
            return
        if self.run is not None and not self._render.idle:
            return  # wait for the volume of the last frame before moving on
        self.show_latent(self._play_frames[self._play_i], refine=False)
        self._play_i += 1

    @property
    def playing(self) -> bool:
        return self._timer.isActive()

