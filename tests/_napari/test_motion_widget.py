"""GUI: the Motion analysis widget on the Latent explorer's run.

Runs whose flows are known in closed form (a rigid-body motion of the whole molecule; an arm
swinging about a hinge while the body stays) check strain and displacement against their
oracles; a short trained run checks the map of a selection.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gui

BOX, APIX, K = 24, 5.0, 2
OMEGA = 0.12  # rad of rotation per latent unit (about the y axis)
SHIFT_A = np.array([2.0, -1.0, 0.5])  # Å of translation per latent unit


def _flow_field(kind: str, xyz_a: np.ndarray) -> np.ndarray:
    """``(n, 3)`` Å per latent unit: the displacement of points ``xyz_a`` is ``z[0]`` times this.

    "rigid": an infinitesimal rotation about the y axis plus a translation, everywhere.
    "hinge": the same rotation for the arm (x > 0) about the hinge line x = z = 0; the body stays.
    Between latents ``-a`` and ``+a`` the map ``(I + a W)(I - a W)^-1`` of a skew ``W`` is an
    exact rotation (a Cayley transform), so moved parts are exactly rigid.
    """
    w = np.cross(np.array([0.0, OMEGA, 0.0]), xyz_a)
    if kind == "rigid":
        return w + SHIFT_A
    return np.where(xyz_a[:, :1] > 0, w, 0.0)


def _designed_run(out, kind: str):
    """A run folder (last checkpoint only) of a two-lobe map moved by ``z[0] * _flow_field(kind)``;
    latents centred, so an axis traversal is symmetric about 0."""
    from napari_flex3d.config import TrainConfig, to_dict
    from napari_flex3d.io.checkpoint import save_checkpoint
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.model.run import checkpoint_path

    zyx = np.stack(np.meshgrid(*(np.arange(BOX) - BOX // 2,) * 3, indexing="ij"), axis=-1) * APIX  # (n, n, n, 3) Å
    density = sum(np.exp(-((zyx - c) ** 2).sum(-1) / (2 * 8.0**2)) for c in ([0, 0, -20], [0, 0, 20]))
    mask = density > 0.05
    mesh = build_grid_mesh(mask, APIX, cell_size_a=10.0)
    model = FlexModel.from_map(density.astype(np.float32), APIX, mesh, mask, latent_dim=K, hidden=2, layers=1,
                               kernel="linear")
    field = torch.as_tensor(_flow_field(kind, mesh.vertices_a), dtype=torch.float32)  # (v, 3)
    with torch.no_grad():  # hidden = relu(z0 + 10), relu(10); out = field * (h0 - h1) = z0 * field
        model.flow.hidden[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        model.flow.hidden[0].bias.copy_(torch.tensor([10.0, 10.0]))
        w = torch.zeros(model.flow.n_vertices, 3, 2)
        w[:, :, 0], w[:, :, 1] = field, -field
        model.flow.out.weight.copy_(w.reshape(-1, 2))
    config = TrainConfig(latent_dim=K, hidden=2, layers=1, epochs=1, band_start=1.0, band_end=1.0, kernel="linear")
    latents = torch.randn(60, K, generator=torch.Generator().manual_seed(1))
    latents = latents - latents.mean(0)
    save_checkpoint(checkpoint_path(out), {"config_json": json.dumps(to_dict(config)), "epoch": 1, "box": BOX,
                                           "apix": APIX, "model": model.state_dict(), "latents": latents})
    return out


@pytest.fixture(scope="module")
def designed_runs(tmp_path_factory):
    return {kind: _designed_run(tmp_path_factory.mktemp(f"{kind}_run"), kind) for kind in ("rigid", "hinge")}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """120 simulated hinge particles (box 24, 8 Å/px), trained 2 short epochs at K = 2."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training.loop import train_run

    sim = tmp_path_factory.mktemp("motion_sim")
    simulate_dataset(sim, n_particles=120, box=24, apix=8.0, snr=0.5, motion="hinge", seed=0)
    out = tmp_path_factory.mktemp("motion_run")
    config = TrainConfig(particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(out),
                         latent_dim=2, hidden=16, layers=2, epochs=2, batch=40, kernel="linear", latent_grid=5,
                         latent_steps=1, preview_every=0, threads=1, warmup_epochs=1, val_fraction=0.1)
    for _ in train_run(config, out):
        pass
    return out


