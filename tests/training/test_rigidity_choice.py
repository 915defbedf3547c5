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
from napari_flex3d.training.metrics import validation_loss, validation_losses
from napari_flex3d.training.rigidity_choice import CHOICE_FILE, MIN_Z, _restore, _snapshot, _trial_batches, rigidity_ladder
from napari_flex3d.training.rigidity_choice import choose_rigidity, held_out_losses_at, paired_excess
from napari_flex3d.training.run_state import new_run
from napari_flex3d.training.schedule import band_limit, phase_of_step
from napari_flex3d.training.step import data_terms, read_batch, train_step


CHOICE = dict(rigidity_choice="validation", rigidity_scale="volume")  # the experimental settings under test


def test_ladder_and_the_warm_up_weight():
    assert rigidity_ladder(2.0) == (2.0, 0.5, 0.125, 0.03125)
    assert rigidity_ladder(0.0) == (0.0,)
    assert TrainConfig(rigidity_choice="validation").rigidity_weight() == 2.0  # before the choice: the ladder's top
    assert TrainConfig().rigidity_weight() == 2.0  # the default: the choice, warming up at the top
    assert TrainConfig(rigidity_choice="fixed", rigidity_lambda=0.7).rigidity_weight() == 0.7


def test_settings_saved_before_the_choice_keep_a_fixed_per_cell_weight():
    old = {k: v for k, v in to_dict(TrainConfig(rigidity_lambda=2.0)).items()
           if k not in ("rigidity_choice", "rigidity_scale")}
    c = from_dict(TrainConfig, old)
    assert (c.rigidity_lambda, c.rigidity_choice, c.rigidity_scale) == (2.0, "fixed", "cell")
    new = TrainConfig(rigidity_choice="validation", rigidity_scale="volume")
    assert (TrainConfig().rigidity_choice, TrainConfig().rigidity_scale) == ("validation", "cell")  # the defaults
    assert from_dict(TrainConfig, to_dict(new)) == new


def test_a_run_keeps_the_best_weight_among_those_not_clearly_worse_at_the_final_band(tiny_sim, tiny_config, tmp_path):
    out = tmp_path / "run"
    for _ in train_run(tiny_config(tiny_sim, out, epochs=2, **CHOICE), out):
        pass
    record = json.loads((out / CHOICE_FILE).read_text())
    assert record["ladder"] == [2.0, 0.5, 0.125, 0.03125] and record["epoch"] == 1
    tried, losses, at_end, paired = (record[k] for k in ("weights", "validation_loss", "final_band_loss",
                                                         "paired_final_band"))
    assert tried == record["ladder"][: len(tried)] and len(losses) == len(at_end) == len(paired) == len(tried)  # strongest first
    assert all(np.isfinite(losses)) and all(np.isfinite(at_end)) and record["final_band_nyquist"] == 0.8
    best = tried[int(np.argmin(at_end))]
    for p, loss in zip(paired, at_end):  # each compared at the final band with the lowest mean loss there
        assert p["best"] == best
        assert p["excess"] == pytest.approx(loss - min(at_end), rel=1e-6, abs=1e-9)
    clearly_worse = [p["excess"] > MIN_Z * p["se"] for p in paired]
    assert not any(clearly_worse[:-1])  # the ladder stops at the first clearly worse weight, or runs out
    assert clearly_worse[-1] or len(tried) == 4
    kept = [i for i, worse in enumerate(clearly_worse) if not worse]
    assert record["chosen"] == tried[min(kept, key=lambda i: losses[i])]  # the lowest loss at the trial's band
    saved = load_run(out).config  # the checkpoint's settings hold the choice: a resumed run keeps it
    assert (saved.rigidity_lambda, saved.rigidity_choice, saved.rigidity_scale) == (record["chosen"], "fixed", "volume")


def test_paired_excess_is_the_paired_t_statistic():
    rng = np.random.default_rng(0)
    best = rng.normal(100.0, 5.0, 60)
    trial = best + rng.normal(0.05, 0.1, 60)  # a small shift under a large spread between particles
    excess, se = paired_excess(trial, best)
    from scipy.stats import ttest_ind, ttest_rel

    assert excess == pytest.approx(float(np.mean(trial - best)))
    assert excess / se == pytest.approx(ttest_rel(trial, best).statistic)
    assert abs(ttest_ind(trial, best).statistic) < 0.1 and excess / se > MIN_Z  # pairing makes the shift visible


