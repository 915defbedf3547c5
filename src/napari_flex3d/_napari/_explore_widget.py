"""Latent explorer: click the latent scatter or drag one slider per axis to see the volume.

State: ``run_dir``, ``latents (n, K)``, ``axes`` (the two axes shown), ``use_pca``,
``z (K,)`` (current latent), ``mode`` ("volume" | "path" | "lasso"), ``path (m, K)``,
``polygon`` (plot coordinates), ``preview_box``. Actions: ``open_run()``,
``click(x, y)``, ``set_axis_value(k, v)``, ``play_path()``, ``export_movie(path)``,
``export_series(folder)``, ``export_subset(path)``. Volumes come from the library
(``explore``); rendering is done in thread workers, newest request first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ._library import MissingPiece, piece
from ._plots import LatentScatter
from ._session import session_for
from ._workers import LatestOnly, start_worker

VOLUME_LAYER = "latent volume"


def latent_view(latents: np.ndarray, axes: tuple[int, int], use_pca: bool):
    """2D coordinates shown in the plot, and the map back from a plot point to a latent.

    Returns ``(xy (n, 2), to_latent(x, y, base (K,)) -> (K,), from_latent(z (m, K)) -> (m, 2))``.
    With ``use_pca`` the plot shows the first two principal components of ``latents``.
    """
    z = np.asarray(latents, np.float64)
    k = z.shape[1]
    if use_pca and k > 2:
        mean = z.mean(axis=0)
        _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
        basis = vt[:2]  # (2, K) orthonormal rows

        def from_latent(p):
            return (np.atleast_2d(p) - mean) @ basis.T

        def to_latent(x, y, base):
            b = np.asarray(base, np.float64)
            b = b - ((b - mean) @ basis.T) @ basis  # keep what lies off the plotted plane
            return (b + x * basis[0] + y * basis[1]).astype(np.float32)

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


def points_in_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``xy (n, 2)`` inside ``polygon (m, 2)`` (m >= 3)."""
    from matplotlib.path import Path as MplPath

    return np.nonzero(MplPath(np.asarray(polygon, float)).contains_points(np.asarray(xy, float)))[0]


def interpolate_path(path: np.ndarray, n_frames: int) -> np.ndarray:
    """``n_frames`` latents ``(n_frames, K)`` evenly spaced by arc length along ``path (m, K)``."""
    path = np.asarray(path, np.float64)
    if len(path) == 1:
        return np.repeat(path, n_frames, axis=0).astype(np.float32)
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0.0, s[-1], n_frames)
    return np.stack([np.interp(t, s, path[:, k]) for k in range(path.shape[1])], axis=1).astype(np.float32)


class RunHandle:
    """A trained run loaded once (``explore.generate.load_generator``) for fast repeated volumes."""

    def __init__(self, run_dir):
        import torch

        self._torch = torch
        self.run_dir = Path(run_dir)
        self.model, latents = piece("explore.generate", "load_generator")(run_dir)
        self.latents = latents.cpu().numpy().astype(np.float32)
        self.box = int(self.model.box)
        self.apix = float(self.model.apix)

    def volume(self, z, box: int | None = None, kernel: str | None = None) -> tuple[np.ndarray, float]:
        """The convected map at ``z (K,)``: ``(box, box, box)`` float32 and its voxel size in Å.

        ``kernel="linear"`` is the quick preview; ``box`` below the training box Fourier-crops.
        """
        torch = self._torch
        with torch.no_grad():
            zt = torch.as_tensor(np.asarray(z, np.float32).reshape(-1)).to(self.model.vertices_a)
            vol = self.model.volume(zt, kernel=kernel)
            if box is None or box == self.box:
                return vol.cpu().numpy().astype(np.float32), self.apix
            crop = piece("ops.fourier", "fourier_crop_3d")(vol, int(box))
        return crop.cpu().numpy().astype(np.float32), self.apix * self.box / int(box)


