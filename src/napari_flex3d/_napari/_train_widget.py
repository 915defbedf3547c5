"""Train: a form built from ``TrainConfig``, Start / Stop / Resume, live plots and previews.

Training is the library's generator ``training.loop.train_run``; this widget runs it in a
napari thread worker and draws its typed events (``training.events``) as they arrive.
State: ``config`` (the form as a ``TrainConfig``), ``state`` ("idle" | "running" |
"stopping"), ``last_checkpoint``, ``run_dir``, ``latents``; ``start()``, ``stop()``,
``resume()`` are the buttons. Imports ``napari_flex3d.config`` (light) at the top;
``training`` (torch) is imported in a worker, preloaded when the widget opens. The live
preview (``_train_preview``) is prepared in a worker; the GUI thread only draws thumbnails
and swaps arrays into the preview layers. ``events`` keeps the arrays of the newest
``PreviewVolumes`` and ``LatentSnapshot`` only, so a long run does not grow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import typing
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, LineEdit, create_widget
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..config import TrainConfig
from ..io.lock import folder_lock
from ..training import RUN_IMPORTS
from ._plots import CurvePlot, LatentScatter
from ._data_widget import painted_mesh
from ._paint_budget import paint_budget
from ._session import session_for
from ._train_preview import PREVIEW_PREFIX, PreviewPanel, prepare_previews, swap_into_layers
from ._command import CommandButton
from ._workers import LatestOnly, Preloads, WorkerControls, start_worker

# Fields filled from the Data and mesh widget (the session), not typed in the form.
FROM_SESSION = ("particles", "map", "mesh", "passthrough", "root")
HEAVY_EVENTS = ("PreviewVolumes", "LatentSnapshot")  # only the newest keeps its arrays in ``events``


def _optional_inner(hint):
    """``float`` for ``float | None`` (and ``None`` if the hint is not optional)."""
    args = typing.get_args(hint)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return None


def config_form(cls, skip=()) -> Container:
    """A magicgui form with one widget per field of the frozen dataclass ``cls``.

    Optional fields are text boxes (empty = ``None``); fields with ``choices`` in their
    metadata are combo boxes; help strings become tooltips.
    """
    hints = typing.get_type_hints(cls)
    widgets = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        tip = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            w = ComboBox(name=f.name, choices=list(choices), value=f.default, tooltip=tip)
        elif _optional_inner(hint) is not None or hint not in (int, float, str, bool):
            w = LineEdit(name=f.name, value="" if f.default is None else str(f.default), tooltip=tip)
        else:
            options = {"max": 10**9, "min": -(10**9)} if hint in (int, float) else {}
            if hint is float:
                options["step"] = 10 ** np.floor(np.log10(abs(f.default))) if f.default else 0.01
            w = create_widget(value=f.default, annotation=hint, name=f.name, options=options)
            w.tooltip = tip
        widgets.append(w)
    return Container(widgets=widgets, labels=True)


def form_values(cls, form: Container) -> dict:
    """The form's values converted back to the dataclass field types."""
    hints = typing.get_type_hints(cls)
    out = {}
    names = {w.name for w in form}
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        widget = form[f.name]
        value = widget.value
        hint = hints[f.name]
        inner = _optional_inner(hint)
        if isinstance(value, str) and (inner is not None or hint not in (str,)) and widget.widget_type == "LineEdit":
            text = value.strip()
            if inner is not None and text in ("", "None"):
                value = None
            elif inner in (int, float):
                value = inner(text)
            elif typing.get_origin(inner) is tuple:
                value = tuple(float(t) for t in text.strip("()").split(",") if t.strip())
        out[f.name] = value
    return out


def _set_form(form: Container, name: str, value) -> None:
    w = form[name]
    w.value = ("" if value is None else str(value)) if w.widget_type == "LineEdit" else value