def _widgets(make_napari_viewer, qtbot, run_dir, show: bool = False):
    """An explorer docked on a new viewer with ``run_dir`` open, and a Motion widget that finds it
    (``show``: a shown window, for screenshots; painting 3D layers in software is slow)."""
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._motion_widget import MotionWidget

    viewer = make_napari_viewer(show=show)  # screenshots of a hidden canvas are black
    ex = LatentExplorerWidget(viewer)
    viewer.window.add_dock_widget(ex, name="Latent explorer")
    ex.open_run(run_dir)
    w = MotionWidget(viewer)
    viewer.window.add_dock_widget(w, name="Motion analysis")
    assert w.explorer is ex  # found among the viewer's dock widgets
    return viewer, ex, w


def _wait(qtbot, w, timeout_ms=120_000):
    qtbot.waitUntil(lambda: w.idle, timeout=timeout_ms)


def _screenshot_not_blank(viewer, path):
    """Save the canvas (docks hidden, so it has the window) and check that something is drawn."""
    from imageio.v3 import imwrite

    for widget in viewer.window.dock_widgets.values():
        widget.parent().hide()
    viewer.window.resize(700, 560)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    imwrite(path, shot)
    rgb = shot[..., :3].astype(float)
    assert rgb.std() > 5.0, f"{path}: the canvas is blank"


