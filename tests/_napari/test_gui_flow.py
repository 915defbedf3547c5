"""GUI: the whole analysis through the widgets' public attributes.

Load the sample, build a mesh, train (stop mid-run, resume to completion), then explore:
click a latent point, drag a slider, export a 10-frame movie, a volume series and a
particle subset, and read the subset back with the particle reader.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

TINY = dict(
    epochs=2, batch=32, max_particles=96, hidden=16, layers=2, latent_dim=2, latent_grid=5, latent_steps=1,
    val_fraction=0.1, threads=1, preview_every=1,
)


def test_train_stop_resume_then_explore_and_export(make_napari_viewer, qtbot, sample, load_sample_into, tmp_path, monkeypatch):
    from napari_flex3d._napari._explore_widget import VOLUME_LAYER, LatentExplorerWidget
    from napari_flex3d._napari._layer_data import read_particle_file
    from napari_flex3d._napari._train_widget import PREVIEW_PREFIX, TrainWidget
    from napari_flex3d._napari._train_preview import PREVIEW_BOX

    import threading

    from qtpy.QtCore import Qt

    import napari_flex3d.training.loop as loop

    real_train_run = loop.train_run
    stop_requested = threading.Event()

    def train_run_pausing_after_first_checkpoint(config, out_dir, resume=False, **kw):
        """The real generator; after its first checkpoint it waits (up to 30 s) until the GUI has
        asked it to stop, so the stop request lands mid-run however fast the machine (no race)."""
        paused = resume
        for ev in real_train_run(config, out_dir, resume=resume, **kw):
            yield ev
            if type(ev).__name__ == "CheckpointWritten" and not paused:
                paused = True
                stop_requested.wait(timeout=30.0)

    monkeypatch.setattr(loop, "train_run", train_run_pausing_after_first_checkpoint)

    viewer = make_napari_viewer()
    data = load_sample_into(viewer)

    # --- train: stop after the first checkpoint, the widget goes idle and the checkpoint stays
    train = TrainWidget(viewer)
    run_dir = tmp_path / "run"
    train.set_option(out=str(run_dir), device="cpu", **TINY)
    assert train.config.epochs == 2 and train.config.particles == str(sample.particles_star)
    seen_checkpoint = []

    def stop_at_first_checkpoint(ev):
        if type(ev).__name__ == "CheckpointWritten" and not seen_checkpoint:
            seen_checkpoint.append(ev.path)
            train.stop()
            stop_requested.set()

    qtbot.mouseClick(train.start_btn, Qt.MouseButton.LeftButton)  # the button, as a user would
    assert train.state == "running" and not train.start_btn.isEnabled()
    train.worker.yielded.connect(stop_at_first_checkpoint)
    qtbot.waitUntil(lambda: train.state == "idle", timeout=90_000)
    assert train.error is None, train.error
    assert seen_checkpoint and train.last_checkpoint is not None and train.last_checkpoint.is_file()
    assert train.progress.format() == "stopped" and train.start_btn.isEnabled()
    names = [type(e).__name__ for e in train.events]
    assert "RunFinished" not in names  # it really stopped early
    steps_x, steps_y = train.loss_plot.data("step")
    assert len(steps_y) >= 1 and np.all(np.isfinite(steps_y))

    # --- resume to the end: epoch 2 runs, plots and previews update
    train.resume()
    qtbot.waitUntil(lambda: train.state == "idle", timeout=90_000)
    assert train.error is None, train.error
    assert type(train.events[-1]).__name__ == "RunFinished" and train.progress.format() == "done"
    ex, ey = train.loss_plot.data("train (epoch)")
    assert list(ex) == [1.0, 2.0]
    fx, fy = train.fsc_plot.data("epoch 2")
    assert len(fx) > 3 and fy[0] > 0.5  # the canonical map still matches the consensus at low resolution
    assert train.latent_plot.mode == "points" and train.latents.shape == (96, 2)
    agreement = [e.latent_agreement for e in train.events if type(e).__name__ == "EpochSummary"][-1]
    assert train.latent_plot.getPlotItem().titleLabel.text.endswith(f"agreement with the last epoch {agreement:.3f}")
    qtbot.waitUntil(lambda: train.previews_idle, timeout=30_000)  # reduced to the preview box in a worker
    previews = [layer for layer in viewer.layers if layer.name.startswith(PREVIEW_PREFIX)]
    assert len(previews) == 4  # K=2 axes x (-1, +1) sigma, replaced each epoch, never added again
    assert all(max(layer.data.shape) <= PREVIEW_BOX for layer in previews)

    # --- explore: the run opens with its latents
    ex = LatentExplorerWidget(viewer)
    assert ex.run_dir_text == str(run_dir)  # filled in from the shared session
    qtbot.mouseClick(ex.open_btn, Qt.MouseButton.LeftButton)  # the run is read in a worker
    qtbot.waitUntil(lambda: ex.run is not None and ex.idle, timeout=60_000)  # the latents follow a timer tick later
    assert ex.latents.shape == (96, 2) and len(ex._sliders) == 2
    # click a point: a preview then the refined volume appear as a layer
    ex.preview_box = 16
    ex.mode = "volume"
    x, y = ex._xy[5]
    ex.click(float(x), float(y))
    qtbot.waitUntil(lambda: ex.refined and ex._render.idle, timeout=30_000)
    layer = viewer.layers[VOLUME_LAYER]
    assert layer.data.shape == (ex.run.box,) * 3 and ex.volumes_shown >= 2
    np.testing.assert_allclose(ex.z[:2], [x, y], atol=1e-5)
    ref = np.asarray(layer.data).copy()
    # drag a slider: the volume follows at the preview box, and differs
    s = ex._sliders[0]
    for v in np.linspace(s.minimum(), s.maximum(), 5):
        s.setValue(float(v))
        qtbot.wait(5)
    qtbot.waitUntil(lambda: ex._render.idle, timeout=30_000)
    assert ex.z[0] == pytest.approx(s.maximum(), rel=1e-3)
    assert ex.last_volume_box == 16 and viewer.layers[VOLUME_LAYER].data.shape == (16,) * 3

    # --- a path of three clicks, played, then exported as a 10-frame movie (mp4 and gif)
    ex.mode = "path"
    for px, py in ((-2.0, -2.0), (0.0, 2.0), (2.0, 0.0)):  # plot coordinates: a path through latent space
        ex.click(px, py)
    assert len(ex.path) == 3
    ex.n_frames = 10
    ex.play_path()
    assert ex.playing
    qtbot.waitUntil(lambda: not ex.playing, timeout=30_000)
    import imageio.v3 as iio

    for suffix in (".mp4", ".gif"):
        movie = tmp_path / f"path{suffix}"
        ex.export_movie(movie)
        qtbot.waitUntil(lambda: ex.worker is None and movie.exists(), timeout=60_000)
        frames = iio.imread(movie, index=None)
        assert frames.shape[0] == 10, (suffix, frames.shape)
        assert frames.shape[-1] == 3 and frames.std() > 1  # not a blank movie

    # --- a volume series along axis 0 with its ChimeraX script
    ex.n_frames = 5
    ex.export_series(tmp_path / "series", along="axis z0")
    qtbot.waitUntil(lambda: ex.worker is None and ex.series_written is not None, timeout=60_000)
    frames, script = ex.series_written
    assert len(frames) == 5 and "vseries true" in script.read_text()

    # --- lasso a subset, write STAR and .cs, read them back: the same particles
    ex.mode = "lasso"
    x0, y0 = ex._xy.min(axis=0) - 1e-3
    xm = float(np.median(ex._xy[:, 0])) + 1e-4
    y1 = ex._xy[:, 1].max() + 1e-3
    for px, py in ((x0, y0), (xm, y0), (xm, y1), (x0, y1)):
        ex.click(float(px), float(py))
    expect = np.nonzero(ex._xy[:, 0] < xm)[0]  # at least half of the particles
    assert len(expect) >= 48
    data.set_particles(data.particles.subset(np.arange(96)))  # the run used the first 96 particles
    for suffix in (".star", ".cs"):
        out = ex.export_subset(tmp_path / f"subset{suffix}")
        back = read_particle_file(out)
        np.testing.assert_array_equal(np.sort(ex.selection), expect)
        assert len(back) == len(expect)
        np.testing.assert_allclose(back.rotations, data.particles.rotations[expect], atol=1e-5)
        np.testing.assert_array_equal(back.images(np.array([0])), data.particles.images(expect[:1]))

    # --- a selection made by index (a cluster, a threshold) is marked, exported and refused when empty
    got = []
    ex.selection_changed.connect(got.append)
    ex.clear_path()
    ex.set_selection([5, 3, 3, 7], "cluster 1")
    assert list(ex.selection) == [3, 5, 7] and got[-1] is ex.selection
    assert "3 particles selected by cluster 1" in ex.status_label.text()
    np.testing.assert_allclose(np.asarray(ex.plot.highlight.getData()).T, ex._xy[[3, 5, 7]])
    back = read_particle_file(ex.export_subset(tmp_path / "cluster.star"))
    np.testing.assert_allclose(back.rotations, data.particles.rotations[[3, 5, 7]], atol=1e-5)
    ex.set_selection([], "residual > 9")
    with pytest.raises(ValueError, match="selection is empty"):
        ex.export_subset(tmp_path / "empty.star")
    with pytest.raises(ValueError, match="must lie in"):
        ex.set_selection([len(ex.latents)])
    ex.set_selection(None)
    assert ex.selection is None and len(ex.plot.highlight.getData()[0]) == 0
    with pytest.raises(ValueError, match="nothing selected"):
        ex.export_subset(tmp_path / "none.star")
