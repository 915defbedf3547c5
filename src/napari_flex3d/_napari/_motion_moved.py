"""What moved: displacement on a surface, strain along a traversal, displacement per painted region.

The part of ``MotionWidget`` that owns the "What moved" group box. Its jobs are the
module-level functions ``surface_job``, ``traversal_job`` and ``region_job`` (run in a
worker; pure calls of ``analyze.motion``); the GUI thread only puts their arrays into a
Surface layer, an Image layer over the traversal's frames and a table. Imports Qt and napari
notifications; ``analyze.motion`` (torch) only inside the jobs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ._explore_plot import hbox_row
from ._layer_data import default_iso_threshold
from ._session import xyz_a_to_layer_zyx
from ._workers import start_worker

SURFACE_LAYER = "displacement (Å)"
STRAIN_LAYER = "strain along traversal"
SOURCES = ("current point (from the latents' mean)", "traversal (first to last frame)")
SURFACES = ("map iso-surface", "mesh boundary")
DEFAULT_LABELS = "rigid regions"  # the Data and mesh widget's paint layer


def surface_job(model, z, reference, kind: str, level: float | None = None) -> dict:
    """A surface at latent point ``z (K,)`` coloured by how far it moved from ``reference (K,)``.

    ``kind`` "map iso-surface": the canonical map's iso-surface at ``level`` (default
    ``default_iso_threshold``), its vertices moved by the flow at ``z``; "mesh boundary":
    the mesh's outer faces. Returns ``{"vertices": (p, 3) napari world zyx Å, "faces": (f, 3),
    "values": (p,) Å}``.
    """
    import torch

    from ..analyze.motion import boundary_surface, point_motion, vertex_displacement

    box, apix = model.box, model.apix
    if kind == "mesh boundary":
        moved, faces = boundary_surface(model, z)
        with torch.no_grad():
            zs = torch.as_tensor(np.stack([np.ravel(reference), np.ravel(z)]).astype(np.float32))
            d = model.displacements(zs.to(model.vertices_a)).cpu()  # (2, v, 3) Å
        values = vertex_displacement(d[0], d[1]).numpy()
    elif kind == "map iso-surface":
        from skimage.measure import marching_cubes

        with torch.no_grad():
            vol = model.canonical.to_volume(model.canonical_values()).cpu().numpy()  # (N, N, N)
        level = default_iso_threshold(vol) if level is None else float(level)
        if not vol.min() < level < vol.max():
            raise ValueError(f"iso level {level:.4g} is outside the canonical map's range [{vol.min():.4g}, {vol.max():.4g}]")
        verts_zyx, faces, _, _ = marching_cubes(vol, level)  # voxel indices
        xyz_a = (verts_zyx[:, ::-1] - box // 2) * apix  # conventions: voxel box//2 at 0 Å
        moved, values = point_motion(model, xyz_a, z, reference)
    else:
        raise ValueError(f"surface must be one of {SURFACES}, got {kind!r}")
    return {"vertices": xyz_a_to_layer_zyx(moved, box, apix), "faces": np.asarray(faces, np.int64),
            "values": np.asarray(values, np.float32)}


def traversal_job(model, zs) -> dict:
    """``analyze.motion.path_motion`` from the first frame of ``zs (f, K)`` to each, with what
    an export needs: ``zs``, ``apix`` and the canonical map ``(N, N, N)``."""
    import torch

    from ..analyze.motion import path_motion

    motion = path_motion(model, zs)
    with torch.no_grad():
        canonical = model.canonical.to_volume(model.canonical_values()).cpu().numpy()
    return {**motion, "zs": np.asarray(zs, np.float32), "apix": float(model.apix), "canonical": canonical}


def region_job(model, latents, labels, labels_apix: float):
    """``analyze.motion.region_table`` of ``axis_motion``: displacement per painted region and axis."""
    from ..analyze.motion import axis_motion, region_table

    motion = axis_motion(model, latents)
    return region_table(motion["voxel_displacement_a"], model.canonical.points_xyz_a.cpu().numpy(), labels, labels_apix)


class WhatMoved:
    """Mixin of ``MotionWidget``: the "What moved" box.

    State: ``source`` and ``surface_kind`` (menu texts), ``surface_range`` ``(min, max)`` Å
    of the last coloured surface, ``traversal`` (``traversal_job``'s result), ``regions``
    (the region table, a DataFrame), ``labels_layer`` (name of the Labels layer read).
    Actions: ``colour_surface()``, ``strain_along_traversal()``, ``export_strain(folder)``,
    ``region_displacement()``, ``export_regions(path)``.
    """

    surface_range: tuple[float, float] | None = None
    traversal: dict | None = None
    regions = None
    exported: dict | None = None

    def _build_moved_box(self) -> QGroupBox:
        box = QGroupBox("What moved")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        self.source_combo.addItems(SOURCES)
        form.addRow("displacement of", self.source_combo)
        self.surface_combo = QComboBox()
        self.surface_combo.addItems(SURFACES)
        form.addRow("on", self.surface_combo)
        self.surface_btn = QPushButton("Colour surface")
        self.surface_btn.setToolTip("a Surface layer coloured by displacement (Å), at the moved positions")
        self.surface_btn.clicked.connect(self.colour_surface)
        form.addRow(self.surface_btn)
        self.range_label = QLabel("")
        form.addRow(self.range_label)
        self.strain_btn = QPushButton("Strain along traversal")
        self.strain_btn.setToolTip("per-cell strain (0 = rigid) from the first frame of the explorer's "
                                   "'movie along' traversal to each frame, as a volume over the frames")
        self.strain_btn.clicked.connect(self.strain_along_traversal)
        self.export_strain_btn = QPushButton("Export MRC…")
        self.export_strain_btn.setToolTip("strain and displacement maps per frame, the canonical map and a ChimeraX script")
        self.export_strain_btn.clicked.connect(self._export_strain_dialog)
        form.addRow(hbox_row(self.strain_btn, self.export_strain_btn))
        self.labels_combo = QComboBox()
        self.labels_combo.setToolTip("the Labels layer of painted regions (each label value is one region)")
        self.region_btn = QPushButton("Per region")
        self.region_btn.clicked.connect(self.region_displacement)
        self.export_regions_btn = QPushButton("CSV…")
        self.export_regions_btn.clicked.connect(self._export_regions_dialog)
        form.addRow("regions", hbox_row(self.labels_combo, self.region_btn, self.export_regions_btn))
        self.region_table = QTableWidget(0, 5)
        self.region_table.setHorizontalHeaderLabels(["region", "voxels", "axis", "mean Å", "max Å"])
        self.region_table.setMinimumHeight(120)
        form.addRow(self.region_table)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_labels)
        self._refresh_labels()
        return box

    source = property(lambda self: self.source_combo.currentText(), lambda self, v: self.source_combo.setCurrentText(v))
    surface_kind = property(lambda self: self.surface_combo.currentText(),
                            lambda self, v: self.surface_combo.setCurrentText(v))
    labels_layer = property(lambda self: self.labels_combo.currentText(),
                            lambda self, v: self.labels_combo.setCurrentText(v))

    def _job_buttons(self) -> list:
        return [self.surface_btn, self.strain_btn, self.region_btn, self.compare_btn]

    def _update_moved_buttons(self) -> None:
        self.export_strain_btn.setEnabled(self.traversal is not None and self.worker is None)
        self.export_regions_btn.setEnabled(self.regions is not None)

    def _refresh_labels(self, *_) -> None:
        from napari.layers import Labels

        current = self.labels_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        for choice in (current, DEFAULT_LABELS):
            if choice in names:
                self.labels_combo.setCurrentText(choice)
                break

    def _start(self, job, *args, done) -> bool:
        """Run ``job(*args)`` in a worker, ``done(result)`` in the GUI thread; False if busy."""
        if self.worker is not None:
            self.status_label.setText("busy: wait for the running job")
            return False
        self.worker = start_worker(job, *args, returned=done, errored=self._job_failed, finished=self._job_done)
        self._update_buttons()
        return True

    # ------------------------------------------------------------------ displacement on a surface
    def _end_points(self, ex) -> tuple[np.ndarray, np.ndarray]:
        """``(reference, z)``: the latents' mean and the current point, or a traversal's ends."""
        if self.source == SOURCES[1]:
            zs = ex.movie_latents()
            return zs[0], zs[-1]
        z = ex.z if ex.z is not None else ex.latents.mean(0)
        return ex.latents.mean(0), np.asarray(z, np.float32)

    def colour_surface(self) -> None:
        """Colour a surface at the chosen latent point by its displacement (Å) from the reference."""
        try:
            ex = self._require_run()
            reference, z = self._end_points(ex)
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        self.status_label.setText(f"computing the {self.surface_kind}…")
        self._start(surface_job, ex.run.model, z, reference, self.surface_kind, done=self._show_surface)

    def _show_surface(self, result: dict) -> None:
        values = result["values"]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        self.surface_range = (lo, hi)
        limits = (0.0, max(hi, 1e-6))
        data = (result["vertices"], result["faces"], values)
        if SURFACE_LAYER in self.viewer.layers:
            layer = self.viewer.layers[SURFACE_LAYER]
            layer.data = data
            layer.contrast_limits = limits
        else:
            self.viewer.dims.ndisplay = 3
            self.viewer.add_surface(data, name=SURFACE_LAYER, colormap="turbo", contrast_limits=limits)
        mean = float(values.mean()) if values.size else 0.0
        self.range_label.setText(f"displacement {lo:.1f} – {hi:.1f} Å (mean {mean:.1f} Å); colour: turbo, 0 to {hi:.1f} Å")
        self.status_label.setText(f"{self.surface_kind}: {len(values):,} vertices coloured")

    # ------------------------------------------------------------------ strain along a traversal
    def strain_along_traversal(self) -> None:
        """Strain (and displacement) from the traversal's first frame to each frame, as a 4D layer."""
        try:
            ex = self._require_run()
            zs = ex.movie_latents()
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        self.status_label.setText(f"strain over {len(zs)} frames…")
        self._start(traversal_job, ex.run.model, zs, done=self._show_traversal)

    def _show_traversal(self, result: dict) -> None:
        self.traversal = result
        maps, apix = result["strain_maps"], result["apix"]
        top = max(float(maps.max()), 1e-6)
        if STRAIN_LAYER in self.viewer.layers:
            layer = self.viewer.layers[STRAIN_LAYER]
            layer.data = maps
            layer.scale = (1.0,) + (apix,) * 3
            layer.contrast_limits = (0.0, top)
        else:
            self.viewer.dims.ndisplay = 3
            self.viewer.add_image(maps, name=STRAIN_LAYER, scale=(1.0,) + (apix,) * 3, rendering="mip",
                                  colormap="inferno", contrast_limits=(0.0, top), blending="additive")
        self.viewer.dims.set_current_step(0, len(maps) - 1)  # frame 0 is the reference: all zero
        peak = result["cell_strain"].max(1)
        self.status_label.setText(
            f"strain over {len(maps)} frames (slider 0 = first frame): largest {top:.3f} at frame {int(peak.argmax())}, "
            f"largest displacement {float(result['vertex_displacement_a'].max()):.1f} Å"
        )
        self._update_buttons()

    def _export_strain_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the strain and displacement maps")
        if folder:
            self.export_strain(folder)

    def export_strain(self, folder) -> None:
        """Write the traversal's strain and displacement maps (MRC per frame) and a ChimeraX script."""
        from ..analyze.motion import write_traversal_motion

        t = self.traversal
        if t is None:
            show_error("napari-flex3d: compute 'Strain along traversal' first")
            return
        folder = Path(folder)
        self._start(write_traversal_motion, folder, t, t["zs"], t["apix"], t["canonical"], done=self._exported)

    def _exported(self, paths: dict) -> None:
        self.exported = paths
        self.status_label.setText(f"{len(paths['strain'])} strain and displacement frames written; in ChimeraX: "
                                  f"open {paths['script']}")

    # ------------------------------------------------------------------ displacement per painted region
    def region_displacement(self) -> None:
        """Mean and largest displacement of each painted region along each latent axis (a table)."""
        try:
            ex = self._require_run()
            name = self.labels_layer
            if not name or name not in self.viewer.layers:
                raise ValueError("paint regions first: 'Paint regions' in the Data and mesh widget adds a Labels layer")
            layer = self.viewer.layers[name]
            labels = np.asarray(layer.data)
            if not labels.any():
                raise ValueError(f"the Labels layer {name!r} is empty: paint one label value per region")
        except ValueError as exc:
            show_error(f"napari-flex3d: {exc}")
            return
        self.status_label.setText(f"displacement per region of {name!r}…")
        self._start(region_job, ex.run.model, ex.latents, labels.copy(), float(layer.scale[-1]), done=self._show_regions)

    def _show_regions(self, frame) -> None:
        self.regions = frame
        self.region_table.setRowCount(len(frame))
        for i, row in enumerate(frame.itertuples(index=False)):
            cells = (str(row.region), f"{row.voxels:,}", row.axis, f"{row.mean_a:.2f}", f"{row.max_a:.2f}")
            for j, text in enumerate(cells):
                self.region_table.setItem(i, j, QTableWidgetItem(text))
        self.status_label.setText(f"{frame['region'].nunique()} regions x {frame['axis'].nunique()} axes "
                                  "(between each axis's mean -/+ 1.5 sd)")
        self._update_buttons()

    def _export_regions_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the region table", "regions.csv", "CSV (*.csv)")
        if path:
            self.export_regions(path)

    def export_regions(self, path) -> Path:
        """Write the region table as CSV (columns region, voxels, axis, mean_a, max_a)."""
        from ..io.atomic import write_text

        if self.regions is None:
            raise ValueError("compute the region table first ('Per region')")
        out = write_text(Path(path), self.regions.to_csv(index=False))
        self.status_label.setText(f"region table written: {out}")
        return out
