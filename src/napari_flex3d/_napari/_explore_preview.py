"""The explorer's volume preview: the map at the current latent as a napari layer, quick then refined.

A request renders at the preview box with the linear kernel first (fast enough to follow a
slider), then, unless a newer request came in, once more at the training box with the
run's kernel. Rendering runs in a thread worker, newest request first (``LatestOnly``);
the maps come from ``explore.generate.RunVolumes``.

How the map is drawn depends on what a 3D frame costs (``_paint_budget``). With a GPU it is
an iso-rendered volume layer. With software OpenGL (Mesa's llvmpipe, cluster desktops
without a GPU) ray-casting a volume takes seconds a frame in the GUI thread (0.9 s at 16³,
4.7 s at 64³ in a 1200x800 window), whatever its box: there the worker also extracts the
iso-surface (marching cubes) and the GUI thread swaps its triangles into a surface layer,
whose frame costs about what an empty canvas does; other 3D volume layers are hidden once
(each visible one would cost seconds a frame) and the status line says so. There a click
or a slider shows the preview-box map only (one frame per update, not two); the "Refine"
button (``refine_now``) asks for the training box. There the surface layer is built with
the run, in the worker that reads it (``placeholder_surface``), and added once, unselected,
in an event-loop turn before the latents: the GUI thread pays only napari's insertion. Imports Qt
only through ``._workers``; scikit-image (a napari dependency) in the worker.
"""

from __future__ import annotations

import numpy as np

from ._layer_data import default_iso_threshold
from ._paint_budget import paint_budget
from ._workers import LatestOnly

VOLUME_LAYER = "latent volume"
SURFACE_LAYER = "latent surface"
SURFACE_MAX_BOX = 64  # marching cubes steps over voxels of bigger maps: a frame stays cheap
SURFACE_STYLE = {"name": SURFACE_LAYER, "colormap": "bop orange", "contrast_limits": (0, 1), "shading": "smooth"}


def placeholder_surface(box: int, apix: float):
    """The surface layer before its first map: a napari ``Surface`` of one degenerate triangle
    mid-map (``box / 2 * apix`` Å on each axis). Built off the GUI thread (a worker's job);
    only adding it to the viewer must be in the GUI thread."""
    from napari.layers import Surface

    centre = np.full((3, 3), box / 2 * apix, np.float32)  # (3 vertices, z y x) Å
    return Surface((centre, np.array([[0, 1, 2]], np.int32), np.ones(3, np.float32)), **SURFACE_STYLE)


def add_unselected(viewer, layer) -> None:
    """``viewer.add_layer(layer)`` without making it the selected layer: napari selects a new
    layer and swaps the layer controls to it, a third of what adding a surface costs the GUI
    thread; the user's selection stays. (``_activate_on_insert`` is napari's own switch for
    that; where a napari lacks it the layer is selected as usual.)"""
    layers = viewer.layers
    activate = getattr(layers, "_activate_on_insert", None)
    if activate is not None:
        layers._activate_on_insert = False
    try:
        viewer.add_layer(layer)
    finally:
        if activate is not None:
            layers._activate_on_insert = activate


