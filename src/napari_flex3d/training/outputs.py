"""What a run writes to its folder, and when: checkpoints, progress files, previews, final outputs.

Every epoch: ``checkpoints/last.pt`` (:func:`checkpoint_state`, written atomically by the
loop), ``latents.npy`` and ``history.json``; within an epoch, ``last.pt`` again every
``checkpoint_minutes`` (:func:`checkpoint_due`); at the start ``config.json``; at the end
``canonical.mrc``, ``particles.star`` (+ ``particles.cs`` for a cryoSPARC input). Preview
volumes are made every ``preview_every`` epochs and at the last. Imports config and
core (io, model).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..config import provenance, to_dict
from ..io.atomic import save_npy, write_json
from ..io.checkpoint import save_checkpoint
from ..model.run import checkpoint_path
from .run_state import RunState

__all__ = [
    "checkpoint_state", "checkpoint_due", "write_checkpoint", "write_epoch_files", "estimate_output_bytes",
    "write_progress", "write_final_outputs", "write_config", "preview_due", "preview_volumes",
]


def checkpoint_state(run: RunState) -> dict:
    """The checkpoint: plain tensors, numbers and strings (``torch.load(weights_only=True)`` reads it)."""
    from .. import __version__

    return {
        "package_version": __version__,
        "config_json": json.dumps(to_dict(run.config)),
        "epoch": run.epoch,
        "global_step": run.global_step,
        "box": run.box,
        "apix": run.apix,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "latents": run.latents.detach().cpu().clone(),
        "spectra": run.spectra.detach().cpu(),
        "train_idx": torch.as_tensor(run.train_idx),
        "val_idx": torch.as_tensor(run.val_idx),
        "opt_flow": run.opt_flow.state_dict(),
        "opt_canonical": run.opt_canonical.state_dict(),
        "rng_torch": run.generator.get_state(),
        "history_json": json.dumps(run.history),
        **({} if run.latent_prior is None else {"latent_prior": run.latent_prior.log_density.detach().cpu()}),
        **({} if run.latent_mass is None else {"latent_mass": run.latent_mass.detach().cpu()}),
        **({} if run.epoch_order is None else _epoch_in_progress(run)),
    }


def _epoch_in_progress(run: RunState) -> dict:
    """What continues an epoch bit-identically: its particle order, steps done, their losses
    (float64 holds the float32 figures exactly) and the latents it started from."""
    return {
        "epoch_order": torch.as_tensor(run.epoch_order),
        "epoch_step": run.epoch_step,
        "epoch_losses": torch.tensor(run.epoch_losses, dtype=torch.float64),
        "epoch_residuals": torch.tensor(run.epoch_residuals, dtype=torch.float64),
        "latents_before": torch.as_tensor(run.latents_before),
    }


def checkpoint_due(run: RunState) -> bool:
    """Whether ``config.checkpoint_minutes`` have passed since the last checkpoint (one process
    only: ranks under torchrun would disagree on the time, so they checkpoint at epoch ends)."""
    minutes = run.config.checkpoint_minutes
    return bool(minutes) and not run.dist.active and time.monotonic() - run.checkpoint_clock >= 60.0 * minutes


def write_checkpoint(run: RunState) -> Path:
    """``checkpoints/last.pt`` now (atomically: a kill leaves the previous one); restarts the interval."""
    path = save_checkpoint(checkpoint_path(run.out_dir), checkpoint_state(run))
    run.checkpoint_clock = time.monotonic()
    return path


def write_epoch_files(run: RunState) -> Path:
    """End of an epoch (rank 0 only): the checkpoint, written atomically so that a kill leaves
    the previous one, then ``latents.npy`` and ``history.json``. Returns the checkpoint's path."""
    path = write_checkpoint(run)
    write_progress(run)
    return path


def estimate_output_bytes(run: RunState) -> int:
    """Bytes the run's folder needs at its peak: the checkpoint twice (the old one and the new
    being written), ``latents.npy``, ``canonical.mrc`` and the particle file with its new columns."""
    def nbytes(t) -> int:
        return t.numel() * t.element_size()

    model = sum(nbytes(v) for v in run.model.state_dict().values())
    latents = nbytes(run.latents)
    checkpoint = 3 * model + 2 * latents + nbytes(run.spectra) + 16 * len(run.train_idx) + 8 * len(run.val_idx)
    particle_file = os.path.getsize(run.config.particles) if os.path.isfile(run.config.particles) else 0
    star = particle_file + 16 * latents  # the input's rows again, each latent as text
    return 2 * checkpoint + latents + 4 * run.box**3 + star + (particle_file + latents if run.ps.fmt == "cryosparc" else 0)


def write_config(run: RunState, cli_argv, resumed: bool) -> None:
    """``config.json``: the settings and provenance; a resumption keeps the first provenance and
    adds its own to ``resumed``."""
    path = run.out_dir / "config.json"
    doc = {"kind": "TrainConfig", "settings": to_dict(run.config), "provenance": provenance(cli_argv)}
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        doc["provenance"] = old.get("provenance", doc["provenance"])
        doc["resumed"] = old.get("resumed", []) + [{**provenance(cli_argv), "from_epoch": run.epoch}]
    doc["training_box"] = run.box
    doc["training_apix"] = run.apix
    write_json(path, doc, default=str)


def write_progress(run: RunState) -> None:
    """Files refreshed every epoch: ``latents.npy`` and ``history.json`` (each written atomically)."""
    save_npy(run.out_dir / "latents.npy", run.latents.cpu().numpy().astype(np.float32))
    write_json(run.out_dir / "history.json", run.history, indent=1)


def write_final_outputs(run: RunState) -> None:
    """``canonical.mrc``, ``particles.star`` (+ ``particles.cs`` for a ``.cs`` input), latents and history."""
    from ..io.mrc import write_map
    from ..io.particles import write_cs, write_star

    write_progress(run)
    with torch.no_grad():
        vol = run.model.canonical.to_volume(run.model.canonical_values()).cpu().numpy()
    write_map(run.out_dir / "canonical.mrc", vol.astype(np.float32), run.apix, label="napari-flex3d canonical map")
    z = run.latents.cpu().numpy().astype(np.float32)
    write_star(run.ps, run.out_dir / "particles.star", extra_columns={"rlnFlex3dLatent": z})
    if run.ps.fmt == "cryosparc":
        write_cs(run.ps, run.out_dir / "particles.cs", extra_fields={f"flex3d/latent_{k}": z[:, k] for k in range(z.shape[1])})


def preview_due(config, epochs_done: int) -> bool:
    """Whether the epoch that brought the run to ``epochs_done`` shows preview volumes."""
    return bool(config.preview_every) and (epochs_done % config.preview_every == 0 or epochs_done == config.epochs)


@torch.no_grad()
def preview_volumes(model, latents: torch.Tensor, sigmas=(-1.0, 1.0)) -> np.ndarray:
    """Convected maps at ``mean + s * std`` along each latent axis: ``(K, len(sigmas), N, N, N)``."""
    mean = latents.mean(0)
    std = latents.std(0) if len(latents) > 1 else torch.ones(latents.shape[1], device=latents.device)
    out = []
    for k in range(latents.shape[1]):
        row = []
        for s in sigmas:
            z = mean.clone()
            z[k] = mean[k] + s * std[k]
            row.append(model.volume(z.to(model.vertices_a)).cpu().numpy())
        out.append(np.stack(row))
    return np.stack(out).astype(np.float32)