def test_strain_near_zero_for_rigid_flow_and_large_at_the_hinge(make_napari_viewer, qtbot, designed_runs, tmp_path):
    from napari_flex3d._napari._motion_moved import STRAIN_LAYER
    from napari_flex3d.analyze.motion import voxel_cells
    from napari_flex3d.explore.generate import RunVolumes
    from napari_flex3d.io.mrc import read_map

    frames = 5
    for kind in ("rigid", "hinge"):
        viewer, ex, w = _widgets(make_napari_viewer, qtbot, designed_runs[kind], show=kind == "hinge")
        ex.traverse_combo.setCurrentText("axis z0")
        ex.n_frames = frames
        w.strain_along_traversal()
        _wait(qtbot, w)
        maps = viewer.layers[STRAIN_LAYER].data
        assert maps.shape == (frames, BOX, BOX, BOX)
        t = w.traversal
        a = 1.5 * float(ex.latents[:, 0].std(ddof=1))
        np.testing.assert_allclose(t["zs"][[0, -1], 0], [-a, a], rtol=1e-5)  # centred latents: symmetric ends
        end_strain = t["cell_strain"][-1]  # (t,) from -a to +a
        if kind == "rigid":
            assert end_strain.max() < 1e-4  # a rigid-body motion, however large, is not strain
            # every cell maps by F = (I + z W)(I + z_0 W)^-1 (W the rotation's skew matrix), the same for all
            skew = np.array([[0, 0, OMEGA], [0, 0, 0], [-OMEGA, 0, 0]])  # w = omega_y x (x, y, z)
            for zi, strain in zip(t["zs"][:, 0], t["cell_strain"]):
                f = (np.eye(3) + zi * skew) @ np.linalg.inv(np.eye(3) + t["zs"][0, 0] * skew)
                expected = np.sqrt(((np.linalg.svd(f, compute_uv=False) - 1) ** 2).sum())
                np.testing.assert_allclose(strain, expected, atol=2e-5)
            assert t["vertex_displacement_a"][-1].min() > 2 * a * np.linalg.norm(SHIFT_A) * 0.5
        else:
            model = RunVolumes(designed_runs["hinge"]).model
            verts, cells = model.vertices_a.double().numpy(), model.cells.numpy()
            arm = verts[:, 0] > 0
            straddles = arm[cells].any(1) & ~arm[cells].all(1)  # cells across the hinge line
            assert straddles.sum() > 10
            assert end_strain[straddles].mean() > 0.1
            assert np.abs(end_strain[~straddles]).max() < 1e-4  # body and arm: rigid
            # the voxel heat map holds each voxel's cell's strain
            pts = model.canonical.points_xyz_a.numpy()
            holder = voxel_cells(verts, cells, pts, BOX, APIX)
            idx = np.rint(pts / APIX + BOX // 2).astype(int)
            on_map = maps[-1][idx[:, 2], idx[:, 1], idx[:, 0]]
            np.testing.assert_allclose(on_map[holder >= 0], end_strain[holder[holder >= 0]], rtol=1e-5, atol=1e-6)
            viewer.layers[STRAIN_LAYER].visible = True
            _screenshot_not_blank(viewer, tmp_path / "hinge.png")
            w.export_strain(tmp_path / "export")
            _wait(qtbot, w)
            written = read_map(w.exported["strain"][-1])
            np.testing.assert_allclose(written.data, maps[-1], atol=1e-6)
            assert written.apix == pytest.approx(APIX)
            assert len(w.exported["displacement"]) == frames
            script = w.exported["script"].read_text()
            assert "color sample #1 map #2" in script and w.exported["strain"][-1].name in script


def test_surface_displacement_matches_the_flow(make_napari_viewer, qtbot, designed_runs):
    from skimage.measure import marching_cubes

    from napari_flex3d._napari._layer_data import default_iso_threshold
    from napari_flex3d._napari._motion_moved import SOURCES, SURFACE_LAYER, SURFACES

    viewer, ex, w = _widgets(make_napari_viewer, qtbot, designed_runs["rigid"])
    z = ex.latents.mean(0) + np.array([2.0, 5.0], np.float32)  # axis z1 does not move anything
    ex.z = z  # the explorer's current point (as after a click, without rendering its volume)
    model = ex.run.model

    w.surface_kind = SURFACES[1]  # mesh boundary: values at the mesh's vertices
    w.colour_surface()
    _wait(qtbot, w)
    verts, faces, values = viewer.layers[SURFACE_LAYER].data
    rest_xyz = model.vertices_a.double().numpy()
    expected = np.linalg.norm(2.0 * _flow_field("rigid", rest_xyz), axis=1)  # from the mean (0) to z0 = 2
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    moved_xyz = rest_xyz + 2.0 * _flow_field("rigid", rest_xyz)
    np.testing.assert_allclose(verts, moved_xyz[:, ::-1] + BOX // 2 * APIX, atol=1e-3)
    assert w.surface_range == pytest.approx((expected.min(), expected.max()), rel=1e-4)
    assert f"{expected.max():.1f} Å" in w.range_label.text()

    w.source = SOURCES[1]  # the explorer's traversal, first to last frame
    ex.traverse_combo.setCurrentText("axis z0")
    w.colour_surface()
    _wait(qtbot, w)
    zs = ex.movie_latents()
    _, _, values = viewer.layers[SURFACE_LAYER].data
    expected = np.linalg.norm((zs[-1, 0] - zs[0, 0]) * _flow_field("rigid", rest_xyz), axis=1)
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    w.source = SOURCES[0]

    w.surface_kind = SURFACES[0]  # the canonical map's iso-surface, moved by the flow
    w.colour_surface()
    _wait(qtbot, w)
    verts, faces, values = viewer.layers[SURFACE_LAYER].data
    vol = model.canonical.to_volume(model.canonical_values()).detach().numpy()
    rest_zyx, _, _, _ = marching_cubes(vol, default_iso_threshold(vol))
    rest_xyz = (rest_zyx[:, ::-1] - BOX // 2) * APIX
    shift = 2.0 * _flow_field("rigid", rest_xyz)  # the flow is the same field everywhere in the mesh
    np.testing.assert_allclose(verts, (rest_xyz + shift)[:, ::-1] + BOX // 2 * APIX, atol=1e-3)
    np.testing.assert_allclose(values, np.linalg.norm(shift, axis=1), rtol=1e-4)


def test_side_by_side_difference_is_a_minus_b(make_napari_viewer, qtbot, designed_runs, tmp_path):
    from napari_flex3d._napari._motion_compare import A_LAYER, B_LAYER, DIFF_LAYER, LAYOUTS
    from napari_flex3d.explore.generate import RunVolumes

    viewer, ex, w = _widgets(make_napari_viewer, qtbot, designed_runs["hinge"], show=True)
    z_a, z_b = np.array([-2.0, 0.0], np.float32), np.array([2.0, 0.0], np.float32)
    ex.z = z_a  # the explorer's current point
    w.set_a()
    w.set_b(z_b)
    np.testing.assert_array_equal(w.z_a, z_a)
    for layout in LAYOUTS:
        w.layout_mode = layout
        w.compare()
        _wait(qtbot, w)
        a, b, d = (viewer.layers[n].data for n in (A_LAYER, B_LAYER, DIFF_LAYER))
        np.testing.assert_array_equal(d, a - b)
        run = RunVolumes(designed_runs["hinge"])
        np.testing.assert_allclose(a, run.volume(z_a)[0], atol=1e-6)
        np.testing.assert_allclose(b, run.volume(z_b)[0], atol=1e-6)
        assert np.abs(d).max() > 0.05 * a.max()  # the arm moved
        dx = [viewer.layers[n].translate[-1] for n in (A_LAYER, B_LAYER, DIFF_LAYER)]
        assert dx[0] == 0 and dx[2] > a.shape[-1] * APIX
        assert (dx[1] > 0) == (layout == LAYOUTS[0])
    _screenshot_not_blank(viewer, tmp_path / "compare_overlay.png")


def test_region_table_matches_the_library(make_napari_viewer, qtbot, designed_runs, tmp_path):
    import pandas as pd

    from napari_flex3d.analyze.motion import axis_motion, region_table

    viewer, ex, w = _widgets(make_napari_viewer, qtbot, designed_runs["hinge"])
    labels = np.zeros((BOX,) * 3, np.uint8)
    labels[..., : BOX // 2 - 1] = 1  # x < 0: the body
    labels[..., BOX // 2 + 1 :] = 2  # x > 0: the arm
    viewer.add_labels(labels, name="rigid regions", scale=(APIX,) * 3)
    assert w.labels_layer == "rigid regions"
    w.region_displacement()
    _wait(qtbot, w)
    model = ex.run.model
    expected = region_table(axis_motion(model, ex.latents)["voxel_displacement_a"],
                            model.canonical.points_xyz_a.numpy(), labels, APIX)
    pd.testing.assert_frame_equal(w.regions, expected)
    table = w.regions.set_index(["region", "axis"])
    assert table.loc[(1, "z1"), "max_a"] < 1e-4  # the body stays
    assert table.loc[(2, "z1"), "mean_a"] > 3.0  # the arm swings
    assert table.loc[(2, "z2"), "max_a"] < 1e-4  # axis z2 moves nothing
    assert w.region_table.rowCount() == len(expected)
    path = w.export_regions(tmp_path / "regions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), expected, check_dtype=False)


def test_subset_to_map_uses_exactly_the_selected_particles(make_napari_viewer, qtbot, trained_run):
    import pandas as pd

    from napari_flex3d._napari._motion_subset import default_subset_folder
    from napari_flex3d.io.mrc import read_map
    from napari_flex3d.io.particles import read_particles

    viewer, ex, w = _widgets(make_napari_viewer, qtbot, trained_run)
    rows = np.flatnonzero(ex.latents[:, 0] > np.median(ex.latents[:, 0]))  # half the particles, by latent
    ex.set_selection(rows, "test")
    np.testing.assert_array_equal(w.selection, rows)
    assert w.subset_btn.isEnabled()
    w.iterations = 2
    w.map_selection()
    qtbot.waitUntil(lambda: w.subset_worker is None, timeout=300_000)
    assert w.subset_error is None
    out = default_subset_folder(trained_run, rows)
    report = json.loads((out / "report.json").read_text())
    assert sum(report["particles_used"].values()) == len(rows)
    assert report["subset_particles"] == len(rows)
    full, sub = read_particles(trained_run / "particles.star"), read_particles(out / "subset_particles.star")
    np.testing.assert_array_equal(sub.image_indices, full.image_indices[rows])
    pd.testing.assert_series_equal(sub.table["rlnImageName"], full.table["rlnImageName"].iloc[rows].reset_index(drop=True))
    for mode in ("flex", "rigid"):
        m = read_map(out / f"{mode}_map.mrc")
        assert m.data.shape == (24, 24, 24) and np.isfinite(m.data).all()  # the particles' full box
        np.testing.assert_array_equal(viewer.layers[f"selection {mode} map (sharpened)"].data, m.data)
    freq, fsc = w.subset_fsc.data("flex")
    assert len(freq) > 3 and fsc[0] > 0.5


def test_without_an_explorer_the_widget_says_what_to_open(make_napari_viewer, qtbot, monkeypatch):
    from napari_flex3d._napari import _motion_compare, _motion_moved, _motion_subset
    from napari_flex3d._napari._motion_widget import MotionWidget

    errors = []
    for module in (_motion_moved, _motion_compare, _motion_subset):
        monkeypatch.setattr(module, "show_error", errors.append)
    w = MotionWidget(make_napari_viewer())
    assert w.explorer is None and "Latent explorer" in w.explorer_label.text()
    for action in (w.colour_surface, w.strain_along_traversal, w.region_displacement, w.compare, w.map_selection):
        action()
    assert w.idle and len(errors) == 5
    assert all("Latent explorer" in e for e in errors)
    assert not w.subset_btn.isEnabled()  # nothing selected