def iso_surface(vol: np.ndarray, level: float, apix: float, max_box: int = SURFACE_MAX_BOX):
    """Triangles of the ``level`` set of ``vol``: ``(vertices (m, 3) float32 in Å, z y x as the
    map's axes, faces (f, 3) int32)``, or ``None`` when no voxel crosses ``level``."""
    from skimage.measure import marching_cubes

    vol = np.asarray(vol, dtype=np.float32)
    if not float(vol.min()) < level < float(vol.max()):
        return None
    step = max(1, -(-max(vol.shape) // max_box))
    verts, faces, _, _ = marching_cubes(vol, level, step_size=step, allow_degenerate=False)
    if len(faces) == 0:
        return None
    return (verts * apix).astype(np.float32), faces.astype(np.int32)


class VolumePreview:
    """Mixin of ``LatentExplorerWidget``: ``show_latent`` and the layer it updates.

    Uses the host's ``viewer``, ``run`` (a ``RunVolumes`` or ``None``), ``preview_box``,
    ``refine``, ``status_label`` and ``_sync_sliders`` / ``_draw_overlays``; keeps ``z``,
    ``refined``, ``last_volume_box``, ``volumes_shown`` and ``shown_as`` ("volume": the
    ``VOLUME_LAYER`` image; "surface": the ``SURFACE_LAYER`` mesh) up to date.
    """

    _refine_next = False
    shown_as: str | None = None
    hidden_for_surface: list[str] | None = None

    def _init_preview(self) -> None:
        self._render = LatestOnly(self._compute_volume, self._on_volume, None)
        self.budget = paint_budget(self.viewer)
        self._surface_level: float | None = None

    def show_latent(self, z, refine: bool | None = None) -> None:
        """Make ``z`` current: cursor, sliders, and the volume (preview box, then refined)."""
        self.z = np.asarray(z, np.float32)
        self._sync_sliders()
        self._draw_overlays()
        if self.run is None:
            return
        if refine is None:  # automatic: not where each update costs the GUI thread a frame of its own
            refine = self.refine and not self.budget.volumes_slow()
        self._refine_next = refine
        self._request(self.z.copy(), min(self.preview_box, self.run.box), "linear")

    def refine_now(self) -> None:
        """Show the current latent's map at the training box with the run's kernel (the "Refine" button)."""
        if self.run is not None and self.z is not None:
            self._refine_next = False
            self._request(self.z.copy(), int(self.run.box), None)

    def _request(self, z, box: int, kernel) -> None:
        surface = self.budget.volumes_slow()  # decided here, in the GUI thread
        level = None
        if surface and VOLUME_LAYER in self.viewer.layers:  # the level the user set on the volume layer
            level = float(self.viewer.layers[VOLUME_LAYER].iso_threshold)
        elif surface:
            level = self._surface_level
        self._render.request(z, box, kernel, surface, level)

    def _compute_volume(self, z, box, kernel, surface, level):
        """Worker: the map, and its iso-surface when the canvas draws volumes slowly."""
        vol, apix = self.run.volume(z, box=box, kernel=kernel)
        mesh = None
        if surface:
            level = default_iso_threshold(vol) if level is None else level
            mesh = iso_surface(vol, level, apix)
        return z, box, kernel, vol, apix, level, mesh

    def _on_volume(self, result) -> None:
        z, box, kernel, vol, apix, level, mesh = result
        self.last_volume_box = box
        self.volumes_shown += 1
        if level is not None:
            self._surface_level = level
            if mesh is not None:
                layer = self._show_surface(mesh, level)
            else:
                self.status_label.setText(f"no surface at iso level {level:.3g}: the map lies below it")
                layer = None
        else:
            layer = self._show_volume(vol, apix)
        if layer is not None:
            layer.metadata.update(apix=float(apix), latent=np.asarray(z).tolist(), box=int(box))
        refined = box == self.run.box and kernel is None
        self.refined = refined
        # refine only the latest latent, and only once nothing newer waits
        if self._refine_next and not refined and self._render._pending is None and np.array_equal(z, self.z):
            self._refine_next = False
            self._request(z, int(self.run.box), None)

    def _show_volume(self, vol, apix):
        self.shown_as = "volume"
        if VOLUME_LAYER in self.viewer.layers:
            layer = self.viewer.layers[VOLUME_LAYER]
            layer.data = vol
            layer.scale = (apix,) * 3
            return layer
        self.viewer.dims.ndisplay = 3  # before the layer: it is sliced and drawn once, in 3D
        return self.viewer.add_image(
            vol, name=VOLUME_LAYER, scale=(apix,) * 3, rendering="iso", colormap="turbo",
            iso_threshold=default_iso_threshold(vol),
        )

    def surface_wanted(self) -> bool:
        """The surface layer is to be added when a run opens (decided in the GUI thread)."""
        return self.budget.volumes_slow() and SURFACE_LAYER not in self.viewer.layers

    def prepare_view(self, surface=None) -> None:
        """On a canvas that draws volumes slowly, add the surface layer now, in 3D, and hide
        the 3D volume layers: adding a layer and the first frame of a surface (its shaders
        compiled) cost the GUI thread a frame or more, paid when a run is opened rather than at
        the first click. ``surface``: the layer ``placeholder_surface`` built in a worker
        (else built here)."""
        if not self.surface_wanted() or self.run is None:
            return
        self._hide_volumes()
        self.viewer.dims.ndisplay = 3
        add_unselected(self.viewer, surface if surface is not None else placeholder_surface(self.run.box, self.run.apix))

    def _show_surface(self, mesh, level: float):
        """Swap the triangles into the surface layer (added on first use, other volumes hidden then)."""
        verts, faces = mesh
        data = (verts, faces, np.ones(len(verts), np.float32))
        if self.hidden_for_surface is None:
            self._hide_volumes()
        self.shown_as = "surface"
        if SURFACE_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SURFACE_LAYER]
            layer.data = data
        else:
            self.viewer.dims.ndisplay = 3
            layer = self.viewer.add_surface(data, **SURFACE_STYLE)
        layer.metadata["iso_level"] = float(level)
        return layer

    def _hide_volumes(self) -> None:
        """Hide the visible 3D image layers (each costs seconds a frame here); say which, once."""
        hidden = []
        for layer in self.viewer.layers:
            if type(layer).__name__ == "Image" and layer.visible and layer.ndim >= 3 and not layer.rgb:
                layer.visible = False
                hidden.append(layer.name)
        self.hidden_for_surface = hidden
        why = f"software OpenGL, {self.budget.renderer}" if self.budget.software_gl else self.budget.describe()
        text = f"the latent map is drawn as a surface at its iso level ({why}: a volume frame takes seconds)"
        if hidden:
            text += f"; hid {', '.join(repr(n) for n in hidden)} (show again in the layer list: each costs seconds a frame)"
        self.status_label.setText(text)
