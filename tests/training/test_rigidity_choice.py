"""The rigidity weight chosen per data set by validation loss (training/rigidity_choice.py), and the
settings of runs saved before the choice and the volume scale existed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_flex3d.config import TrainConfig, from_dict, to_dict
from napari_flex3d.model.run import load_run
from napari_flex3d.training.loop import train_run
from napari_flex3d.training.metrics import validation_loss
from napari_flex3d.training.rigidity_choice import CHOICE_FILE, _restore, _snapshot, _trial_batches, rigidity_ladder
from napari_flex3d.training.rigidity_choice import choose_rigidity
from napari_flex3d.training.run_state import new_run
from napari_flex3d.training.schedule import band_limit, phase_of_step
from napari_flex3d.training.step import train_step


CHOICE = dict(rigidity_choice="validation", rigidity_scale="volume")  # the experimental settings under test


def test_ladder_and_the_warm_up_weight():
    assert rigidity_ladder(2.0) == (2.0, 0.5, 0.125, 0.03125)
    assert rigidity_ladder(0.0) == (0.0,)
    assert TrainConfig(rigidity_choice="validation").rigidity_weight() == 0.25  # before the choice: the ladder's middle
    assert TrainConfig().rigidity_weight() == 2.0  # the default: a fixed weight
    assert TrainConfig(rigidity_choice="fixed", rigidity_lambda=0.7).rigidity_weight() == 0.7


def test_settings_saved_before_the_choice_keep_a_fixed_per_cell_weight():
    old = {k: v for k, v in to_dict(TrainConfig(rigidity_lambda=2.0)).items()
           if k not in ("rigidity_choice", "rigidity_scale")}
    c = from_dict(TrainConfig, old)
    assert (c.rigidity_lambda, c.rigidity_choice, c.rigidity_scale) == (2.0, "fixed", "cell")
    new = TrainConfig(rigidity_choice="validation", rigidity_scale="volume")
    assert (TrainConfig().rigidity_choice, TrainConfig().rigidity_scale) == ("fixed", "cell")  # the defaults
    assert from_dict(TrainConfig, to_dict(new)) == new


def test_a_run_chooses_the_weight_with_the_lowest_validation_loss(tiny_sim, tiny_config, tmp_path):
    out = tmp_path / "run"
    for _ in train_run(tiny_config(tiny_sim, out, epochs=2, **CHOICE), out):
        pass
    record = json.loads((out / CHOICE_FILE).read_text())
    assert record["ladder"] == [2.0, 0.5, 0.125, 0.03125] and record["epoch"] == 1
    tried, losses = record["weights"], record["validation_loss"]
    assert tried == record["ladder"][::-1][: len(tried)] and len(losses) == len(tried) >= 2  # the weakest first
    assert all(np.isfinite(losses)) and record["chosen"] == tried[int(np.argmin(losses))]
    # every trial but the last improved on the one before; the last did not, unless the ladder ran out
    assert all(b < a for a, b in zip(losses[:-2], losses[1:-1]))
    assert losses[-1] >= losses[-2] or len(tried) == 4
    saved = load_run(out).config  # the checkpoint's settings hold the choice: a resumed run keeps it
    assert (saved.rigidity_lambda, saved.rigidity_choice, saved.rigidity_scale) == (record["chosen"], "fixed", "volume")


def test_the_run_goes_on_from_the_chosen_trial(tiny_sim, tiny_config, tmp_path):
    """After the choice the run is exactly where the chosen weight's trial alone leaves it (CPU:
    deterministic), and the weights tried were each started from the same state."""
    torch.manual_seed(0)
    config = tiny_config(tiny_sim, tmp_path / "a", warmup_epochs=0, preview_every=0, **CHOICE)
    run = new_run(config, tmp_path / "a", torch.device("cpu"))
    start = _snapshot(run)
    record = choose_rigidity(run)
    assert run.config.rigidity_choice == "fixed" and run.config.rigidity_lambda == record["chosen"]
    after = {k: v.clone() for k, v in run.model.state_dict().items()}
    latents_after = run.latents.clone()
    _restore(run, start)
    run.config = dataclasses.replace(config, rigidity_lambda=record["chosen"], rigidity_choice="fixed")
    band = band_limit(0, config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    for s, idx in enumerate(_trial_batches(run)):
        train_step(run, idx, phase_of_step(0, s, 0, config.flow_batches, config.structure_batches), band)
    chosen_loss = record["validation_loss"][record["weights"].index(record["chosen"])]
    assert validation_loss(run, band) == pytest.approx(chosen_loss)
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(run.latents, latents_after, rtol=0, atol=0)


def test_fixed_weight_and_no_held_out_particles_skip_the_trials(tiny_sim, tiny_config, tmp_path):
    out = tmp_path / "fixed"
    for _ in train_run(tiny_config(tiny_sim, out, epochs=2, rigidity_choice="fixed", rigidity_lambda=0.7), out):
        pass
    assert not (out / CHOICE_FILE).exists() and load_run(out).config.rigidity_lambda == 0.7
    config = tiny_config(tiny_sim, tmp_path / "b", val_fraction=0.0)
    run = new_run(config, tmp_path / "b", torch.device("cpu"))
    assert choose_rigidity(run)["reason"] == "no validation particles"
    assert run.config.rigidity_lambda == 2.0 and run.config.rigidity_choice == "fixed"
