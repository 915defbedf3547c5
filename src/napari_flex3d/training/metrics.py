"""What the loop measures at the end of an epoch: the validation loss, the model's FSC, peak memory.

The validation loss is the data term of the held-out particles at their inferred latents
(docs/validation.md for FSC). Imports core (io, ops) and training's :mod:`.step`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io.prefetch import host_to_device
from . import events as ev
from .run_state import RunState
from .step import data_terms, infer_batch_latents, local_rows, read_batch, with_spectrum

__all__ = ["validation_loss", "validation_losses", "model_fsc", "peak_memory_mb", "KEEP_VALIDATION_BYTES"]

#: The held-out particles' minibatches (images, spectra, CTFs, poses at the training box) are read and
#: transformed once per run and kept on its device while they take at most this many bytes (about 10 per
#: pixel and particle: 6,700 particles at box 32, 400 at box 128); a larger validation set is read every epoch.
KEEP_VALIDATION_BYTES = 1 << 26


def validation_loss(run: RunState, band: float, values: torch.Tensor | None = None) -> float:
    """Mean data loss per held-out particle at inferred latents (which are stored); ``nan`` without any.
    ``values``: the model's :meth:`canonical_values` at ``band``, if the caller has them."""
    if len(run.val_idx) == 0:
        return float("nan")
    return float(validation_losses(run, band, values=values).mean())


def validation_losses(run: RunState, band: float, infer: bool = True, values: torch.Tensor | None = None) -> np.ndarray:
    """The data loss of each held-out particle ``(n_val,)``, float64, at its inferred latent (stored;
    ``infer=False``: at its stored latent, not inferred again; ``values``: as :func:`validation_loss`).

    Under torchrun each rank fills its share ``val_idx[rank::world]`` and the vectors are added
    over ranks; read from the device once.
    """
    max_freq_px = band * run.box / 2
    run.model.max_freq_px = max_freq_px
    losses = torch.zeros(len(run.val_idx), dtype=torch.float64, device=run.device)  # filled on the device
    if values is None:
        with torch.no_grad():  # the map is frozen here: band-limit it once, not once per minibatch
            values = run.model.canonical_values()
    for rows, slots, batch in _validation_batches(run):
        z = run.latents[rows]
        if infer:
            z = infer_batch_latents(run, batch, z, max_freq_px, values=values)
            run.latents[rows] = z.detach()
        with torch.no_grad():
            losses[slots] = data_terms(run, batch, z, max_freq_px, values=values).double()
    if run.dist.active:
        from .distributed import all_reduce_sum

        losses = all_reduce_sum(losses)
    return losses.cpu().numpy()


def _validation_batches(run: RunState) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """This rank's held-out particles as ``(rows (m,), slots (m,), batch)`` per minibatch: their rows of
    ``run.latents``, their places in ``run.val_idx`` and the minibatch with its spectrum (transformed
    once, for the inference and the loss); kept in ``run.validation_batches`` for the run's later epochs
    (:data:`KEEP_VALIDATION_BYTES`)."""
    key = (run.box, str(run.device), run.config.batch, len(run.val_idx))
    kept = run.validation_batches
    if kept is not None and kept[0] == key:
        return kept[1]
    val_idx = local_rows(run, run.val_idx)
    where = np.searchsorted(run.val_idx, val_idx)  # val_idx is sorted (setup.split_train_val)
    batches = []
    for s in range(0, len(val_idx), run.config.batch):
        idx = val_idx[s : s + run.config.batch]
        rows = host_to_device(torch.as_tensor(idx, dtype=torch.long), run.device)
        slots = host_to_device(torch.as_tensor(where[s : s + len(idx)], dtype=torch.long), run.device)
        batches.append((rows, slots, with_spectrum(read_batch(run, idx))))
    small = 10 * len(val_idx) * run.box**2 <= KEEP_VALIDATION_BYTES
    run.validation_batches = (key, batches) if small else None
    return batches


def peak_memory_mb(device: torch.device) -> float:
    """The most memory the run has held: the device's allocations on CUDA, the process's RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except ImportError:  # pragma: no cover (Windows)
        return float("nan")


@torch.no_grad()
def model_fsc(run: RunState, values: torch.Tensor | None = None) -> ev.FSCCurve:
    """FSC of the canonical map against the consensus map, both at the training box (the epoch just ended;
    ``values``: the model's :meth:`canonical_values`, if the caller has them)."""
    from ..ops.fsc import fsc, fsc_resolution, shell_frequencies_inv_a

    vol = run.model.canonical.to_volume(run.model.canonical_values() if values is None else values)
    curve = fsc(vol, run.consensus).cpu().numpy()
    return ev.FSCCurve(
        epoch=run.epoch - 1,
        kind="model",
        frequencies_per_a=shell_frequencies_inv_a(run.box, run.apix),
        fsc=curve,
        resolution_a=fsc_resolution(curve, run.box, run.apix),
    )
