"""Data and mesh: particles and consensus map in, solvent mask and tetrahedral mesh out.

State lives in plain attributes (paths, ``threshold``, ``dilate_a``, ``cell_size_a``, ...);
a test sets them and calls ``load_particles()``, ``load_map()``, ``build_mesh()``,
``save_mesh()``, ``load_mesh()`` directly. Compute is the library's (``io``, ``mesh``),
imported inside the methods that use it: ``napari_flex3d.mesh`` pulls in torch, which
napari should not pay for when it merely lists or docks the widget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ..config import RIGIDITY_FLOOR
from ._command import CommandButton
from ._layer_data import default_iso_threshold, read_particle_file
from ._paint_budget import paint_budget
from ._plots import ImagePanel
from ._session import session_for
from ._workers import LatestOnly

MAP_LAYER = "consensus map"
MESH_LAYER = "mesh"
NO_MOTION_LAYER = "no-motion mask"
RIGID_LAYER = "rigid regions"
MONTAGE_COUNT = 8


def montage(images: np.ndarray, columns: int = 4) -> np.ndarray:
    """Tile ``(b, h, w)`` images into one ``(rows*h, columns*w)`` picture, each normalised."""
    b, h, w = images.shape
    rows = -(-b // columns)
    out = np.zeros((rows * h, columns * w), np.float32)
    for i, im in enumerate(images):
        im = (im - im.mean()) / (im.std() + 1e-6)
        r, c = divmod(i, columns)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = im
    return out


def particle_summary(ps) -> dict:
    """Count, box, pixel size, optics groups and half sets of a ``ParticleSet``."""
    half = np.asarray(ps.half_set)
    return {
        "count": len(ps),
        "box": int(ps.box),
        "apix": float(ps.apix),
        "optics_groups": len(ps.optics),
        "half_sets": {int(h): int((half == h).sum()) for h in np.unique(half)},
        "format": getattr(ps, "fmt", "?"),
    }


def _path_row(edit: QLineEdit, caption: str, filt: str) -> QWidget:
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit)
    btn = QPushButton("…")
    btn.setMaximumWidth(28)

    def browse():
        path, _ = QFileDialog.getOpenFileName(row, caption, "", filt)
        if path:
            edit.setText(path)

    btn.clicked.connect(browse)
    lay.addWidget(btn)
    return row


class DataMeshWidget(QWidget):
    """Load particles and a consensus map, design the mask and mesh, paint motion masks."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        paint_budget(napari_viewer)  # its frames are timed from now on
        self.particles = None
        self.mask = None
        self.mesh = None
        self._mesh_recipe = None  # the options the mesh was built with (None: loaded from a file)
        self.worker = None
        self._preview = LatestOnly(self._compute_mesh, self._on_mesh, self._on_mesh_error)

        layout = QVBoxLayout(self)
        for box in (self._particles_box(), self._map_box(), self._mesh_box()):
            layout.addWidget(box)
        layout.addStretch(1)

    def _particles_box(self) -> QGroupBox:
        """Paths of the particles (STAR or .cs, passthrough, root), a summary and a montage."""
        box = QGroupBox("Particles")
        form = QFormLayout(box)
        self._particles_edit = QLineEdit()
        self._passthrough_edit = QLineEdit()
        self._root_edit = QLineEdit()
        form.addRow("STAR / .cs", _path_row(self._particles_edit, "Particles", "Particles (*.star *.cs)"))
        form.addRow("passthrough", _path_row(self._passthrough_edit, "Passthrough", "cryoSPARC (*.cs)"))
        form.addRow("root folder", self._root_edit)
        self._load_particles_btn = QPushButton("Load particles")
        self._load_particles_btn.clicked.connect(self.load_particles)
        form.addRow(self._load_particles_btn)
        self.summary_label = QLabel("no particles loaded")
        self.summary_label.setWordWrap(True)
        form.addRow(self.summary_label)
        self.montage_view = ImagePanel()
        self.montage_view.setMinimumHeight(120)
        self.montage_view.setMaximumHeight(180)
        form.addRow(self.montage_view)
        return box

    def _map_box(self) -> QGroupBox:
        """The consensus map, its threshold and the mask's low-pass, dilation and soft edge."""
        box = QGroupBox("Consensus map and mask")
        form = QFormLayout(box)
        self._map_edit = QLineEdit()
        form.addRow("map", _path_row(self._map_edit, "Consensus map", "MRC (*.mrc *.map)"))
        btn = QPushButton("Load map")
        btn.clicked.connect(self.load_map)
        form.addRow(btn)
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setDecimals(4)
        self.threshold_slider.valueChanged.connect(self._on_threshold)
        form.addRow("threshold", self.threshold_slider)
        self.lowpass_spin = self._spin(10.0, 0.0, 100.0, " Å")
        self.dilate_spin = self._spin(6.0, 0.0, 50.0, " Å")
        self.soft_spin = self._spin(5.0, 0.0, 50.0, " Å")
        form.addRow("low-pass", self.lowpass_spin)
        form.addRow("dilate", self.dilate_spin)
        form.addRow("soft edge", self.soft_spin)
        return box

    def _mesh_box(self) -> QGroupBox:
        """Cell size, build/save/load, the equivalent command line and the paint layers."""
        box = QGroupBox("Mesh")
        form = QFormLayout(box)
        self.cell_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.cell_slider.setRange(2.0, 60.0)
        self.cell_slider.setValue(12.0)
        self.cell_slider.valueChanged.connect(self._on_cell_size)
        form.addRow("cell size (Å)", self.cell_slider)
        self.counts_label = QLabel("vertices: -  cells: -")
        form.addRow(self.counts_label)
        row = QWidget()
        hl = QHBoxLayout(row)
        hl.setContentsMargins(0, 0, 0, 0)
        for text, slot in (("Build mesh", self.build_mesh), ("Save…", self._save_dialog), ("Load…", self._load_dialog)):
            b = QPushButton(text)
            b.clicked.connect(slot)
            hl.addWidget(b)
        self.command_btn = CommandButton()
        hl.addWidget(self.command_btn)
        form.addRow(row)
        paint = QPushButton("Paint no-motion / rigid masks")
        paint.clicked.connect(self.add_paint_layers)
        form.addRow(paint)
        return box

    @staticmethod
    def _spin(value: float, lo: float, hi: float, suffix: str) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(lo, hi)
        s.setDecimals(1)
        s.setValue(value)
        s.setSuffix(suffix)
        return s

    # ------------------------------------------------------------------ plain state
    particles_path = property(lambda self: self._particles_edit.text(), lambda self, v: self._particles_edit.setText(str(v)))
    passthrough_path = property(
        lambda self: self._passthrough_edit.text(), lambda self, v: self._passthrough_edit.setText(str(v or ""))
    )
    root = property(lambda self: self._root_edit.text(), lambda self, v: self._root_edit.setText(str(v or "")))
    map_path = property(lambda self: self._map_edit.text(), lambda self, v: self._map_edit.setText(str(v)))
    lowpass_a = property(lambda self: self.lowpass_spin.value(), lambda self, v: self.lowpass_spin.setValue(float(v)))
    dilate_a = property(lambda self: self.dilate_spin.value(), lambda self, v: self.dilate_spin.setValue(float(v)))
    soft_pad_a = property(lambda self: self.soft_spin.value(), lambda self, v: self.soft_spin.setValue(float(v)))

    @property
    def threshold(self) -> float:
        return float(self.threshold_slider.value())

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.threshold_slider.setValue(float(value))

    @property
    def cell_size_a(self) -> float:
        return float(self.cell_slider.value())

    @cell_size_a.setter
    def cell_size_a(self, value: float) -> None:
        self.cell_slider.setValue(float(value))

    @property
    def busy(self) -> bool:
        return not self._preview.idle

    # ------------------------------------------------------------------ particles
    def load_particles(self) -> None:
        """Read ``particles_path`` (with ``passthrough_path`` and ``root``) into the session."""
        if not self.particles_path:
            show_error("napari-flex3d: choose a STAR or .cs particle file first")
            return
        try:
            ps = read_particle_file(self.particles_path, passthrough=self.passthrough_path or None, root=self.root or None)
        except Exception as exc:
            show_error(f"napari-flex3d: cannot read {self.particles_path}: {exc}")
            return
        self.set_particles(ps)

    def set_particles(self, ps) -> None:
        """Show the summary and a montage of ``ps`` and share it with the other widgets."""
        from ..io.half_sets import half_set_name

        self.particles = ps
        s = particle_summary(ps)
        halves = ", ".join(f"{'unknown' if k < 0 else 'half ' + half_set_name(k)}: {v}" for k, v in s["half_sets"].items())
        self.summary_label.setText(
            f"{s['count']} particles ({s['format']}), box {s['box']} px, {s['apix']:.3f} Å/px, "
            f"{s['optics_groups']} optics group(s); {halves}"
        )
        n = min(MONTAGE_COUNT, len(ps))
        if n:
            idx = np.linspace(0, len(ps) - 1, n).round().astype(np.int64)
            try:
                self.montage_view.show_image(montage(np.asarray(ps.images(idx), np.float32)).T)
            except (ValueError, FileNotFoundError, OSError) as exc:  # metadata without its stacks
                self.montage_view.clear_image()
                self.summary_label.setText(self.summary_label.text() + f"\nimages not found: {exc}")
        self.session.set(
            particles=ps, particles_path=self.particles_path, passthrough_path=self.passthrough_path, root=self.root
        )

    # ------------------------------------------------------------------ map
    def load_map(self) -> None:
        """Read ``map_path`` and show it as an iso-surface."""
        if not self.map_path:
            show_error("napari-flex3d: choose a consensus map first")
            return
        try:
            from ..io.mrc import read_map

            m = read_map(self.map_path)
            apix = m.require_apix() if hasattr(m, "require_apix") else float(m.apix)
        except Exception as exc:
            show_error(f"napari-flex3d: cannot read {self.map_path}: {exc}")
            return
        self.set_map(m.data, apix, path=self.map_path)

    def set_map(self, data: np.ndarray, apix: float, path: str = "") -> None:
        """Use ``data (d, h, w)`` at ``apix`` Å as the consensus map (layer + session)."""
        data = np.asarray(data, np.float32)
        if path:
            self.map_path = path
        if MAP_LAYER in self.viewer.layers:
            layer = self.viewer.layers[MAP_LAYER]
            layer.data = data
            layer.scale = (apix,) * 3
        else:
            layer = self.viewer.add_image(data, name=MAP_LAYER, scale=(apix,) * 3, rendering="iso", colormap="gray")
        layer.metadata["apix"] = float(apix)
        lo, hi = float(data.min()), float(data.max())
        self.threshold_slider.blockSignals(True)
        self.threshold_slider.setRange(lo, hi)
        self.threshold_slider.setValue(default_iso_threshold(data))
        self.threshold_slider.blockSignals(False)
        layer.iso_threshold = self.threshold
        self.viewer.dims.ndisplay = 3
        self.session.set(consensus=data, apix=float(apix), map_path=self.map_path)

    def _on_threshold(self, value: float) -> None:
        if MAP_LAYER in self.viewer.layers:
            self.viewer.layers[MAP_LAYER].iso_threshold = float(value)

    def _on_cell_size(self, _value: float) -> None:
        if self.session.consensus is not None and self.mesh is not None:
            self.build_mesh()  # live: counts and wireframe follow the slider (newest request wins)

    # ------------------------------------------------------------------ mask and mesh
    def _compute_mesh(self, volume, apix, threshold, lowpass_a, dilate_a, soft_pad_a, cell_size_a):
        from ..mesh.build import build_mesh
        from ..mesh.masks import solvent_mask

        mask = solvent_mask(
            volume, apix, threshold=threshold, lowpass_a=lowpass_a or None, dilate_a=dilate_a, soft_pad_a=soft_pad_a
        )
        mesh = build_mesh(mask.binary, apix, cell_size_a=cell_size_a)
        # how it was made: the options of `flex3d mesh` that rebuild it (lowpass 0 means none)
        recipe = dict(apix=apix, threshold=threshold, lowpass_a=lowpass_a or 0.0, dilate_a=dilate_a,
                      cell_size_a=cell_size_a)
        return mask, mesh, recipe

    def build_mesh(self) -> None:
        """Mask the map at ``threshold`` and mesh it at ``cell_size_a`` in a worker."""
        if self.session.consensus is None:
            show_error("napari-flex3d: load a consensus map first")
            return
        self.counts_label.setText("building…")
        self._preview.request(
            self.session.consensus,
            self.session.apix,
            self.threshold,
            self.lowpass_a,
            self.dilate_a,
            self.soft_pad_a,
            self.cell_size_a,
        )
        self.worker = self._preview.worker

    def _on_mesh_error(self, exc) -> None:
        self.counts_label.setText(f"mesh failed: {exc}")

    def _on_mesh(self, result) -> None:
        mask, mesh, recipe = result
        self.mask = mask
        self.set_mesh(mesh)
        self._mesh_recipe = recipe
        self.session.set(mask=mask, mask_threshold=float(mask.threshold_used), mask_dilate_a=self.dilate_a)

    def set_mesh(self, mesh) -> None:
        """Show ``mesh`` as a wireframe surface over the map and share it."""
        from ..mesh.mesh import surface_triangles

        self.mesh = mesh
        self.counts_label.setText(f"vertices: {mesh.n_vertices:,}  cells: {mesh.n_cells:,}")
        faces = surface_triangles(mesh)
        verts = mesh.vertices_zyx_vox().astype(np.float32)
        values = np.ones(len(verts), np.float32)
        scale = (mesh.apix,) * 3
        if MESH_LAYER in self.viewer.layers:
            layer = self.viewer.layers[MESH_LAYER]
            layer.data = (verts, faces, values)
        else:
            layer = self.viewer.add_surface(
                (verts, faces, values), name=MESH_LAYER, scale=scale, colormap="cyan", opacity=0.25, shading="none"
            )
            layer.wireframe.visible = True
            layer.wireframe.color = "cyan"
        self.session.set(mesh=mesh)

    def save_mesh(self, path) -> Path:
        """Write the current mesh (with the painted masks applied) to ``path`` (.npz).

        A mesh built here is finished as ``flex3d mesh`` finishes it (rigidity weights from the
        low-passed map, the painted labels saved as MRC files beside it) and the equivalent
        command is written to ``<stem>_command.sh`` and offered by "Copy command"."""
        if self.mesh is None:
            raise ValueError("no mesh to save: build or load one first")
        from ..mesh.mesh import save_mesh

        path = Path(path).expanduser().resolve()
        if self._mesh_recipe is None or not self.session.map_path:  # loaded from a file: no command to give
            out = save_mesh(self.mesh_with_paint(), path)
            self.command_btn.set_command(None)
        else:
            out = self._save_with_command(path)
        show_info(f"napari-flex3d: mesh saved to {out}")
        return Path(out)

    def _save_with_command(self, path: Path) -> Path:
        from ..config import command_line
        from ..io.atomic import write_command
        from ..io.mrc import write_map
        from ..mesh.from_map import finish_mesh
        from ..mesh.mesh import save_mesh

        recipe = dict(self._mesh_recipe)
        apix = recipe.pop("apix")
        labels = {}
        for option, layer in (("rigid_labels", RIGID_LAYER), ("no_motion_labels", NO_MOTION_LAYER)):
            volume = painted(self.viewer, layer)
            if volume is not None:
                labels[option] = volume.astype(np.int8)
                label_path = path.with_name(f"{path.stem}_{option}.mrc")
                write_map(label_path, labels[option], apix, label=f"napari-flex3d {layer} painted for {path.name}")
                recipe[option] = str(label_path)
        mesh = finish_mesh(self.mesh, self.mask, rigidity_floor=RIGIDITY_FLOOR, rigid_labels=labels.get("rigid_labels"),
                           no_motion_labels=labels.get("no_motion_labels"))
        out = save_mesh(mesh, path)
        argv = command_line("mesh", map=str(Path(self.session.map_path).expanduser().resolve()), out=str(out),
                            apix=apix, rigidity_floor=RIGIDITY_FLOOR, **recipe)
        script = write_command(path.with_name(f"{path.stem}_command.sh"), argv,
                               f"the mesh {path.name} saved from the Data and mesh widget")
        self.command_btn.set_command(argv, script)
        return Path(out)

    def load_mesh(self, path) -> None:
        """Read a mesh written by ``save_mesh`` and show it."""
        from ..mesh.mesh import load_mesh

        self.set_mesh(load_mesh(path))
        self._mesh_recipe = None

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save mesh", "mesh.npz", "Mesh (*.npz)")
        if path:
            try:
                self.save_mesh(path)
            except Exception as exc:
                show_error(f"napari-flex3d: {exc}")

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load mesh", "", "Mesh (*.npz)")
        if path:
            try:
                self.load_mesh(path)
            except Exception as exc:
                show_error(f"napari-flex3d: {exc}")

    # ------------------------------------------------------------------ painted masks
    def add_paint_layers(self) -> None:
        """Add empty Labels layers to paint where motion is forbidden and which regions are rigid."""
        if self.session.consensus is None:
            show_error("napari-flex3d: load a consensus map first")
            return
        shape = self.session.consensus.shape
        scale = (self.session.apix,) * 3
        for name, colour in ((NO_MOTION_LAYER, "red"), (RIGID_LAYER, "yellow")):
            if name not in self.viewer.layers:
                layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name=name, scale=scale, opacity=0.5)
                layer.brush_size = 6
        self.viewer.layers.selection.active = self.viewer.layers[NO_MOTION_LAYER]
        self.viewer.layers[NO_MOTION_LAYER].mode = "paint"

    def mesh_with_paint(self):
        """The mesh with the painted no-motion and rigid masks applied."""
        return painted_mesh(self.viewer, self.mesh, self.session.consensus)