class LatentExplorerWidget(QWidget):
    """Scatter of the latents, one slider per axis, paths, movies, series and subsets."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.run = None  # the library's handle on a trained run
        self.run_dir: Path | None = None
        self.latents: np.ndarray | None = None
        self.z: np.ndarray | None = None
        self.path: list[np.ndarray] = []
        self.polygon: list[tuple[float, float]] = []
        self.selection: np.ndarray | None = None
        self.preview_box = 32
        self.refine = True
        self.frames_written: int = 0
        self.last_volume_box: int | None = None
        self.volumes_shown = 0
        self.series_written = None
        self.refined = False
        self._xy = None
        self._to_latent = None
        self._from_latent = None
        self._sliders: list[QLabeledDoubleSlider] = []
        self._play_frames: np.ndarray | None = None
        self._play_i = 0
        self._movie_frames: list[np.ndarray] = []
        self.worker = None
        self._render = LatestOnly(self._compute_volume, self._on_volume, None)

        layout = QVBoxLayout(self)
        box = QGroupBox("Run")
        form = QFormLayout(box)
        self._run_edit = QLineEdit()
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self._run_edit)
        self.open_btn = QPushButton("Open")
        self.open_btn.clicked.connect(lambda: self.open_run())  # not clicked(bool) into run_dir
        hl.addWidget(self.open_btn)
        form.addRow("run folder", row)
        self.info_label = QLabel("no run open")
        self.info_label.setWordWrap(True)
        form.addRow(self.info_label)
        layout.addWidget(box)

        box = QGroupBox("Latent space")
        vl = QVBoxLayout(box)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self.axis_x = QComboBox()
        self.axis_y = QComboBox()
        self.pca_check = QCheckBox("PCA")
        for w in (QLabel("x"), self.axis_x, QLabel("y"), self.axis_y, self.pca_check):
            hl.addWidget(w)
        self.axis_x.currentIndexChanged.connect(self._redraw)
        self.axis_y.currentIndexChanged.connect(self._redraw)
        self.pca_check.toggled.connect(self._redraw)
        vl.addWidget(row)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        self._mode_group = QButtonGroup(self)
        for i, (name, tip) in enumerate(
            (("volume", "click: show the volume there"), ("path", "click: add a path point"), ("lasso", "click: add a polygon vertex"))
        ):
            rb = QRadioButton(name)
            rb.setToolTip(tip)
            rb.setChecked(i == 0)
            self._mode_group.addButton(rb, i)
            hl.addWidget(rb)
        clear = QPushButton("Clear")
        clear.clicked.connect(self.clear_path)
        hl.addWidget(clear)
        vl.addWidget(row)
        self.plot = LatentScatter("latents", "z0", "z1", viewer=napari_viewer)
        self.plot.setMinimumHeight(260)
        self.plot.clicked.connect(self.click)
        vl.addWidget(self.plot)
        self.slider_box = QWidget()
        self.slider_form = QFormLayout(self.slider_box)
        vl.addWidget(self.slider_box)
        layout.addWidget(box)

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
        self.preview_spin.valueChanged.connect(lambda v: setattr(self, "preview_box", int(v)))
        form.addRow("preview box", self.preview_spin)
        self.traverse_combo = QComboBox()
        self.traverse_combo.addItem("drawn path")
        form.addRow("movie along", self.traverse_combo)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        for text, slot in (
            ("Play", self.play_path),
            ("Movie…", self._movie_dialog),
            ("Series…", self._series_dialog),
            ("Subset…", self._subset_dialog),
        ):
            b = QPushButton(text)
            b.clicked.connect(slot)
            hl.addWidget(b)
        form.addRow(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        form.addRow(self.status_label)
        layout.addWidget(box)
        layout.addStretch(1)

        self._timer = QTimer(self)
        self._timer.setInterval(80)
        self._timer.timeout.connect(self._play_step)
        self.session.changed.connect(self._on_session)
        if self.session.run_dir is not None:
            self.run_dir_text = str(self.session.run_dir)

    # ------------------------------------------------------------------ plain state
    run_dir_text = property(lambda self: self._run_edit.text(), lambda self, v: self._run_edit.setText(str(v)))

    @property
    def mode(self) -> str:
        return ("volume", "path", "lasso")[self._mode_group.checkedId()]

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode_group.button(("volume", "path", "lasso").index(value)).setChecked(True)

    @property
    def axes(self) -> tuple[int, int]:
        return self.axis_x.currentIndex(), self.axis_y.currentIndex()

    @axes.setter
    def axes(self, value: tuple[int, int]) -> None:
        self.axis_x.setCurrentIndex(int(value[0]))
        self.axis_y.setCurrentIndex(int(value[1]))

    @property
    def use_pca(self) -> bool:
        return self.pca_check.isChecked()

    @use_pca.setter
    def use_pca(self, value: bool) -> None:
        self.pca_check.setChecked(bool(value))

    @property
    def n_frames(self) -> int:
        return self.frames_spin.value()

    @n_frames.setter
    def n_frames(self, value: int) -> None:
        self.frames_spin.setValue(int(value))

    @property
    def idle(self) -> bool:
        return self._render.idle and self.worker is None

    def _on_session(self, name: str) -> None:
        if name == "run_dir" and self.session.run_dir is not None and not self.run_dir_text:
            self.run_dir_text = str(self.session.run_dir)

    # ------------------------------------------------------------------ run
    def open_run(self, run_dir=None) -> None:
        """Open a trained run (``run_dir`` or the folder typed in the box) and plot its latents."""
        if run_dir is not None:
            self.run_dir_text = str(run_dir)
        try:
            self.run = RunHandle(self.run_dir_text)
        except Exception as exc:
            show_error(f"napari-flex3d: cannot open run {self.run_dir_text!r}: {exc}")
            return
        self.run_dir = Path(self.run_dir_text)
        self.set_latents(np.asarray(self.run.latents, np.float32))
        k = self.latents.shape[1]
        self.info_label.setText(
            f"{len(self.latents):,} particles, K = {k}, box {self.run.box} at {self.run.apix:.2f} Å"
        )

    def set_latents(self, latents: np.ndarray) -> None:
        """Show ``latents (n, K)``: axes menus, sliders (±3 std of each axis), the scatter."""
        z = np.asarray(latents, np.float32)
        if z.ndim != 2 or z.shape[0] == 0:
            raise ValueError(f"latents must be (n, K) with n > 0, got {z.shape}")
        self.latents = z
        k = z.shape[1]
        for combo in (self.axis_x, self.axis_y):
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([f"z{i}" for i in range(k)])
            combo.blockSignals(False)
        self.axis_y.setCurrentIndex(min(1, k - 1))
        self.pca_check.setEnabled(k > 2)
        self.traverse_combo.clear()
        self.traverse_combo.addItems(["drawn path"] + [f"axis z{i}" for i in range(k)])
        while self.slider_form.rowCount():
            self.slider_form.removeRow(0)
        self._sliders = []
        std = z.std(axis=0) + 1e-6
        mean = z.mean(axis=0)
        for i in range(k):
            s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            s.setRange(float(mean[i] - 3 * std[i]), float(mean[i] + 3 * std[i]))
            s.setValue(float(mean[i]))
            s.valueChanged.connect(lambda v, i=i: self.set_axis_value(i, v))
            self.slider_form.addRow(f"z{i}", s)
            self._sliders.append(s)
        self.z = mean.astype(np.float32)
        self._redraw()

    def _redraw(self, *_):
        if self.latents is None:
            return
        self._xy, self._to_latent, self._from_latent = latent_view(self.latents, self.axes, self.use_pca)
        self.plot.set_points(self._xy)
        names = ("PC1", "PC2") if self.use_pca and self.latents.shape[1] > 2 else tuple(f"z{a}" for a in self.axes)
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

    # ------------------------------------------------------------------ interaction
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

    def show_latent(self, z, refine: bool | None = None) -> None:
        """Make ``z`` current: cursor, sliders, and the volume (preview box, then refined)."""
        self.z = np.asarray(z, np.float32)
        for i, s in enumerate(self._sliders):
            if abs(s.value() - float(self.z[i])) > 1e-6:
                s.blockSignals(True)
                s.setValue(float(self.z[i]))
                s.blockSignals(False)
        self._draw_overlays()
        if self.run is None:
            return
        self._refine_next = self.refine if refine is None else refine
        self._render.request(self.z.copy(), min(self.preview_box, self.run.box), "linear")

    def _compute_volume(self, z, box, kernel):
        vol, apix = self.run.volume(z, box=box, kernel=kernel)
        return z, box, kernel, vol, apix

    def _on_volume(self, result) -> None:
        z, box, kernel, vol, apix = result
        self.last_volume_box = box
        self.volumes_shown += 1
        if VOLUME_LAYER in self.viewer.layers:
            layer = self.viewer.layers[VOLUME_LAYER]
            layer.data = vol
            layer.scale = (apix,) * 3
        else:
            from ._reader import default_iso_threshold

            self.viewer.dims.ndisplay = 3  # before the layer: it is sliced and drawn once, in 3D
            layer = self.viewer.add_image(
                vol, name=VOLUME_LAYER, scale=(apix,) * 3, rendering="iso", colormap="turbo",
                iso_threshold=default_iso_threshold(vol),
            )
        layer.metadata.update(apix=float(apix), latent=np.asarray(z).tolist())
        refined = box == self.run.box and kernel is None
        self.refined = refined
        if self._refine_next and not refined and self._render._pending is None and np.array_equal(z, self.z):
            self._refine_next = False
            self._render.request(z, int(self.run.box), None)

    _refine_next = False

    def clear_path(self) -> None:
        self.path = []
        self.polygon = []
        self._draw_overlays()

    # ------------------------------------------------------------------ path, animation
    def movie_latents(self, along: str | None = None) -> np.ndarray:
        """The ``(n_frames, K)`` latents of a movie: the drawn path or an axis traversal (±1.5 std)."""
        along = along or self.traverse_combo.currentText()
        if along.startswith("axis"):
            k = int(along.split("z")[-1])
            zs = np.repeat(self.latents.mean(axis=0, keepdims=True), self.n_frames, axis=0)
            std = float(self.latents[:, k].std())
            zs[:, k] += np.linspace(-1.5 * std, 1.5 * std, self.n_frames)
            return zs.astype(np.float32)
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

    # ------------------------------------------------------------------ exports
    def _series_volumes(self, zs: np.ndarray, box: int | None):
        for i, z in enumerate(zs):
            yield i, z, self.run.volume(z, box=box)[0]

    def export_movie(self, path, along: str | None = None, fps: int = 10, box: int | None = None) -> None:
        """Write an mp4 or gif of the volume along the path (or an axis) beside the latent plot."""
        if self.run is None:
            show_error("napari-flex3d: open a trained run first")
            return
        path = Path(path)
        if path.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"{path}: a movie must be .mp4 or .gif")
        zs = self.movie_latents(along)
        self._movie_frames = []
        self.status_label.setText(f"rendering {len(zs)} frames…")

        state = {"finished": False, "written": False}

        def maybe_write():
            # frames and the end of the worker may arrive in either order (slots can nest)
            if state["finished"] and not state["written"] and len(self._movie_frames) == len(zs):
                state["written"] = True
                self._write_movie(path, self._movie_frames, fps)
                self.worker = None

        def on_frame(item):
            i, z, vol = item
            self._movie_frames.append(self._compose_frame(z, vol))
            self.status_label.setText(f"frame {len(self._movie_frames)}/{len(zs)}")
            maybe_write()

        def on_done():
            state["finished"] = True
            maybe_write()

        def on_error(exc):
            state["written"] = True  # nothing to write
            self.worker = None

        box = min(box or self.preview_box, self.run.box)
        self.worker = start_worker(
            self._series_volumes, zs, box, yielded=on_frame, finished=on_done, errored=on_error
        )

    def _compose_frame(self, z, vol: np.ndarray, height: int = 256) -> np.ndarray:
        """One ``(h, w, 3)`` uint8 frame: the volume's projection beside the plot with its cursor."""
        proj = vol.sum(axis=0)  # (h, w): projection along z
        lo, hi = np.percentile(proj, [1, 99.9])
        img = np.clip((proj - lo) / max(hi - lo, 1e-9), 0, 1)
        rep = max(1, height // img.shape[0])
        img = np.kron(img[::-1], np.ones((rep, rep)))  # y up, like the plot
        left = (np.repeat(img[..., None], 3, axis=2) * 255).astype(np.uint8)
        x, y = self._from_latent(z)[0]
        self.plot.set_cursor(x, y)
        right = _qimage_to_array(self.plot.grab().toImage())
        right = _resize_nearest(right, left.shape[0])
        frame = np.concatenate([left, right], axis=1)
        h, w = frame.shape[:2]
        return np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])  # even sizes for yuv420p

    def _write_movie(self, path: Path, frames: list[np.ndarray], fps: int) -> None:
        import imageio.v2 as imageio

        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".gif":
            imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(path, frames, fps=fps, codec="libx264", quality=7, macro_block_size=1)
        self.frames_written = len(frames)
        self.status_label.setText(f"wrote {path} ({len(frames)} frames)")
        show_info(f"napari-flex3d: wrote {path}")

    def export_series(self, folder, along: str | None = None, box: int | None = None) -> None:
        """Write the volumes along the path (or an axis) as MRC files plus a ChimeraX ``.cxc``."""
        if self.run is None:
            show_error("napari-flex3d: open a trained run first")
            return
        zs = self.movie_latents(along)
        write_series = piece("explore.series", "write_volume_series")
        run = self.run

        def job():
            vols = [run.volume(z, box=box) for z in zs]
            labels = ["flex3d z=" + ",".join(f"{v:.3f}" for v in z) for z in zs]
            return write_series(np.stack([v for v, _ in vols]), vols[0][1], folder, prefix="frame", labels=labels)

        def done(result):
            self.series_written = result
            self.status_label.setText(f"wrote {len(result[0])} maps and {Path(result[1]).name} to {folder}")

        self.worker = start_worker(job, returned=done, finished=lambda: setattr(self, "worker", None))

    def select_polygon(self) -> np.ndarray:
        """Indices of the particles inside the drawn polygon (plot coordinates)."""
        if len(self.polygon) < 3:
            raise ValueError("draw a polygon first: choose 'lasso' and click three or more points")
        self.selection = points_in_polygon(self._xy, np.array(self.polygon))
        self.status_label.setText(f"{len(self.selection):,} particles selected")
        return self.selection

    def export_subset(self, path) -> Path:
        """Write the particles inside the polygon as STAR or .cs (by suffix), pointing at the originals."""
        ps = self.session.particles
        if ps is None:
            ps = getattr(self.run, "particles", None)
        if ps is None:
            raise ValueError("no particle set: load the particles in the Data and mesh widget")
        if len(ps) != len(self.latents):
            raise ValueError(f"{len(ps)} particles but {len(self.latents)} latents: not the run's particle set")
        idx = self.select_polygon()
        sub = ps.subset(idx)
        path = Path(path)
        if path.suffix.lower() == ".cs":
            piece("io.particles", "write_cs")(sub, path)
        elif path.suffix.lower() == ".star":
            piece("io.particles", "write_star")(sub, path)
        else:
            raise ValueError(f"{path}: a subset is written as .star or .cs")
        show_info(f"napari-flex3d: wrote {len(idx)} particles to {path}")
        return path

    # ------------------------------------------------------------------ dialogs
    def _movie_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save movie", "movie.mp4", "Movie (*.mp4 *.gif)")
        if path:
            try:
                self.export_movie(path)
            except (ValueError, MissingPiece) as exc:
                show_error(f"napari-flex3d: {exc}")

    def _series_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the volume series")
        if folder:
            try:
                self.export_series(folder)
            except (ValueError, MissingPiece) as exc:
                show_error(f"napari-flex3d: {exc}")

    def _subset_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save subset", "subset.star", "Particles (*.star *.cs)")
        if path:
            try:
                self.export_subset(path)
            except (ValueError, MissingPiece) as exc:
                show_error(f"napari-flex3d: {exc}")


def _qimage_to_array(qimage) -> np.ndarray:
    """A QImage as ``(h, w, 3)`` uint8 RGB."""
    from qtpy.QtGui import QImage

    img = qimage.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits().asstring(h * bpl) if hasattr(img.constBits(), "asstring") else img.constBits(), np.uint8)
    return buf[: h * bpl].reshape(h, bpl)[:, : w * 3].reshape(h, w, 3).copy()


def _resize_nearest(rgb: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize of ``(h, w, 3)`` to ``height`` rows, keeping the aspect ratio."""
    h, w = rgb.shape[:2]
    width = max(2, int(round(w * height / h)))
    rows = np.minimum((np.arange(height) * h / height).astype(int), h - 1)
    cols = np.minimum((np.arange(width) * w / width).astype(int), w - 1)
    return rgb[rows][:, cols]
