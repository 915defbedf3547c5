"""Choosing the rigidity weight per data set (``TrainConfig.rigidity_choice="validation"``, the default).

No fixed weight suits every motion, mesh and data set: on a 40° domain closure the fixed 2.0
held the flow to 17 % of the excursion while 0.125 reached 39 % and lowered the validation
loss (benchmarks/RESULTS.md, closure). But the validation loss at the band the trials train
at is not a sharper map: on a small trained hinge it preferred the weakest weights by 4-9
standard errors and their flexible maps came out less sharp than the rigid one. The same
trials scored at the final band (``band_end``, where the map is still the consensus's start)
rank the hinge's weights the other way, strongest best, while on closures, hinges and twists
where weaker weights reach further they agree with the trial band or tie (RESULTS, rigidity
choice, ch12-ch15). So the final band guards and the trial band decides.

The warm-up trains at ``rigidity_lambda`` (``config.RIGIDITY_WARMUP_FRACTION``: a weaker
warm-up let the hinge's flow warp the canonical frame, measured). Once it is over (the flow and
map fitted at the latents' start, latents about to be inferred) the run takes the same start
through short trials of the weights of a ladder, ``rigidity_lambda * (1, 1/4, 1/16, 1/64)``,
the strongest first: each :data:`TRIAL_FRACTION` of an epoch's minibatches (the same particles
for every weight, at least :data:`MIN_TRIAL_STEPS`), alternating flow and map updates as
training does, then each held-out particle's validation loss (data term at its inferred latent)
and its data term at the final band with that latent (:func:`held_out_losses_at`). The ladder
stops at a weight whose final-band losses exceed the best trial's there by more than
:data:`MIN_Z` standard errors of the paired mean difference; of the weights not that clearly
worse there, the one with the lowest validation loss is kept. The run goes on from that
trial's state (its steps are not wasted), so the choice costs the other trials and the
held-out passes: ``benchmarks/RESULTS.md`` states the ratio. The trials and their losses go to
``rigidity_choice.json``; the settings saved with the checkpoint then hold the chosen weight
with ``rigidity_choice="fixed"``, so a resumed run keeps it.

Imports config, io and training's own modules below the loop; the loop calls
:func:`choose_rigidity_if_due` at the start of each epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import numpy as np

from ..config import RIGIDITY_CHOICE_MIN_Z, RIGIDITY_LADDER
from .metrics import validation_losses
from .run_state import RunState
from .schedule import band_limit, phase_of_step
from .step import train_step

__all__ = ["LADDER", "TRIAL_FRACTION", "MIN_TRIAL_STEPS", "CHOICE_FILE", "rigidity_ladder", "choose_rigidity_if_due",
           "choose_rigidity",
           "MIN_Z", "paired_excess", "held_out_losses_at"]

#: The weights tried, as fractions of ``rigidity_lambda`` (the strongest first).
LADDER = RIGIDITY_LADDER
#: A trial's length as a fraction of an epoch's minibatches.
TRIAL_FRACTION = 0.5
#: The fewest minibatches of a trial (two flow updates at the default alternation).
MIN_TRIAL_STEPS = 4
#: A weaker weight is clearly worse than the best trial when its held-out losses at the final band are
#: higher than the best's there by more than this many standard errors of the paired mean.
MIN_Z = RIGIDITY_CHOICE_MIN_Z
#: What the run folder records of the choice.
CHOICE_FILE = "rigidity_choice.json"


def rigidity_ladder(top: float) -> tuple[float, ...]:
    """The weights tried: ``top`` times :data:`LADDER` (just ``(0.0,)`` for ``top == 0``)."""
    return (0.0,) if top == 0 else tuple(top * f for f in LADDER)


def choose_rigidity_if_due(run: RunState) -> dict | None:
    """Run :func:`choose_rigidity` when the settings ask for a choice and the warm-up is over
    (at the start of an epoch); else nothing (``None``)."""
    cfg = run.config
    if cfg.rigidity_choice != "validation" or run.epoch < cfg.warmup_epochs or run.epoch_order is not None:
        return None
    return choose_rigidity(run)


def _snapshot(run: RunState) -> dict:
    """What a trial changes: the model, both optimisers, the latents, the RNG, the prior's mass."""
    return {
        "model": copy.deepcopy(run.model.state_dict()),
        "opt_flow": copy.deepcopy(run.opt_flow.state_dict()),
        "opt_canonical": copy.deepcopy(run.opt_canonical.state_dict()),
        "latents": run.latents.clone(),
        "generator": run.generator.get_state(),
        "latent_mass": None if run.latent_mass is None else run.latent_mass.clone(),
    }


def _restore(run: RunState, snap: dict) -> None:
    """Put ``snap`` back, leaving ``snap`` untouched for the next trial."""
    run.model.load_state_dict(snap["model"])  # in place: the inference view shares the flow generator
    # an optimiser loads state tensors by reference and its steps then change them in place: copies,
    # or the next trial would start from this one's Adam moments and step count
    run.opt_flow.load_state_dict(copy.deepcopy(snap["opt_flow"]))
    run.opt_canonical.load_state_dict(copy.deepcopy(snap["opt_canonical"]))
    run.latents.copy_(snap["latents"])
    run.generator.set_state(snap["generator"])
    run.latent_mass = None if snap["latent_mass"] is None else snap["latent_mass"].clone()