def painted(viewer, name: str) -> np.ndarray | None:
    """The ``(d, h, w)`` bool volume painted in layer ``name`` (``None`` if absent or empty)."""
    if name not in viewer.layers:
        return None
    data = np.asarray(viewer.layers[name].data) > 0
    return data if data.any() else None


def painted_mesh(viewer, mesh, density: np.ndarray | None = None, rigidity_floor: float = RIGIDITY_FLOOR):
    """``mesh`` with the viewer's painted masks applied (``mesh.rigidity``).

    The no-motion layer gives the per-vertex motion mask (0 on painted vertices);
    the rigid layer raises the rigidity weights of the painted cells (from the mesh's
    weights, or the density weights of ``density`` when the mesh has none).
    """
    no_motion, rigid = painted(viewer, NO_MOTION_LAYER), painted(viewer, RIGID_LAYER)
    if mesh is None or (no_motion is None and rigid is None):
        return mesh
    from ..mesh.rigidity import cell_density_weights, motion_mask_from_labels, raise_rigid_cells

    changes = {}
    if no_motion is not None:
        changes["motion_mask"] = motion_mask_from_labels(mesh, no_motion.astype(np.uint8))
    if rigid is not None:
        base = mesh.rigidity_weights
        if base is None:
            if density is None:
                raise ValueError("painting rigid regions needs the consensus map (for the density weights)")
            base = cell_density_weights(mesh, density, min_weight=rigidity_floor)
        changes["rigidity_weights"] = raise_rigid_cells(mesh, base, rigid.astype(np.uint8))
    return mesh.replace(**changes)
