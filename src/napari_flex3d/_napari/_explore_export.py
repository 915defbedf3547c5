"""The explorer's exports: a movie along a path or axis, a volume series, a particle subset.

The maps, the series files, the grey scale of the movie's projections and the subset
writer are ``explore``'s (``RunVolumes``, ``write_latent_series``, ``projection_images`` /
``to_uint8``, ``write_subset``), the same code the CLI runs; this module adds what only a
GUI has: the latent plot with its cursor beside each movie frame (the plot grabbed once,
the cursor drawn in the worker), workers and dialogs.
Imports Qt, napari's notifications, ``._workers`` and ``napari_flex3d.explore`` (its torch
part, ``explore.generate``, only when a series is written).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..explore.series import projection_images, to_uint8
from ..explore.subsets import points_in_polygon, write_subset

MOVIE_HEIGHT = 256  # pixels of a movie frame; the projection is enlarged by a whole factor


class ExplorerExports:
    """Mixin of ``LatentExplorerWidget``: ``export_movie``, ``export_series``, ``export_subset``.

    Uses the host's ``run``, ``latents``, ``movie_latents``, ``preview_box``, ``plot``,
    ``_from_latent``, ``_xy``, ``polygon``, ``session``, ``status_label`` and ``background``
    (``._workers.Background``, which starts its workers); sets ``worker``
    while it writes, then ``frames_written`` and ``movie_images`` (the movie's projections,
    ``(f, h, w)`` uint8), ``series_written`` (``(frame paths, script)``) or ``selection``.
    """

    def export_movie(self, path, along: str | None = None, fps: int = 10, box: int | None = None) -> None:
        """Write an mp4 or gif of the volume along the path (or an axis) beside the latent plot.

        The GUI thread grabs the latent plot once (without its cursor) and maps each frame's
        latent to a pixel of that image; the maps, projections, the cursor drawn on each
        frame and the encoding run in a worker.
        """
        if self.run is None:
            show_error("napari-flex3d: open a trained run first")
            return
        path = Path(path)
        if path.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"{path}: a movie must be .mp4 or .gif")
        zs = self.movie_latents(along)
        plot, cursor_px = self._plot_and_cursors(zs)
        box = min(box or self.preview_box, self.run.box)
        self.status_label.setText(f"rendering {len(zs)} frames…")

        def job():
            projections = []
            for i, projection in self._series_projections(zs, box):
                projections.append(projection)
                yield i + 1
            return _encode_movie(path, projections, [_with_cursor(plot, rc) for rc in cursor_px], fps)

        def on_written(images):
            self.movie_images = images
            self.frames_written = len(images)
            self.status_label.setText(f"wrote {path} ({len(images)} frames)")
            show_info(f"napari-flex3d: wrote {path}")

        self.worker = self.background.start(
            job, yielded=lambda i: self.status_label.setText(f"frame {i}/{len(zs)}"), returned=on_written,
            finished=lambda: setattr(self, "worker", None),
        )

    def _series_projections(self, zs: np.ndarray, box: int | None):
        """Worker: ``(i, (h, w) float32 projection)`` per frame, the map made and projected here."""
        for i, z in enumerate(zs):
            yield i, projection_images(self.run.volume(z, box=box)[0][None])[0]

    def _plot_and_cursors(self, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The latent plot without its cursor as ``(h, w, 3)`` uint8 RGB, and the ``(row, column)``
        pixel of that image at each latent of ``zs`` (``(f, 2)``): one grab for the whole movie."""
        from qtpy.QtCore import QPointF

        self.plot.set_cursor(None)
        try:
            image = _qimage_to_array(self.plot.grab().toImage())
        finally:
            self._draw_overlays()  # the cursor back where it was
        vb = self.plot.getPlotItem().vb
        sx = image.shape[1] / max(self.plot.width(), 1)  # grab() is in device pixels
        sy = image.shape[0] / max(self.plot.height(), 1)
        px = []
        for x, y in self._from_latent(np.atleast_2d(zs)):
            p = self.plot.viewport().mapTo(self.plot, self.plot.mapFromScene(vb.mapViewToScene(QPointF(x, y))))
            px.append((p.y() * sy, p.x() * sx))
        return image, np.round(np.array(px)).astype(np.int64)

    def export_series(self, folder, along: str | None = None, box: int | None = None) -> None:
        """Write the volumes along the path (or an axis) as MRC files plus a ChimeraX ``.cxc``."""
        if self.run is None:
            show_error("napari-flex3d: open a trained run first")
            return
        zs = self.movie_latents(along)
        run = self.run

        def job():
            from ..explore.generate import write_latent_series  # torch: not at plugin start-up

            _, _, paths, script = write_latent_series(run, zs, folder, box=box, prefix="frame", label="flex3d")
            return paths, script

        def done(result):
            self.series_written = result
            self.status_label.setText(f"wrote {len(result[0])} maps and {Path(result[1]).name} to {folder}")

        self.worker = self.background.start(job, returned=done, finished=lambda: setattr(self, "worker", None))

    def select_polygon(self) -> np.ndarray:
        """Select the particles inside the drawn polygon (plot coordinates); their indices."""
        if len(self.polygon) < 3:
            raise ValueError("draw a polygon first: choose 'lasso' and click three or more points")
        return self.set_selection(points_in_polygon(self._xy, np.array(self.polygon)), "lasso")

    def _subset_indices(self) -> np.ndarray:
        """The particles an export or reconstruction takes: the drawn polygon's, else the current selection."""
        if len(self.polygon) >= 3:
            idx = self.select_polygon()
        elif self.selection is not None:
            idx = self.selection
        else:
            raise ValueError("nothing selected: draw a lasso (three or more points) or select particles by cluster "
                             "or threshold")
        if len(idx) == 0:
            raise ValueError("the selection is empty: no particle lies inside it")
        return idx

    def export_subset(self, path) -> Path:
        """Write the selected particles (the polygon's, else ``selection``) as STAR or .cs (by suffix),
    pointing at the originals."""
        ps = self.session.particles
        if ps is None:
            ps = getattr(self.run, "particles", None)
        if ps is None:
            raise ValueError("no particle set: load the particles in the Data and mesh widget")
        if len(ps) != len(self.latents):
            raise ValueError(f"{len(ps)} particles but {len(self.latents)} latents: not the run's particle set")
        idx = self._subset_indices()
        path = write_subset(ps, idx, path)
        show_info(f"napari-flex3d: wrote {len(idx)} particles to {path}")
        return path

    # ------------------------------------------------------------------ dialogs
    def _movie_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save movie", "movie.mp4", "Movie (*.mp4 *.gif)")
        _report_errors(self.export_movie, path)

    def _series_dialog(self):
        folder = QFileDialog.getExistingDirectory(self, "Folder for the volume series")
        _report_errors(self.export_series, folder)

    def _subset_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save subset", "subset.star", "Particles (*.star *.cs)")
        _report_errors(self.export_subset, path)