def test_per_particle_validation_losses_are_each_particles_data_term(tiny_sim, tiny_config, tmp_path):
    """Each held-out particle's loss, in ``val_idx`` order over several minibatches, is its own data
    term at the latent stored for it, and their mean is the epoch's validation loss."""
    config = tiny_config(tiny_sim, tmp_path / "v", warmup_epochs=0, preview_every=0, batch=5)
    run = new_run(config, tmp_path / "v", torch.device("cpu"))
    latents = run.latents.clone()
    per_particle = validation_losses(run, 0.5)
    assert per_particle.shape == (len(run.val_idx),) and len(run.val_idx) > 2 * config.batch
    with torch.no_grad():
        direct = data_terms(run, read_batch(run, run.val_idx), run.latents[run.val_idx], 0.5 * run.box / 2)
    np.testing.assert_allclose(per_particle, direct.double().numpy(), rtol=1e-5)
    run.latents.copy_(latents)
    assert validation_loss(run, 0.5) == pytest.approx(float(per_particle.mean()), rel=1e-9)


def test_held_out_losses_at_a_band_keep_the_stored_latents(tiny_sim, tiny_config, tmp_path):
    """The final band's losses are each held-out particle's data term at its stored latent (no
    inference), with the map band-limited there; at the trial's own band they equal the losses
    validation gave after inferring those latents."""
    config = tiny_config(tiny_sim, tmp_path / "f", warmup_epochs=0, preview_every=0, batch=5)
    run = new_run(config, tmp_path / "f", torch.device("cpu"))
    run.latents.copy_(torch.linspace(-1, 1, len(run.latents))[:, None])
    latents = run.latents.clone()
    at_end = held_out_losses_at(run, 0.8)
    torch.testing.assert_close(run.latents, latents, rtol=0, atol=0)  # nothing inferred
    with torch.no_grad():
        run.model.max_freq_px = 0.8 * run.box / 2
        direct = data_terms(run, read_batch(run, run.val_idx), run.latents[run.val_idx], 0.8 * run.box / 2)
    np.testing.assert_allclose(at_end, direct.double().numpy(), rtol=1e-5)
    assert at_end.shape == (len(run.val_idx),) and len(run.val_idx) > 2 * config.batch
    inferred = validation_losses(run, 0.5)
    np.testing.assert_allclose(held_out_losses_at(run, 0.5), inferred, rtol=1e-5)
    assert at_end.mean() > held_out_losses_at(run, 0.5).mean()  # more coefficients beyond the trial's band


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


def test_every_trial_starts_from_the_same_state(tiny_sim, tiny_config, tmp_path):
    """A trial run again after others gives the same validation loss: restoring the start does not
    hand it the optimisers' moments and step counts of the trials before it."""
    config = tiny_config(tiny_sim, tmp_path / "r", warmup_epochs=0, preview_every=0, **CHOICE)
    run = new_run(config, tmp_path / "r", torch.device("cpu"))
    band = band_limit(0, config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    batches = _trial_batches(run)
    for idx in batches[:2]:  # the optimisers hold moments and step counts at the start, as after a warm-up
        train_step(run, idx, "warmup", band)
    start, results = _snapshot(run), []
    for weight in (2.0, 0.03125, 2.0, 2.0):
        _restore(run, start)
        run.config = dataclasses.replace(config, rigidity_lambda=weight, rigidity_choice="fixed")
        for s, idx in enumerate(batches):
            train_step(run, idx, phase_of_step(0, s, 0, config.flow_batches, config.structure_batches), band)
        results.append(validation_losses(run, band))
    np.testing.assert_array_equal(results[2], results[0])
    np.testing.assert_array_equal(results[3], results[0])
    assert not np.array_equal(results[1], results[0])  # the weight matters


def test_fixed_weight_and_no_held_out_particles_skip_the_trials(tiny_sim, tiny_config, tmp_path):
    out = tmp_path / "fixed"
    for _ in train_run(tiny_config(tiny_sim, out, epochs=2, rigidity_choice="fixed", rigidity_lambda=0.7), out):
        pass
    assert not (out / CHOICE_FILE).exists() and load_run(out).config.rigidity_lambda == 0.7
    config = tiny_config(tiny_sim, tmp_path / "b", val_fraction=0.0)
    run = new_run(config, tmp_path / "b", torch.device("cpu"))
    assert choose_rigidity(run)["reason"] == "no validation particles"
    assert run.config.rigidity_lambda == 2.0 and run.config.rigidity_choice == "fixed"
