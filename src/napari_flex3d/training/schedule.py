"""The training schedule: which parameters a minibatch updates, and the band limit (paper §2).

Every epoch is a pass over the training particles in minibatches. During the first
``warmup_epochs`` the flow generator and the canonical map train together with the
latents held at their initial values. After that the minibatches cycle through
``flow_batches`` updates of the flow generator (latents inferred, map fixed) and
``structure_batches`` updates of the canonical map (flow fixed). Frequency marching
raises the band limit of the map and of the data term linearly from ``band_start`` to
``band_end`` (fractions of the training box's Nyquist) over ``band_ramp_epochs``; after
that, with ``lr_final < 1``, both learning rates fall along a half cosine to ``lr_final``
times their start by the last step (:func:`lr_factor`). Everything here is a pure function
of the settings and the position in the run, so a resumed run follows the same schedule.
Imports nothing of the package (explore reuses :func:`band_limit`).
"""

from __future__ import annotations

import math

__all__ = ["phase_of_step", "band_limit", "ramp_epochs", "lr_factor"]

WARMUP, FLOW, STRUCTURE = "warmup", "flow", "structure"


def phase_of_step(epoch: int, step_after_warmup: int, warmup_epochs: int, flow_batches: int, structure_batches: int) -> str:
    """``"warmup"``, ``"flow"`` or ``"structure"`` for a minibatch.

    ``step_after_warmup`` counts the minibatches since the warm-up ended (it keeps
    counting across epochs, so a cycle may straddle an epoch boundary).
    """
    if epoch < warmup_epochs:
        return WARMUP
    if flow_batches < 0 or structure_batches < 0 or flow_batches + structure_batches == 0:
        raise ValueError(f"flow_batches={flow_batches}, structure_batches={structure_batches}: need a positive cycle")
    return FLOW if step_after_warmup % (flow_batches + structure_batches) < flow_batches else STRUCTURE


def ramp_epochs(epochs: int, band_ramp_epochs: float | None) -> float:
    """Epochs over which the band limit rises (default: two thirds of the run)."""
    if band_ramp_epochs is not None:
        return max(float(band_ramp_epochs), 0.0)
    return 2.0 * epochs / 3.0


def band_limit(progress_epochs: float, epochs: int, band_start: float, band_end: float, band_ramp_epochs=None) -> float:
    """Band limit (fraction of Nyquist) after ``progress_epochs`` epochs (fractional)."""
    if not 0 < band_start <= 1 or not 0 < band_end <= 1:
        raise ValueError(f"band_start={band_start} and band_end={band_end} must lie in (0, 1]")
    ramp = ramp_epochs(epochs, band_ramp_epochs)
    t = 1.0 if ramp <= 0 else min(max(progress_epochs / ramp, 0.0), 1.0)
    return band_start + (band_end - band_start) * t


def lr_factor(progress_epochs: float, epochs: int, lr_final: float, band_ramp_epochs=None) -> float:
    """Learning-rate multiplier after ``progress_epochs`` epochs: 1 until the band ramp ends,
    then a half cosine down to ``lr_final`` at the end of the run (``lr_final = 1``: constant)."""
    if not 0 < lr_final <= 1:
        raise ValueError(f"lr_final={lr_final} must lie in (0, 1]")
    start = min(ramp_epochs(epochs, band_ramp_epochs), float(epochs))
    if lr_final == 1 or progress_epochs <= start or epochs <= start:
        return 1.0
    t = min((progress_epochs - start) / (epochs - start), 1.0)
    return lr_final + (1.0 - lr_final) * 0.5 * (1.0 + math.cos(math.pi * t))
