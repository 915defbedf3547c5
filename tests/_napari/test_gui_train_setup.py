"""The Train widget shows where a run's set-up is (reading, checking the images, first latents: minutes
at 10^6 particles) from the run's ``SetupProgress`` events, and its ETA counts the steps only."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_train_widget_shows_the_set_up_stage_and_count(make_napari_viewer, qtbot, tmp_path):
    import time

    from napari_flex3d._napari._train_widget import TrainWidget
    from napari_flex3d.training import events as ev

    train = TrainWidget(make_napari_viewer())
    qtbot.waitUntil(lambda: not train.preload_pending, timeout=60_000)  # not left running past the test
    train._on_event(ev.SetupProgress("reading particles"))
    assert train.progress.format() == "set-up: reading particles"
    train._on_event(ev.SetupProgress("checking images", 250_000, 1_000_000, "images"))
    assert train.progress.format() == "set-up: checking images 250,000/1,000,000 images"
    assert (train.progress.value(), train.progress.maximum()) == (250_000, 1_000_000)
    train._on_event(ev.SetupProgress("latent initialisation", 0, 2800, "particles"))
    assert train.progress.format() == "set-up: latent initialisation 0/2,800 particles" and train.progress.value() == 0
    train.grab().save(str(tmp_path / "train_widget_setup.png"))

    train._t_start = time.perf_counter() - 600.0  # a set-up of ten minutes, then the run: its ETA from its steps
    train._on_event(ev.RunStarted(run_dir=str(tmp_path), n_particles=100, n_train=90, n_val=10, box=64, apix=2.0,
                                  device="cpu", epochs=1, steps_per_epoch=4, start_epoch=0, n_vertices=400))
    assert (train.progress.value(), train.progress.maximum()) == (0, 4)
    train._on_event(ev.StepLoss(epoch=0, step=0, global_step=1, phase="warmup", loss=1.0, data_loss=1.0,
                                rigidity_loss=0.0, band_limit_nyquist=0.25, band_limit_a=16.0, steps_per_epoch=4))
    assert train.progress.format().endswith("ETA 0 s")  # 3 steps left at a few ms each, not at 600 s
