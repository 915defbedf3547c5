"""The default minibatch: chosen from the training particles so that an epoch makes enough updates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from napari_flex3d.config import BATCH_MAX, BATCH_MIN, MINIBATCHES_PER_EPOCH, TrainConfig
from napari_flex3d.model.run import load_run
from napari_flex3d.training import events as ev
from napari_flex3d.training.loop import train_run


@pytest.mark.parametrize("n_train", [1, 100, 1023, 1024, 1900, 5000, 8192, 8193, 19000, 10**6])
def test_default_minibatch_gives_enough_updates_an_epoch(n_train):
    batch = TrainConfig().minibatch(n_train)
    assert BATCH_MIN <= batch <= BATCH_MAX and batch % 8 == 0
    steps = math.ceil(n_train / batch)
    if batch == BATCH_MAX:  # many particles: the earlier fixed 256 (its updates are enough already)
        assert n_train > BATCH_MAX * (MINIBATCHES_PER_EPOCH - 1)
    elif batch > BATCH_MIN:  # the largest multiple of 8 of which the particles hold that many
        assert steps >= MINIBATCHES_PER_EPOCH and n_train < MINIBATCHES_PER_EPOCH * (batch + 8)
    assert TrainConfig(batch=100).minibatch(n_train) == 100  # a batch given is kept


def test_default_minibatch_of_two_thousand_particles():
    assert TrainConfig().minibatch(1900) == 56  # 2,000 particles, 5 % held out: 34 updates an epoch, not 8


def test_batch_none_is_resolved_and_saved_with_the_run(tiny_sim, tiny_config, tmp_path):
    """A new run stores the number it chose (108 training particles: the smallest batch) in
    config.json and in its checkpoint, whose settings a resumption takes (``model.run.config_and_model``)."""
    threads = torch.get_num_threads()
    try:
        config = tiny_config(tiny_sim, tmp_path, batch=None, epochs=1, preview_every=0, latent_init="zero",
                             latent_inference="none")
        started = [e for e in train_run(config, tmp_path) if isinstance(e, ev.RunStarted)]
    finally:
        torch.set_num_threads(threads)
    assert started[0].n_train == 108 and started[0].steps_per_epoch == math.ceil(108 / BATCH_MIN)
    assert json.loads((tmp_path / "config.json").read_text())["settings"]["batch"] == BATCH_MIN
    assert load_run(tmp_path).config.batch == BATCH_MIN