class TrainWidget(Preloads, WorkerControls, QWidget):
    """Set up, run, stop and resume training, and watch it."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._init_state()
        self.budget = paint_budget(napari_viewer)
        self._previews = LatestOnly(prepare_previews, self._on_previews_ready)
        # what a run imports before its first step (torch's compiler among them: seconds of imports in
        # stretches that hold the GIL), imported while the form is filled in, not in the run's set-up
        self._schedule_preload(*RUN_IMPORTS)
        layout = QVBoxLayout(self)
        layout.addWidget(self._build_settings_box())
        layout.addWidget(self._build_buttons_row())
        self.progress = QProgressBar()
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        layout.addWidget(self._build_tabs(napari_viewer))
        self._update_buttons()

    def _init_state(self) -> None:
        self.state = "idle"
        self.worker = None
        self.run_dir: Path | None = None
        self.last_checkpoint: Path | None = None
        self.latents: np.ndarray | None = None
        self.events: list = []
        self.memory_notes: list[str] = []  # a line per MicroBatchReduced of the run (the GPU ran out of memory)
        self.error: Exception | None = None
        self._t_start = 0.0
        self._steps_total = 0
        self._steps_done = 0
        self._start_epoch = 0
        self._heavy: dict[str, int] = {}  # event name -> index in ``events`` of the newest one
        self.pending_previews = None  # prepared previews the canvas could not afford to paint yet

    def _build_settings_box(self) -> QGroupBox:
        """The TrainConfig form (scrolling) and the device menu."""
        box = QGroupBox("Settings")
        bl = QVBoxLayout(box)
        self.form = config_form(TrainConfig, skip=FROM_SESSION + ("device",))
        # torch takes every core by default; in the GUI one is left for the window (and for
        # software OpenGL), else the GUI thread waits its turn behind the training's threads
        _set_form(self.form, "threads", max(1, (os.cpu_count() or 2) - 1))
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form.native)
        scroll.setMinimumHeight(180)
        bl.addWidget(scroll)
        self.device_box = ComboBox(name="device", choices=self._devices(), value="auto", label="device")
        dev_row = Container(widgets=[self.device_box], labels=True)
        bl.addWidget(dev_row.native)
        return box

    def _build_buttons_row(self) -> QWidget:
        """Start, Stop, Resume and the command button."""
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.resume_btn = QPushButton("Resume")
        self.start_btn.clicked.connect(lambda: self.start())  # not clicked(bool) into resume
        self.stop_btn.clicked.connect(self.stop)
        self.resume_btn.clicked.connect(self.resume)
        self.command_btn = CommandButton()
        for b in (self.start_btn, self.stop_btn, self.resume_btn, self.command_btn):
            hl.addWidget(b)
        return row

    def _build_tabs(self, napari_viewer) -> QTabWidget:
        """The Loss, FSC, Latents and Preview tabs."""
        tabs = QTabWidget()
        # the residual per Fourier coefficient (1 = only noise left), not the loss: the loss grows
        # whenever frequency marching lets more coefficients into the data term
        self.loss_plot = CurvePlot(
            "residual per coefficient (1 = noise)", "epoch", "whitened residual", viewer=napari_viewer
        )
        self.fsc_plot = CurvePlot("model FSC", "resolution (1/Å)", "FSC", viewer=napari_viewer)
        self.fsc_plot.getPlotItem().setYRange(-0.1, 1.05)
        self.latent_plot = LatentScatter("latents (axes 0, 1)", "z0", "z1", viewer=napari_viewer)
        tabs.addTab(self.loss_plot, "Loss")
        tabs.addTab(self.fsc_plot, "FSC")
        tabs.addTab(self.latent_plot, "Latents")
        self.preview_panel = PreviewPanel()
        self.preview_panel.update_btn.clicked.connect(self.update_preview_layers)
        tabs.addTab(self.preview_panel, "Preview")
        tabs.setMinimumHeight(220)
        self.tabs = tabs
        return tabs

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _devices() -> list[str]:
        """auto, cpu and each GPU; the GPUs only once torch is loaded (by the preload worker), so
        opening the widget does not wait the second or two that importing torch takes."""
        import sys

        if "torch" not in sys.modules:
            return ["auto", "cpu"]
        import torch

        return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]

    def _preloaded(self) -> None:  # the GPUs join the list once the preload has loaded torch
        self.device_box.choices = self._devices()

    @property
    def device(self) -> str:
        return self.device_box.value

    @device.setter
    def device(self, value: str) -> None:
        self.device_box.value = value

    @property
    def config(self):
        """The form (plus the session's inputs and the device) as a frozen ``TrainConfig``."""
        values = form_values(TrainConfig, self.form)
        s = self.session
        values.update(
            particles=s.particles_path or "",
            map=s.map_path or "",
            passthrough=s.passthrough_path or None,
            root=s.root or None,
            device=self.device,
        )
        return TrainConfig(**values)

    @config.setter
    def config(self, cfg) -> None:
        names = {w.name for w in self.form}
        for f in dataclasses.fields(cfg):
            if f.name in names:
                _set_form(self.form, f.name, getattr(cfg, f.name))
        if getattr(cfg, "device", None) in self.device_box.choices:
            self.device = cfg.device

    def set_option(self, **values) -> None:
        """Set form fields by name (``widget.set_option(epochs=1, batch=32)``)."""
        for name, value in values.items():
            if name == "device":
                self.device = value
            else:
                _set_form(self.form, name, value)

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.state != "idle"

    def _prepare(self, cfg):
        """Write the session's mesh (with painted masks) into the run folder and point the config at it."""
        if not cfg.particles or not cfg.map:
            raise ValueError("load particles and a consensus map in the Data and mesh widget first")
        if not cfg.out:
            raise ValueError("set the run folder ('out') first")
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        mesh = self.session.mesh
        if mesh is not None and getattr(cfg, "mesh", None) in (None, ""):
            painted = painted_mesh(self.viewer, mesh, self.session.consensus, cfg.rigidity_floor)
            from ..mesh.mesh import save_mesh

            path = save_mesh(painted, out / "mesh.npz")
            cfg = dataclasses.replace(cfg, mesh=str(path))
        if self.session.mask_threshold is not None:  # the mask the Data and mesh widget showed
            cfg = dataclasses.replace(
                cfg, mask_threshold=self.session.mask_threshold, mask_dilate_a=self.session.mask_dilate_a
            )
        return cfg

    def start(self, resume: bool = False) -> None:
        """Start a run with the form's settings (``resume=True``: continue from its last checkpoint)."""
        if self.running:
            show_info("napari-flex3d: a run is already going")
            return
        try:
            cfg = _absolute_paths(self.config)
            if not resume:
                cfg = self._prepare(cfg)
            elif not cfg.out:
                raise ValueError("set the run folder ('out') to resume")
        except Exception as exc:
            show_error(f"napari-flex3d: cannot start training: {exc}")
            return
        # as flex3d train: one job per run folder. Held from here until the worker finishes (a
        # stopped generator is not closed by the worker, so the lock cannot live inside it).
        lock = contextlib.ExitStack()
        try:
            lock.enter_context(folder_lock(cfg.out, "napari-flex3d Train widget"))
        except (ValueError, OSError) as exc:
            self.error = exc
            show_error(f"napari-flex3d: cannot start training: {exc}")
            return
        try:
            self._write_command(cfg, resume)
        except OSError as exc:
            lock.close()
            self.error = exc
            show_error(f"napari-flex3d: cannot start training: {exc}")
            return
        if not resume:
            self.loss_plot.clear_curves()
            self.fsc_plot.clear_curves()
            self.last_checkpoint = None
        self.events = []
        self._heavy = {}
        self.error = None
        self.memory_notes = []  # a line per MicroBatchReduced of this run
        self.run_dir = Path(cfg.out)
        self.session.set(run_dir=self.run_dir)
        self._t_start = time.perf_counter()
        self._steps_done = 0

        def run():
            # imported here, in the worker: the first import takes a second (and a test swaps it per start)
            from ..training import loop

            yield from loop.train_run(cfg, cfg.out, resume=resume)

        self.state = "running"
        self._update_buttons()
        self.progress.setFormat("starting…")
        self.worker = start_worker(run, yielded=self._on_event, errored=self._on_error, finished=self._on_finished)
        self.worker.finished.connect(lock.close)

    def _write_command(self, cfg, resume: bool) -> None:
        """The run as ``flex3d train``: written to the run folder's COMMAND_FILE (a new run) and
        offered by "Copy command" (a resumed run: ``flex3d train --resume RUN``)."""
        from ..config import to_arguments
        from ..io.atomic import COMMAND_FILE, write_command

        if resume:
            self.command_btn.set_command(["flex3d", "train", "--resume", cfg.out])
            return
        argv = ["flex3d", "train", *to_arguments(cfg)]
        path = write_command(Path(cfg.out) / COMMAND_FILE, argv, "the training run started from the Train widget")
        self.command_btn.set_command(argv, path)

    def resume(self) -> None:
        """Continue the run in ``out`` from its last checkpoint."""
        self.start(resume=True)

    def _after_finished(self) -> None:
        ck = f"; last checkpoint {self.last_checkpoint}" if self.last_checkpoint else ""
        self.status_label.setText(self.status_label.text() if self.error else f"{self.progress.format()}{ck}")

    def _update_buttons(self) -> None:
        idle = self.state == "idle"
        self.start_btn.setEnabled(idle and self.form is not None)
        self.resume_btn.setEnabled(idle and self.form is not None)
        self.stop_btn.setEnabled(self.state == "running")

    # ------------------------------------------------------------------ events
    def _on_event(self, ev) -> None:
        name = type(ev).__name__
        if name in HEAVY_EVENTS:  # a long run must not keep every epoch's maps and latents
            if name in self._heavy:
                old = self.events[self._heavy[name]]
                field = "volumes" if name == "PreviewVolumes" else "latents"
                self.events[self._heavy[name]] = dataclasses.replace(old, **{field: np.empty(0, np.float32)})
            self._heavy[name] = len(self.events)
        self.events.append(ev)
        handler = getattr(self, f"_on_{type(ev).__name__}", None)
        if handler is not None:
            handler(ev)

    def _on_SetupProgress(self, ev) -> None:
        """The set-up before the first step (reading, checking images, mesh, first latents): its stage and count."""
        self.progress.setRange(0, max(ev.total, 1))
        self.progress.setValue(min(ev.done, ev.total))
        count = f" {ev.done:,}/{ev.total:,} {ev.unit}" if ev.total else ""
        self.progress.setFormat(f"set-up: {ev.stage}{count}")

    def _on_RunStarted(self, ev) -> None:
        self._t_start = time.perf_counter()  # the ETA counts the steps, not the set-up
        self._start_epoch = ev.start_epoch
        self._steps_total = max(1, (ev.epochs - ev.start_epoch) * ev.steps_per_epoch)
        self.progress.setRange(0, self._steps_total)
        self.progress.setValue(0)
        memory = ""
        if np.isfinite(ev.memory_estimate_mb):  # the estimate the run checked against the free GPU memory
            memory = f", about {ev.memory_estimate_mb / 1024:.2f} GiB per step"
            memory += f" in micro-batches of {ev.micro_batch}" if ev.micro_batch else ""
        self.status_label.setText(
            f"{ev.n_train} training / {ev.n_val} validation particles, box {ev.box} at {ev.apix:.2f} Å, "
            f"{ev.n_vertices} mesh vertices, on {ev.device}{memory}"
        )

    def _on_StepLoss(self, ev) -> None:
        self._steps_done += 1
        self.loss_plot.append("step", ev.epoch + (ev.step + 1) / max(ev.steps_per_epoch, 1), ev.residual)
        self.progress.setValue(min(self._steps_done, self._steps_total))
        elapsed = time.perf_counter() - self._t_start
        left = elapsed / self._steps_done * max(self._steps_total - self._steps_done, 0)
        self.progress.setFormat(f"epoch {ev.epoch + 1}  step {ev.step + 1}/{ev.steps_per_epoch}  ETA {left:,.0f} s")

    def _on_EpochSummary(self, ev) -> None:
        self.loss_plot.append("train (epoch)", ev.epoch + 1, ev.train_residual)
        if np.isfinite(ev.val_residual):
            self.loss_plot.append("validation", ev.epoch + 1, ev.val_residual)
        if np.isfinite(ev.latent_agreement):
            self.latent_plot.set_title(
                f"latents (axes 0, 1), epoch {ev.epoch + 1}: agreement with the last epoch {ev.latent_agreement:.3f}"
            )

    def _on_FSCCurve(self, ev) -> None:
        self.fsc_plot.set_curve(f"epoch {ev.epoch + 1}", ev.frequencies_per_a, ev.fsc)
        self.fsc_plot.set_title(f"model FSC: {ev.resolution_a:.1f} Å at 0.143")

    def _on_LatentSnapshot(self, ev) -> None:
        z = np.asarray(ev.latents, np.float32)
        self.latents = z
        xy = z[:, :2] if z.shape[1] >= 2 else np.column_stack([z[:, 0], np.zeros(len(z), np.float32)])
        self.latent_plot.set_points(xy)
        self.session.set(latents=z)

    def _on_PreviewVolumes(self, ev) -> None:
        # reduced to the preview box and made into thumbnails in a worker; only the newest waits
        self._previews.request(ev.epoch, ev.sigmas, ev.volumes, ev.apix)

    def _on_previews_ready(self, prepared) -> None:
        self.preview_panel.show_thumbnails(prepared)
        if self.budget.affords_volumes():
            swap_into_layers(self.viewer, prepared)
            self.pending_previews = None
        else:  # a repaint would freeze the window for seconds: the user chooses when
            self.pending_previews = prepared
            self.preview_panel.caption.setText(
                self.preview_panel.caption.text() + f"; preview layers wait for the button ({self.budget.describe()})"
            )
        self.preview_panel.update_btn.setEnabled(self.pending_previews is not None)

    def update_preview_layers(self) -> None:
        """Swap the newest previews into the preview layers now (the button)."""
        if self.pending_previews is not None:
            swap_into_layers(self.viewer, self.pending_previews)
            self.pending_previews = None
        self.preview_panel.update_btn.setEnabled(False)

    @property
    def previews_idle(self) -> bool:
        """No preview is being prepared or waiting to be."""
        return self._previews.idle

    def _on_MicroBatchReduced(self, ev) -> None:
        """The GPU ran out of memory: the run goes on in smaller micro-batches (same result); say so."""
        from ..training.progress import format_event

        self.memory_notes.append(format_event(ev))
        self.status_label.setText(self.memory_notes[-1])
        show_info(f"napari-flex3d: {self.memory_notes[-1]}")

    def _on_CheckpointWritten(self, ev) -> None:
        self.last_checkpoint = Path(ev.path)
        self.session.set(checkpoint=self.last_checkpoint)

    def _on_RunFinished(self, ev) -> None:
        self.status_label.setText(f"finished {ev.epochs} epochs in {ev.seconds:.0f} s")


def _absolute_paths(cfg):
    """``cfg`` with its file and folder settings made absolute, so its command runs from any folder."""
    paths = {name: str(Path(value).expanduser().resolve()) for name in ("particles", "map", "mesh", "out",
                                                                        "passthrough", "root")
             if isinstance(value := getattr(cfg, name, None), str) and value}
    return dataclasses.replace(cfg, **paths)
