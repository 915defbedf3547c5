"""GUI: manifest, readers, writer, sample data and the Data and mesh widget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_flex3d.config import TrainConfig

pytestmark = pytest.mark.gui

MANIFEST = Path(__file__).resolve().parents[2] / "src" / "napari_flex3d" / "napari.yaml"


def test_manifest_is_valid_and_names_our_commands():
    import npe2

    pm = npe2.PluginManifest.from_file(MANIFEST)
    pm.validate_imports()  # every python_name resolves
    assert pm.name == "napari-flex3d"
    patterns = {p for r in pm.contributions.readers for p in r.filename_patterns}
    assert {"*.mrc", "*.map", "*.mrcs", "*.star", "*.cs"} <= patterns
    assert [w.layer_types for w in pm.contributions.writers] == [["image"]]
    assert [w.display_name for w in pm.contributions.widgets] == [
        "Data and mesh", "Train", "Latent explorer", "Reconstruct", "Motion analysis"]
    assert pm.contributions.sample_data[0].key == "flexible_molecule"


def test_map_reader_gives_iso_surface_at_voxel_size_and_writer_round_trips(make_napari_viewer, sample, tmp_path):
    from napari_flex3d.io.mrc import read_map

    viewer = make_napari_viewer()
    layers = viewer.open(str(sample.consensus), plugin="napari-flex3d")
    layer = layers[0]
    truth = read_map(sample.consensus)
    assert layer.ndim == 3 and layer.rendering == "iso"
    np.testing.assert_allclose(layer.scale, [sample.apix] * 3)
    np.testing.assert_array_equal(np.asarray(layer.data), truth.data)
    # writer: the layer back to MRC keeps the voxel size and the values
    out = tmp_path / "written.mrc"
    viewer.layers.save(str(out), selected=False, plugin="napari-flex3d")
    back = read_map(out)
    assert back.apix == pytest.approx(sample.apix, rel=1e-5)
    np.testing.assert_allclose(back.data, truth.data, rtol=1e-6)


def test_stack_reader_memory_maps_the_particle_images(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    layer = viewer.open(str(sample.particles_mrcs), plugin="napari-flex3d")[0]
    assert layer.data.shape == (sample.n_particles, sample.box, sample.box)
    np.testing.assert_allclose(layer.scale[1:], [sample.apix] * 2)


def test_particle_reader_opens_the_data_widget_with_the_set(make_napari_viewer, sample):
    from napari_flex3d._napari._data_widget import DataMeshWidget

    viewer = make_napari_viewer()
    layer = viewer.open(str(sample.particles_star), plugin="napari-flex3d")[0]
    ps = layer.metadata["particles"]
    assert len(ps) == sample.n_particles
    assert layer.data.shape[1:] == (sample.box, sample.box)
    np.testing.assert_array_equal(layer.data[0], ps.images(np.array([0]))[0])
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DataMeshWidget)]
    assert widgets, "the Data and mesh widget did not open"
    w = widgets[0]
    assert w.particles is ps and str(sample.n_particles) in w.summary_label.text()


def test_data_widget_loads_builds_saves_and_loads_a_mesh(make_napari_viewer, qtbot, sample, tmp_path):
    from napari_flex3d._napari._data_widget import MAP_LAYER, MESH_LAYER, NO_MOTION_LAYER, DataMeshWidget

    viewer = make_napari_viewer()
    w = DataMeshWidget(viewer)
    w.particles_path = str(sample.particles_star)
    w.load_particles()
    assert w.particles is not None and len(w.particles) == sample.n_particles
    assert f"box {sample.box} px" in w.summary_label.text()
    shown = w.montage_view.image_item.image  # 8 images, 4 across, x along axis 0
    assert shown.shape == (4 * sample.box, 2 * sample.box) and shown.std() > 0
    w.map_path = str(sample.consensus)
    w.load_map()
    layer = viewer.layers[MAP_LAYER]
    w.threshold = float(np.percentile(layer.data, 97))
    assert layer.iso_threshold == pytest.approx(w.threshold, rel=1e-3)  # live iso-surface
    w.cell_size_a = 16.0
    w.build_mesh()
    qtbot.waitUntil(lambda: w.mesh is not None and not w.busy, timeout=60_000)
    m = w.mesh
    assert m.n_vertices > 20 and m.n_cells > 20
    assert f"{m.n_vertices:,}" in w.counts_label.text()
    surf = viewer.layers[MESH_LAYER]
    assert surf.wireframe.visible
    # the mesh sits on the map: its vertices span the thresholded density in voxel units
    zyx = np.asarray(surf.data[0])
    assert zyx.min() >= -2 and zyx.max() <= sample.box + 2
    # save and load
    path = w.save_mesh(tmp_path / "mesh.npz")
    w.mesh = None
    w.load_mesh(path)
    np.testing.assert_allclose(w.mesh.vertices_a, m.vertices_a)
    np.testing.assert_array_equal(w.mesh.cells, m.cells)
    # painting layers for the no-motion and rigid masks; painted masks travel with the saved mesh
    from napari_flex3d._napari._data_widget import RIGID_LAYER

    w.add_paint_layers()
    assert viewer.layers[NO_MOTION_LAYER].data.shape == layer.data.shape
    half = sample.box // 2
    viewer.layers[NO_MOTION_LAYER].data[:, :, :half] = 1  # x < centre: no motion
    viewer.layers[RIGID_LAYER].data[:, :, half:] = 1  # x >= centre: rigid
    painted = w.load_mesh(w.save_mesh(tmp_path / "painted.npz")) or w.mesh
    x_vox = painted.vertices_a[:, 0] / painted.apix + half  # vertex x in voxels
    fixed = painted.motion_mask == 0
    assert fixed.any() and np.all(x_vox[fixed] < half + 0.5)  # only painted vertices are fixed
    assert np.all(painted.motion_mask[x_vox > half + 1] == 1)
    cx = painted.centroids_a()[:, 0] / painted.apix + half
    right, left = cx > half + 2, cx < half - 2
    from napari_flex3d.mesh.rigidity import cell_density_weights

    # the weights before painting: the low-passed consensus density's, floored at the training default,
    # as `flex3d mesh` makes them
    base = cell_density_weights(painted, w.mask.lowpassed, min_weight=TrainConfig().rigidity_floor)
    assert right.any() and left.any()
    # painted-rigid cells are 10x as rigid as they were; the others keep their weights
    np.testing.assert_allclose(painted.rigidity_weights[right], 10.0 * base[right], rtol=1e-6)
    np.testing.assert_allclose(painted.rigidity_weights[left], base[left], rtol=1e-6)
    viewer.layers.remove(NO_MOTION_LAYER)
    viewer.layers.remove(RIGID_LAYER)
    w.load_mesh(path)
    # a finer cell size re-meshes live with more cells
    w.cell_size_a = 9.0
    qtbot.waitUntil(lambda: w.mesh is not None and w.mesh.n_cells > m.n_cells and not w.busy, timeout=60_000)


def test_reconstruct_widget_starts_enabled_and_refuses_without_a_run(make_napari_viewer, monkeypatch):
    import napari_flex3d._napari._reconstruct_widget as rw

    errors = []
    monkeypatch.setattr(rw, "show_error", errors.append)
    w = rw.ReconstructWidget(make_napari_viewer())
    assert w.run_btn.isEnabled() and not w.stop_btn.isEnabled()
    w.run_dir = ""
    w.reconstruct()  # nothing to reconstruct: it says why and stays idle, its button enabled
    assert w.state == "idle" and w.run_btn.isEnabled() and w.worker is None
    assert errors and "choose a training run folder" in errors[0]


def test_latent_scatter_switches_to_density_and_stays_fast_for_a_million_points(qtbot):
    import time

    from napari_flex3d._napari._plots import DENSITY_ABOVE, LatentScatter

    plot = LatentScatter("z")
    qtbot.addWidget(plot)
    rng = np.random.default_rng(0)
    plot.set_points(rng.normal(size=(1000, 2)))
    assert plot.mode == "points"
    t0 = time.perf_counter()
    plot.set_points(rng.normal(size=(1_000_000, 2)).astype(np.float32))
    plot.repaint()
    assert plot.mode == "density" and DENSITY_ABOVE < 1_000_000
    assert time.perf_counter() - t0 < 2.0


def test_sample_data_opens_map_particles_and_data_widget(make_napari_viewer, sample, monkeypatch):
    """The sample command's wiring (the simulation itself is the ``sample`` fixture's make_sample)."""
    from napari_flex3d._napari import _sample
    from napari_flex3d._napari._data_widget import MAP_LAYER, DataMeshWidget
    from napari_flex3d._napari._layer_data import read_particle_file
    from napari_flex3d.io.mrc import read_map

    monkeypatch.setattr(
        _sample, "load_sample", lambda: (sample, read_map(sample.consensus), read_particle_file(sample.particles_star))
    )
    viewer = make_napari_viewer()
    viewer.open_sample("napari-flex3d", "flexible_molecule")
    assert MAP_LAYER in viewer.layers and viewer.layers[MAP_LAYER].rendering == "iso"
    np.testing.assert_allclose(viewer.layers[MAP_LAYER].scale, [sample.apix] * 3)
    assert any(layer.name.startswith("particles (sample)") for layer in viewer.layers)
    docks = [d for d in viewer.window.dock_widgets.values() if isinstance(d, DataMeshWidget)]
    assert docks and docks[0].particles is not None and docks[0].session.consensus is not None


def test_particle_file_without_its_stacks_still_opens_its_summary(make_napari_viewer, formats_dir):
    """cryoSPARC metadata whose image stacks are absent: summary yes, invented images no."""
    from napari_flex3d._napari._data_widget import DataMeshWidget

    viewer = make_napari_viewer()
    path = formats_dir / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs"
    layers = viewer.open(str(path), plugin="napari-flex3d")
    assert layers == []
    w = next(d for d in viewer.window.dock_widgets.values() if isinstance(d, DataMeshWidget))
    assert w.particles is not None and len(w.particles) == 2019
    assert "2019 particles" in w.summary_label.text() and "images not found" in w.summary_label.text()
    assert w.montage_view.image_item.image is None
