"""GUI: the explorer's exports are the CLI's: a series along a latent axis from the widget and
from ``flex3d generate --axis`` (``api.generate_series``) hold the same latents, maps and movie grey levels."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

def test_gui_and_cli_axis_series_are_the_same_maps_and_movie_frames(make_napari_viewer, qtbot, artefact_run,
                                                                     tmp_path):
    from napari_flex3d import api
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d.explore.series import projection_images, to_uint8
    from napari_flex3d.io.mrc import read_map

    frames = 5
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.open_run(artefact_run.run_dir)
    ex.n_frames = frames
    ex.export_series(tmp_path / "gui", along="axis z1")
    qtbot.waitUntil(lambda: ex.worker is None and ex.series_written is not None, timeout=60_000)
    cli = api.generate_series(artefact_run.run_dir, axis=1, frames=frames, out_dir=tmp_path / "cli")

    # the frames' latents: mean +- 1.5 sample standard deviations in both
    np.testing.assert_array_equal(ex.movie_latents("axis z1"), cli["latents"])
    gui_maps = [read_map(p) for p in ex.series_written[0]]
    cli_maps = [read_map(p) for p in cli["frames"]]
    assert len(gui_maps) == len(cli_maps) == frames
    for g, c in zip(gui_maps, cli_maps):
        assert g.apix == pytest.approx(c.apix)
        np.testing.assert_array_equal(g.data, c.data)
    volumes = np.stack([m.data for m in cli_maps])
    assert np.abs(volumes[-1] - volumes[0]).max() > 1e-3 * volumes.max()  # the flow moves the map

    # the movie along the same axis at the training box: the CLI's projections on the CLI's grey scale
    ex.export_movie(tmp_path / "axis.gif", along="axis z1", box=artefact_run.box)
    qtbot.waitUntil(lambda: ex.worker is None and ex.frames_written == frames, timeout=60_000)
    np.testing.assert_array_equal(ex.movie_images, to_uint8(projection_images(volumes)))


def test_open_reads_the_run_in_a_worker_and_the_last_open_wins(make_napari_viewer, qtbot, artefact_run, tmp_path,
                                                              monkeypatch):
    """The Open button returns while the run is still being read (held in its worker by a gate),
    the latents appear once it returns; a second open while one is read wins over it; a folder
    that is no run says so in the widget (no exception), and the open run stays."""
    import threading

    from qtpy.QtCore import Qt

    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d.explore import generate

    run_dir = artefact_run.run_dir
    n, k = artefact_run.latents.shape
    gate, threads = threading.Event(), []

    class HeldRunVolumes(generate.RunVolumes):
        def __init__(self, run_dir, device="cpu"):
            threads.append(threading.current_thread())
            if str(run_dir) == str(run_dir):
                assert gate.wait(60)  # the GUI thread would never get past the click
            super().__init__(run_dir, device)

    monkeypatch.setattr(generate, "RunVolumes", HeldRunVolumes)
    ex = LatentExplorerWidget(make_napari_viewer())
    opened = []
    ex.run_opened.connect(lambda: opened.append(ex.run_dir))
    ex.run_dir_text = str(run_dir)
    qtbot.mouseClick(ex.open_btn, Qt.MouseButton.LeftButton)
    assert ex.opening and not ex.idle and ex.latents is None and ex.run is None  # still reading
    assert "opening" in ex.info_label.text()
    gate.set()
    qtbot.waitUntil(lambda: ex.idle, timeout=60_000)
    assert threads and threads[0] is not threading.main_thread()
    assert not ex.opening and opened == [run_dir] and ex.latents.shape == (n, k)
    assert ex.info_label.text().startswith(f"{n} particles, K = {k}")
    first = ex.run

    # an open still reading when another is asked for is dropped: the last one wins
    gate.clear()
    ex.open_run(run_dir, wait=False)
    ex.run_dir_text = str(tmp_path / "not_a_run")
    qtbot.mouseClick(ex.open_btn, Qt.MouseButton.LeftButton)
    gate.set()
    qtbot.waitUntil(lambda: ex.idle, timeout=60_000)
    assert ex.run is first and opened == [run_dir] and ex.run_dir == run_dir
    assert "cannot open run" in ex.info_label.text() and "not_a_run" in ex.info_label.text()

    # the programmatic open waits, and a bad folder is a message there too
    ex2 = LatentExplorerWidget(make_napari_viewer())
    ex2.open_run(tmp_path / "not_a_run")
    assert ex2.run is None and ex2.info_label.text().startswith("cannot open run")
    ex2.open_run(run_dir)
    assert ex2.latents.shape == (n, k) and ex2.run_dir == run_dir  # at once, no event loop
    qtbot.waitUntil(lambda: ex.idle and ex2.idle, timeout=60_000)  # the particle tables' workers


def test_slow_canvas_gets_its_surface_layer_built_in_the_worker_and_added_unselected(make_napari_viewer, qtbot,
                                                                                     artefact_run, monkeypatch):
    """Software OpenGL (Xvfb): the Open button's worker builds the explorer's surface layer with
    the run; the GUI thread only adds it, leaving the user's selected layer selected. A click's
    triangles come from a worker too and are swapped into that same layer (no layer built in
    the GUI thread). Checked by recording the thread every napari Surface is built in."""
    import threading

    import napari.layers

    from napari_flex3d._napari import _explore_preview
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._stalls import settle

    built, meshed = [], []  # the threads Surface layers were built in / iso-surfaces extracted in
    init, iso = napari.layers.Surface.__init__, _explore_preview.iso_surface

    def recording_init(self, *args, **kwargs):
        built.append(threading.current_thread())
        init(self, *args, **kwargs)

    monkeypatch.setattr(napari.layers.Surface, "__init__", recording_init)
    monkeypatch.setattr(_explore_preview, "iso_surface", lambda *a, **k: meshed.append(threading.current_thread())
                        or iso(*a, **k))
    viewer = make_napari_viewer(show=True)
    mine = viewer.add_image(np.zeros((8, 8, 8), np.float32), name="the user's map")
    viewer.dims.ndisplay = 3
    ex = LatentExplorerWidget(viewer)
    ex.preview_box = 16
    settle(viewer)
    assert ex.budget.software_gl, ex.budget.renderer  # Xvfb: Mesa's llvmpipe, the case this test is about
    ex.open_run(artefact_run.run_dir, wait=False)
    qtbot.waitUntil(lambda: ex.run is not None and ex.idle, timeout=60_000)
    layer = viewer.layers[_explore_preview.SURFACE_LAYER]
    assert len(built) == 1 and built[0] is not threading.main_thread()
    assert viewer.layers.selection.active is mine and not mine.visible  # still selected; hidden (a slow frame)
    lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
    ex.click(*(float(v) for v in (lo + hi) / 2))
    qtbot.waitUntil(lambda: ex.volumes_shown == 1 and ex.idle, timeout=60_000)
    assert viewer.layers[_explore_preview.SURFACE_LAYER] is layer and len(layer.data[1]) > 1 and len(built) == 1
    assert meshed and threading.main_thread() not in meshed
