"""The Train widget's live preview: thumbnails in the widget, and napari layers updated in place.

Training yields ``PreviewVolumes`` (``(K, S, n, n, n)`` maps at ``S`` sigmas along each latent
axis) once per epoch. ``prepare_previews`` (run in a worker) reduces them to the preview box
and makes one projection thumbnail per map; the GUI thread then only draws the thumbnails
(small images, cheap) and swaps the prepared arrays into the preview layers
(``layer.data = ...``; the layers are added once and never accumulate). When the canvas
cannot afford an automatic repaint (``_paint_budget``: software OpenGL in 3D), the layers
wait for the "Update preview layers" button. Imports Qt, numpy and ``explore.series``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..explore.series import projection_images, to_uint8
from ._layer_data import default_iso_threshold

PREVIEW_PREFIX = "preview"
PREVIEW_BOX = 32  # voxels along an edge of a preview layer (at most)
THUMB_PX = 96  # pixels along an edge of a thumbnail


@dataclass(frozen=True, eq=False)
class PreparedPreviews:
    epoch: int
    sigmas: tuple[float, ...]
    volumes: np.ndarray  # (K, S, m, m, m) float32 at the preview box
    apix: float  # Å per voxel of ``volumes``
    thresholds: np.ndarray  # (K, S) iso levels
    thumbnails: np.ndarray  # (K, S, h, w) uint8 projections along z, one grey scale for all


def prepare_previews(epoch: int, sigmas, volumes: np.ndarray, apix: float, box: int = PREVIEW_BOX) -> PreparedPreviews:
    """``volumes (K, S, n, n, n)`` reduced to at most ``box`` voxels by block means, with iso
    levels and thumbnails; ``apix`` grows by the block factor."""
    vols = np.asarray(volumes, dtype=np.float32)
    k, s, n = vols.shape[:3]
    f = max(1, -(-n // box))  # whole block factor: 64 -> 2, 48 -> 2, 32 -> 1
    m = n // f
    small = vols[..., : m * f, : m * f, : m * f].reshape(k, s, m, f, m, f, m, f).mean(axis=(3, 5, 7))
    small = np.ascontiguousarray(small, dtype=np.float32)
    thresholds = np.array([[default_iso_threshold(small[i, j]) for j in range(s)] for i in range(k)])
    thumbs = to_uint8(projection_images(small.reshape(k * s, m, m, m))).reshape(k, s, m, m)
    return PreparedPreviews(epoch, tuple(sigmas), small, apix * f, thresholds, thumbs)


def preview_name(k: int, sigma: float) -> str:
    return f"{PREVIEW_PREFIX} z{k} {sigma:+g}σ"


def swap_into_layers(viewer, p: PreparedPreviews) -> None:
    """Put the prepared maps into the preview layers: data swapped in place, added on first use
    (axis 0 shown, the others hidden)."""
    for k in range(p.volumes.shape[0]):
        for j, s in enumerate(p.sigmas):
            name = preview_name(k, s)
            if name in viewer.layers:
                layer = viewer.layers[name]
                layer.data = p.volumes[k, j]
                layer.scale = (p.apix,) * 3
            else:
                viewer.add_image(
                    p.volumes[k, j], name=name, scale=(p.apix,) * 3, rendering="iso",
                    iso_threshold=float(p.thresholds[k, j]), colormap="magenta" if s < 0 else "green",
                    blending="additive", visible=(k == 0),
                )


class PreviewPanel(QWidget):
    """Thumbnails of the latest previews (a row per latent axis, a column per sigma) and the
    button that brings the napari preview layers up to date."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.caption = QLabel("previews appear after each epoch")
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self._grid = QGridLayout()
        layout.addLayout(self._grid)
        self.update_btn = QPushButton("Update preview layers")
        self.update_btn.setEnabled(False)
        layout.addWidget(self.update_btn)
        layout.addStretch(1)
        self._labels: dict[tuple[int, int], QLabel] = {}

    def show_thumbnails(self, p: PreparedPreviews) -> None:
        k, s = p.thumbnails.shape[:2]
        for i in range(k):
            for j in range(s):
                label = self._labels.get((i, j))
                if label is None:
                    label = self._labels[(i, j)] = QLabel()
                    label.setToolTip(preview_name(i, p.sigmas[j]))
                    self._grid.addWidget(label, i, j)
                img = np.ascontiguousarray(p.thumbnails[i, j])
                qimg = QImage(img.data, img.shape[1], img.shape[0], img.strides[0], QImage.Format.Format_Grayscale8)
                label.setPixmap(QPixmap.fromImage(qimg.copy()).scaled(THUMB_PX, THUMB_PX))
        sig = ", ".join(f"{v:+g}σ" for v in p.sigmas)
        self.caption.setText(f"epoch {p.epoch + 1}: rows z0..z{k - 1}, columns {sig} (projections along z)")
