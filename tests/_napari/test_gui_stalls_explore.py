"""GUI: the window never freezes while reconstructing and while the explorer is clicked, in 3D.

A shown viewer under Xvfb (Mesa's software OpenGL: a 3D frame with an iso volume takes
seconds), a 3D canvas with the consensus map visible, a tiny trained run. The GUI
thread's stalls are measured by ``_napari._stalls.StallMonitor`` (the code
``benchmarks/gui_latency.py`` reports with) during a reconstruction and during clicks on
the Latent explorer's plot (each shows a map at the preview box, then refined). The
bounds have a margin for CI noise; the target, measured by the benchmark, is max < 250 ms,
p99 < 50 ms.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def tiny_run(sample, tmp_path_factory):
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.loop import train_run

    run = tmp_path_factory.mktemp("stalls") / "run"
    cfg = TrainConfig(particles=str(sample.particles_star), map=str(sample.consensus), out=str(run), epochs=1,
                      batch=32, max_particles=64, hidden=16, layers=2, latent_grid=3, latent_steps=1, threads=1,
                      device="cpu", preview_every=0)
    for _ in train_run(cfg, run):
        pass
    return run


def _assert_no_freeze(monitor, phase: str, max_ms: float = 1000.0, p99_ms: float = 100.0) -> dict:
    from napari_flex3d._napari._stalls import format_summary

    s = monitor.summary(phase)
    assert s["ticks"] > 30, s  # the monitor ran
    t0 = monitor.when_s[phase][0]
    where = [f"{ms:.0f} ms at {t - t0:.1f} s" for t, ms in monitor.longest(phase)]
    assert s["max_ms"] < max_ms and s["p99_ms"] < p99_ms, (format_summary(phase, s), where)
    return s


def test_reconstruct_and_explorer_clicks_never_freeze(make_napari_viewer, qtbot, load_sample_into, tiny_run,
                                                      tmp_path):
    from qtpy.QtCore import Qt

    from napari_flex3d._napari._explore_preview import SURFACE_LAYER
    from napari_flex3d._napari._explore_widget import VOLUME_LAYER, LatentExplorerWidget
    from napari_flex3d._napari._reconstruct_widget import ReconstructWidget
    from napari_flex3d._napari._stalls import StallMonitor, settle

    viewer = make_napari_viewer(show=True)
    load_sample_into(viewer)
    viewer.dims.ndisplay = 3  # the consensus map as an iso-surface: the slow frame of software OpenGL
    consensus = [layer for layer in viewer.layers if layer.visible and layer.ndim == 3 and type(layer).__name__ == "Image"]
    assert consensus, [layer.name for layer in viewer.layers]
    rec = ReconstructWidget(viewer)
    ex = LatentExplorerWidget(viewer)
    ex.preview_box = 16
    qtbot.waitUntil(lambda: not rec.preload_pending, timeout=60_000)
    settle(viewer)
    assert ex.budget.software_gl, ex.budget.renderer  # Xvfb: Mesa's llvmpipe, the case this test is about

    monitor = StallMonitor()
    rec.run_dir = str(tiny_run)
    rec.out_dir = str(tmp_path / "rec")
    rec.iterations = 3  # long enough for the monitor to see the solver (1 took 0.3 s on a quiet CI machine)
    rec.rigid = False
    monitor.start("reconstruct")
    rec.reconstruct()
    qtbot.waitUntil(lambda: rec.state == "idle", timeout=180_000)
    assert rec.error is None, rec.error
    _assert_no_freeze(monitor, "reconstruct")
    # a 3D frame costs seconds here: the maps wait for their button
    assert rec.pending_maps and rec.show_btn.isEnabled() and "flex map (sharpened)" not in viewer.layers

    ex.open_run(tiny_run)  # on a slow canvas: adds the surface layer and hides the consensus map
    settle(viewer)
    reference_ms = max(ex.budget.frame_ms)  # the canvas's slowest recent 3D frame: the consensus map's
    monitor.phase("explorer clicks")
    lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
    for f in (0.3, 0.7, 0.5):
        shown = ex.volumes_shown
        ex.click(*(float(v) for v in lo + f * (hi - lo)))
        qtbot.waitUntil(lambda: ex.volumes_shown > shown and ex.idle, timeout=60_000)
        qtbot.wait(1000)  # the canvas paints the new surface; a user's pace
    assert not ex.refined  # one update a click here: the automatic refine is off
    shown = ex.volumes_shown
    qtbot.mouseClick(ex.refine_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: ex.volumes_shown > shown and ex.idle, timeout=60_000)
    qtbot.wait(1000)
    monitor.stop()
    # a short phase with one canvas frame per click: a few stalls weigh on its p99 (the benchmark's is longer)
    s = _assert_no_freeze(monitor, "explorer clicks", p99_ms=250.0)
    # relative to the same canvas in the same process: a click costs a fraction of one volume frame
    assert s["max_ms"] < 0.5 * reference_ms, (s, reference_ms)

    # shown as a surface (the volume would cost seconds a frame); the consensus map hidden, and said so
    assert ex.shown_as == "surface" and SURFACE_LAYER in viewer.layers and VOLUME_LAYER not in viewer.layers
    surface = viewer.layers[SURFACE_LAYER]
    assert ex.refined and surface.visible and len(surface.data[1]) > 0 and surface.metadata["box"] == ex.run.box
    assert not any(layer.visible for layer in consensus)
    assert "surface" in ex.status_label.text() and consensus[0].name in ex.status_label.text()
    # the surface encloses the refined map's voxels above the level: its extent in Å matches theirs
    vol, apix = ex.run.volume(ex.z)
    inside = np.argwhere(vol > surface.metadata["iso_level"]) * apix
    verts = surface.data[0]
    np.testing.assert_allclose(verts.min(axis=0), inside.min(axis=0), atol=apix)
    np.testing.assert_allclose(verts.max(axis=0), inside.max(axis=0), atol=apix)
    # the surface is drawn (orange, bop orange at 1): seen on the canvas with the data widget's mesh hidden
    for layer in viewer.layers:
        layer.visible = layer is surface
    shot = viewer.screenshot(str(tmp_path / "explorer_surface.png"), canvas_only=True, flash=False)[..., :3].astype(int)
    orange = (shot[..., 0] > 150) & (shot[..., 0] > shot[..., 2] + 80)
    assert orange.mean() > 0.005, orange.mean()


def test_movie_cursor_is_drawn_where_the_plot_draws_it(make_napari_viewer, qtbot):
    """The movie's plot is grabbed once and its cursor drawn in the worker: at the pixel where
    pyqtgraph draws the cursor for that latent (the oracle: the plot grabbed with it)."""
    from napari_flex3d._napari._explore_export import _qimage_to_array, _with_cursor
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    viewer = make_napari_viewer(show=True)
    ex = LatentExplorerWidget(viewer)
    viewer.window.add_dock_widget(ex)
    latents = np.random.default_rng(3).normal(size=(300, 2)).astype(np.float32)
    ex.set_latents(latents)
    qtbot.wait(200)
    zs = latents[[5, 77, 150]]
    plot, px = ex._plot_and_cursors(zs)
    assert px.shape == (3, 2)
    for z, rc in zip(zs, px):
        x, y = ex._from_latent(z[None])[0]
        ex.plot.set_cursor(x, y)
        with_cursor = _qimage_to_array(ex.plot.grab().toImage()).astype(int)
        changed = np.argwhere(np.abs(with_cursor - plot).sum(axis=-1) > 60)
        assert len(changed) > 10
        np.testing.assert_allclose(changed.mean(axis=0), rc, atol=2.5)
        ours = np.argwhere(np.abs(_with_cursor(plot, rc).astype(int) - plot).sum(axis=-1) > 60)
        np.testing.assert_allclose(ours.mean(axis=0), changed.mean(axis=0), atol=2.5)
