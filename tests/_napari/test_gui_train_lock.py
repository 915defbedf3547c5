"""The Train widget takes the run folder's lock as `flex3d train` does: a folder that a running
job holds is refused with the holder named, in the widget, and nothing is trained into it."""

from __future__ import annotations

import json
import os
import socket

import pytest

pytestmark = pytest.mark.gui


def test_train_widget_refuses_a_folder_another_job_holds(make_napari_viewer, qtbot, sample, load_sample_into, tmp_path):
    from napari_flex3d._napari._train_widget import TrainWidget
    from napari_flex3d.io.lock import LOCK_NAME

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "command": "flex3d train", "time": "2026-01-01T00:00:00+00:00"}
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))  # a live process on this host holds it

    viewer = make_napari_viewer()
    load_sample_into(viewer)
    train = TrainWidget(viewer)
    train.set_option(out=str(run_dir), device="cpu", epochs=1, batch=32, max_particles=64, hidden=16, layers=2,
                     latent_dim=1, latent_grid=5, latent_steps=1, val_fraction=0.1, threads=1, preview_every=0)
    train.start()
    qtbot.waitUntil(lambda: train.state == "idle", timeout=60_000)
    assert train.error is not None and f"process {os.getppid()}" in str(train.error)
    assert not (run_dir / "checkpoints").exists()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getppid()  # the holder's lock is untouched


def test_the_training_code_is_preloaded_after_the_widget_is_built(make_napari_viewer, qtbot):
    """Opening the widget does not wait for the import: it starts from the event loop, and the
    device list is filled in when it is done."""
    from napari_flex3d._napari._train_widget import TrainWidget

    train = TrainWidget(make_napari_viewer())
    assert train.preload_pending and train.preloading is None  # nothing started while building
    qtbot.waitUntil(lambda: not train.preload_pending, timeout=60_000)
    assert tuple(train.device_box.choices) == tuple(TrainWidget._devices())
    assert tuple(train.device_box.choices[:2]) == ("auto", "cpu")
