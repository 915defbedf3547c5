"""The explorer's volume preview: the map at the current latent as a napari layer, quick then refined.

A request renders at the preview box with the linear kernel first (fast enough to follow a
slider), then, unless a newer request came in, once more at the training box with the
run's kernel. Rendering runs in a thread worker, newest request first (``LatestOnly``);
the maps come from ``explore.generate.RunVolumes``. Imports Qt only through ``._workers``.
"""

from __future__ import annotations

import numpy as np

from ._layer_data import default_iso_threshold
from ._workers import LatestOnly

VOLUME_LAYER = "latent volume"


class VolumePreview:
    """Mixin of ``LatentExplorerWidget``: ``show_latent`` and the volume layer it updates.

    Uses the host's ``viewer``, ``run`` (a ``RunVolumes`` or ``None``), ``preview_box``,
    ``refine`` and ``_sync_sliders`` / ``_draw_overlays``; keeps ``z``, ``refined``,
    ``last_volume_box`` and ``volumes_shown`` up to date.
    """

    _refine_next = False

    def _init_preview(self) -> None:
        self._render = LatestOnly(self._compute_volume, self._on_volume, None)

    def show_latent(self, z, refine: bool | None = None) -> None:
        """Make ``z`` current: cursor, sliders, and the volume (preview box, then refined)."""
        self.z = np.asarray(z, np.float32)
        self._sync_sliders()
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
            self.viewer.dims.ndisplay = 3  # before the layer: it is sliced and drawn once, in 3D
            layer = self.viewer.add_image(
                vol, name=VOLUME_LAYER, scale=(apix,) * 3, rendering="iso", colormap="turbo",
                iso_threshold=default_iso_threshold(vol),
            )
        layer.metadata.update(apix=float(apix), latent=np.asarray(z).tolist())
        refined = box == self.run.box and kernel is None
        self.refined = refined
        # refine only the latest latent, and only once nothing newer waits
        if self._refine_next and not refined and self._render._pending is None and np.array_equal(z, self.z):
            self._refine_next = False
            self._render.request(z, int(self.run.box), None)