def _trial_batches(run: RunState) -> list[np.ndarray]:
    """The trials' minibatches: the same seeded draw of training particles for every weight."""
    cfg = run.config
    n_steps = max(MIN_TRIAL_STEPS, math.ceil(TRIAL_FRACTION * run.steps_per_epoch))
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 25, run.epoch]))
    draw = rng.permutation(len(run.train_idx))
    order = np.concatenate([draw] * math.ceil(n_steps * cfg.batch / max(1, len(draw))))  # small sets wrap round
    return [np.sort(run.train_idx[order[s * cfg.batch : (s + 1) * cfg.batch]]) for s in range(n_steps)]


def paired_excess(trial: np.ndarray, best: np.ndarray) -> tuple[float, float]:
    """How much higher a trial's per-particle validation losses are than the best trial's, as
    ``(mean, standard error)`` of the paired differences ``trial - best`` (the same particles)."""
    diff = np.asarray(trial, dtype=np.float64) - np.asarray(best, dtype=np.float64)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
    return float(diff.mean()), se


def held_out_losses_at(run: RunState, band: float) -> np.ndarray:
    """The data term of each held-out particle ``(n_val,)``, float64, at its stored latent (not
    inferred again), the map and the data band-limited at ``band``; under torchrun each rank fills
    its share."""
    return validation_losses(run, band, infer=False)


def choose_rigidity(run: RunState) -> dict:
    """Try the ladder's weights from the run's present state, keep one (module notes).

    The strongest is tried first, then each weaker one until a weight's held-out losses at the
    final band (:func:`held_out_losses_at` ``band_end``, latents as inferred at the trial's band)
    are higher than the best trial's there by more than :data:`MIN_Z` standard errors of the
    paired mean (the loss beyond the trial's band is taken to rise on the weak side of its
    minimum). Of the weights not that clearly worse there, the one with the lowest validation loss
    at the trial's band is kept. Leaves ``run`` in the kept trial's state with
    ``run.config.rigidity_lambda`` set to its weight and ``rigidity_choice`` to ``"fixed"``;
    returns (and, on the main rank, writes to ``rigidity_choice.json``) the weights tried, their
    validation losses at both bands, the paired comparisons at the final band and the choice.
    """
    cfg = run.config
    weights = rigidity_ladder(cfg.rigidity_lambda)
    if len(run.val_idx) < 2 or len(weights) == 1:  # nothing to choose by (too few held-out particles) or from
        run.config = dataclasses.replace(cfg, rigidity_choice="fixed")
        return {"epoch": run.epoch, "weights": list(weights), "chosen": cfg.rigidity_lambda,
                "reason": "no validation particles" if len(weights) > 1 else "a weight of 0 leaves nothing to try"}
    batches = _trial_batches(run)
    band = band_limit(run.epoch, cfg.epochs, cfg.band_start, cfg.band_end, cfg.band_ramp_epochs)
    start = _snapshot(run)
    tried, losses, at_end, states, stop = [], [], [], [], "the ladder ran out"
    t0, c0 = time.perf_counter(), time.process_time()
    for weight in weights:  # the strongest first
        if tried:
            _restore(run, start)
        run.config = dataclasses.replace(cfg, rigidity_lambda=weight, rigidity_choice="fixed")
        for s, idx in enumerate(batches):
            phase = phase_of_step(cfg.warmup_epochs, s, cfg.warmup_epochs, cfg.flow_batches, cfg.structure_batches)
            train_step(run, idx, phase, band)
        losses.append(float(validation_losses(run, band).mean()))
        at_end.append(held_out_losses_at(run, cfg.band_end))
        tried.append(weight)
        best = int(np.argmin([a.mean() for a in at_end]))
        excess, se = paired_excess(at_end[-1], at_end[best])
        if excess > MIN_Z * se:  # clearly worse beyond the trial's band: the weaker ones are not tried
            stop = f"{weight:g} is clearly worse than {tried[best]:g} at the final band"
            break
        states.append(_snapshot(run) if weight != weights[-1] else None)
    best = int(np.argmin([a.mean() for a in at_end]))
    compared = []
    for i, weight in enumerate(tried):
        excess, se = paired_excess(at_end[i], at_end[best]) if i != best else (0.0, 0.0)
        compared.append({"weight": weight, "best": tried[best], "excess": excess, "se": se})
    kept = [i for i in range(len(states)) if compared[i]["excess"] <= MIN_Z * compared[i]["se"]]
    k = min(kept, key=lambda i: losses[i])
    chosen = tried[k]
    if not (k == len(tried) - 1 and states[k] is None):  # else the run is in that trial's state already
        _restore(run, states[k])
    run.config = dataclasses.replace(cfg, rigidity_lambda=chosen, rigidity_choice="fixed")
    record = {
        "epoch": run.epoch, "weights": tried, "validation_loss": losses,
        "final_band_loss": [float(a.mean()) for a in at_end], "paired_final_band": compared, "min_z": MIN_Z,
        "stopped": stop, "chosen": chosen, "ladder": list(weights), "trial_steps": len(batches), "batch": cfg.batch,
        "n_validation": len(run.val_idx), "band_limit_nyquist": band, "final_band_nyquist": cfg.band_end,
        "rigidity_scale": cfg.rigidity_scale, "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    if run.dist.is_main:
        from ..io.atomic import write_json

        write_json(run.out_dir / CHOICE_FILE, record)
    return record