def _report_errors(export, target) -> None:
    """Run ``export(target)`` if a dialog gave a target; a refusal (``ValueError``) becomes a notification."""
    if not target:
        return
    try:
        export(target)
    except ValueError as exc:
        show_error(f"napari-flex3d: {exc}")


def _encode_movie(path: Path, projections: list, plots: list, fps: int) -> np.ndarray:
    """Worker: the frames (projection beside the plot) encoded to ``path``; returns the
    projections as ``(f, h, w)`` uint8 on one grey scale, as the CLI's movie."""
    import os

    import imageio.v2 as imageio

    # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (so that Ctrl-C in a terminal
    # spares it), which makes Python fork() the whole GUI process holding the GIL: the window
    # stalled 0.3-0.6 s at each movie. Without it, subprocess uses vfork (milliseconds).
    os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")

    images = to_uint8(np.stack(projections))
    frames = [_compose_frame(img, plot) for img, plot in zip(images, plots)]
    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:  # a stopped export leaves the previous movie, never half of one
        if path.suffix.lower() == ".gif":
            imageio.mimsave(tmp, frames, duration=1000 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps, codec="libx264", quality=7, macro_block_size=1)
    return images


def _with_cursor(plot: np.ndarray, rc, arm: int = 8) -> np.ndarray:
    """A copy of the plot image ``(h, w, 3)`` with the explorer's cursor (a red "+" outlined in
    white, as ``_plots.LatentScatter`` draws it) centred on pixel ``rc`` (clipped to the image)."""
    out = plot.copy()
    h, w = out.shape[:2]
    r, c = int(rc[0]), int(rc[1])
    for half, colour in ((2, (255, 255, 255)), (1, (229, 57, 53))):  # the white outline, then the red bars
        out[max(r - half, 0):max(min(r + half, h), 0), max(c - arm, 0):max(min(c + arm, w), 0)] = colour
        out[max(r - arm, 0):max(min(r + arm, h), 0), max(c - half, 0):max(min(c + half, w), 0)] = colour
    return out


def _compose_frame(image: np.ndarray, plot: np.ndarray, height: int = MOVIE_HEIGHT) -> np.ndarray:
    """One ``(h, w, 3)`` uint8 frame: the projection ``image (h, w)`` uint8 beside the plot."""
    rep = max(1, height // image.shape[0])
    left = np.kron(image, np.ones((rep, rep), np.uint8))  # nearest-neighbour enlargement
    left = np.repeat(left[..., None], 3, axis=2)
    frame = np.concatenate([left, _resize_nearest(plot, left.shape[0])], axis=1)
    h, w = frame.shape[:2]
    return np.ascontiguousarray(frame[: h - h % 2, : w - w % 2])  # even sizes for yuv420p


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
