"""The training loop: a generator of typed events (docs/model.md for the model and its training).

:func:`train_run` prepares a run (or restores one from its last checkpoint; the set-up's
stages and counts as :class:`~.events.SetupProgress`, :func:`.run_state.prepared`), then for
every minibatch: reads and Fourier-crops the particles to the training box, infers their
latents with the model frozen (auto-decoder; :mod:`.latents`), injects latent noise, and
takes one Adam step of the flow generator or of the canonical map as the schedule says
(:mod:`.schedule`), with the map and the data term band-limited by frequency marching.
After every epoch it measures the validation loss, writes a checkpoint atomically, and
yields the epoch's news; within an epoch it writes one every ``checkpoint_minutes`` too,
holding the epoch's particle order and position, so a killed run loses at most that
interval. The caller may stop iterating at any yield (``close()``, or napari's worker
``quit()``): the last checkpoint stays intact and ``resume=True`` continues from it,
mid-epoch included, ending with the same parameters as an uninterrupted run on the CPU.
On CUDA a step that cannot fit the free GPU memory is refused before the first step
(:mod:`.memory`); one that runs out mid-run is done again in halved micro-batches with the
same result (:mod:`.micro_batch`).

The loop's parts: :mod:`.run_state` (a new or restored run), :mod:`.step` (one minibatch),
:mod:`.latent_state` (inference view, learned prior), :mod:`.metrics` (validation loss,
FSC), :mod:`.outputs` (what is written when). This module only sequences them. Imports
config, core (io, model) and training's own modules; nothing in training imports it.

Run folder (``out_dir``)::

    config.json      every setting, version, command line, time (+ each resumption)
    checkpoints/last.pt   model, latents, optimisers, RNG state, schedule position, config
    mesh.npz         the mesh (mesh.mesh.save_mesh)
    latents.npy      (n_particles, K) float32, the input's row order (every epoch)
    history.json     per-epoch losses and timings (every epoch)
    canonical.mrc    the canonical map at the training box (at the end)
    particles.star   the input's rows and columns + rlnFlex3dLatent1..K (at the end)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .._process import release_freed_memory
from ..config import TrainConfig
from ..io.atomic import check_output_space
from ..io.prefetch import Prefetcher
from ..model.loss import band_coefficients
from ..model.run import CHECKPOINT_NAME, checkpoint_path
from . import distributed, memory
from . import events as ev
from .agreement import latent_agreement
from .distributed import DistContext
from .latent_state import update_latent_prior
from .metrics import model_fsc, peak_memory_mb, validation_loss
from .outputs import (
    checkpoint_due, estimate_output_bytes, preview_due, preview_volumes, write_checkpoint, write_config,
    write_epoch_files, write_final_outputs,
)
from .rigidity_choice import choose_rigidity_if_due
from .run_state import RunState, new_run, prepared, restored_run
from .schedule import band_limit, lr_factor, phase_of_step
from .step import local_rows, read_batch, set_learning_rates, train_step

__all__ = ["train_run"]


def train_run(config: TrainConfig | None, out_dir, resume: bool = False, cli_argv=None) -> Iterator[ev.Event]:
    """Train 3DFlex, yielding :mod:`.events` as it goes; stop iterating at any time.

    Args:
        config: the settings (a resumed run takes its own from the checkpoint, but
            ``epochs``, ``device``, ``threads`` and ``preview_every`` from here if given).
        out_dir: run folder (created). A new run refuses a folder holding a checkpoint.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        cli_argv: the command line to record in ``config.json``.
    """
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    ctx = distributed.context_from_env()  # torchrun's RANK/WORLD_SIZE; inactive in one process
    run = yield from _open_run(config, out_dir, resume, ctx)  # the set-up's progress as it goes
    yield from _notices(run)  # the variability start's micro-batch halved
    if ctx.is_main:  # refuse a run whose outputs cannot fit before its first epoch
        check_output_space(out_dir, estimate_output_bytes(run), "a training run's checkpoints and outputs")
    estimate = memory.check_device_memory(run)  # and a batch that cannot fit the free GPU memory
    own_group = _join_ranks(run, ctx, resume)
    if resume and run.config.threads:
        torch.set_num_threads(run.config.threads)
    if ctx.is_main:
        write_config(run, cli_argv, resumed=resume)
    yield _run_started(run, estimate)
    while run.epoch < run.config.epochs:
        yield from _epoch(run)
    if ctx.is_main:
        write_final_outputs(run)
    distributed.barrier(ctx)
    if own_group:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    yield ev.RunFinished(run_dir=str(out_dir), epochs=run.epoch, seconds=time.perf_counter() - t_start)


def _open_run(config: TrainConfig | None, out_dir: Path, resume: bool, ctx: DistContext) -> Iterator[ev.Event]:
    """The run restored from ``out_dir``'s checkpoint, or a new one in ``out_dir`` (refusing a folder
    holding a run), returned after yielding its set-up's :class:`~.events.SetupProgress`."""
    from .setup import resolve_device

    if resume:
        if not checkpoint_path(out_dir).is_file():
            raise ValueError(f"{out_dir}: no checkpoint to resume (checkpoints/{CHECKPOINT_NAME} missing)")
        run = yield from prepared(lambda progress: restored_run(config, out_dir, progress=progress))
    else:
        if config is None:
            raise ValueError("train_run needs a TrainConfig for a new run")
        if checkpoint_path(out_dir).is_file():
            raise ValueError(f"{out_dir}: holds a training run already; resume it or choose another folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        device = resolve_device(config.device)
        run = yield from prepared(lambda progress: new_run(config, out_dir, device, write_files=ctx.is_main,
                                                           progress=progress))
    run.dist = ctx
    return run


def _join_ranks(run: RunState, ctx: DistContext, resume: bool) -> bool:
    """Under torchrun: joins the process group and, for a new run, makes every rank hold rank 0's
    numbers. Returns whether this call created the group (and so must destroy it)."""
    if not ctx.active:
        return False
    import torch.distributed as tdist

    own_group = not tdist.is_initialized()
    distributed.init_process_group(ctx, run.device)
    if not resume:  # every rank built the same run; make sure, then take rank 0's numbers
        distributed.check_same(
            [(k, tuple(v.shape)) for k, v in run.model.state_dict().items()] + [tuple(run.latents.shape)],
            "the model's shapes (mesh) and latents",
        )
        distributed.broadcast_tensors(list(run.model.state_dict().values()) + [run.latents, run.spectra], run.device)
    return own_group


def _run_started(run: RunState, estimate: memory.MemoryEstimate) -> ev.RunStarted:
    cfg = run.config
    return ev.RunStarted(
        run_dir=str(run.out_dir), n_particles=len(run.ps), n_train=len(run.train_idx), n_val=len(run.val_idx),
        box=run.box, apix=run.apix, device=str(run.device), epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch,
        start_epoch=run.epoch, start_step=run.epoch_step, n_vertices=int(run.model.vertices_a.shape[0]),
        latent_prior="gaussian" if run.latent_prior is None else f"learned ({cfg.latent_grid}^{cfg.latent_dim} grid)",
        memory_estimate_mb=estimate.total / 2**20, micro_batch=estimate.micro_batch if estimate.micro_batch < cfg.batch else 0,
    )


def _band(cfg: TrainConfig, epochs: float) -> float:
    """The band limit (fraction of Nyquist) after ``epochs`` epochs of frequency marching."""
    return band_limit(epochs, cfg.epochs, cfg.band_start, cfg.band_end, cfg.band_ramp_epochs)


def _epoch(run: RunState) -> Iterator[ev.Event]:
    """One epoch: its steps, then validation, the learned prior's update, the checkpoint and the epoch's news."""
    cfg, ctx = run.config, run.dist
    epoch, t0, c0 = run.epoch, time.perf_counter(), time.process_time()
    if run.epoch_order is None:  # a new epoch (else one a mid-epoch checkpoint resumed)
        run.latents_before = run.latents.cpu().numpy().copy()  # once per epoch, for the latent agreement
        choose_rigidity_if_due(run)  # once, after the warm-up: the rigidity weight by validation loss
        run.epoch_order = torch.randperm(len(run.train_idx), generator=run.generator).numpy()
        run.epoch_step, run.epoch_losses, run.epoch_residuals = 0, [], []
    order, latents_before = run.epoch_order, run.latents_before
    step_idx = [run.train_idx[np.sort(order[s * cfg.batch : (s + 1) * cfg.batch])] for s in range(run.steps_per_epoch)]
    yield from _steps(run, epoch, step_idx)
    losses, residuals = run.epoch_losses, run.epoch_residuals
    run.epoch_order, run.latents_before = None, None  # the epoch's steps are done: its checkpoint is an epoch end
    band = _band(cfg, epoch + 1)
    run.model.max_freq_px = band * run.box / 2
    with torch.no_grad():  # the epoch's map, band-limited once for validation and the FSC
        values = run.model.canonical_values()
    val_loss = validation_loss(run, band, values)
    yield from _notices(run)
    update_latent_prior(run, epoch)
    if ctx.active:  # each particle was processed by one rank this epoch: assemble the full table
        owned = np.zeros(len(run.latents), bool)
        for idx in step_idx:
            owned[local_rows(run, idx)] = True
        owned[local_rows(run, run.val_idx)] = True
        run.latents = distributed.gather_rows(run.latents, owned, run.device)
    run.epoch += 1
    seconds = time.perf_counter() - t0
    std = tuple(run.latents.std(0).tolist()) if len(run.latents) > 1 else (0.0,) * cfg.latent_dim
    latents_after = run.latents.cpu().numpy().copy()
    summary = ev.EpochSummary(
        epoch=epoch, train_loss=float(np.mean(losses)), val_loss=val_loss, seconds=seconds,
        cpu_seconds=time.process_time() - c0, band_limit_nyquist=band, band_limit_a=2.0 * run.apix / band,
        latent_std=std, peak_memory_mb=peak_memory_mb(run.device),
        train_residual=float(np.mean(residuals)) if residuals else float("nan"),
        val_residual=2.0 * val_loss / band_coefficients(run.box, band * run.box / 2),
        latent_agreement=latent_agreement(latents_before, latents_after),
    )
    run.history.append({k: v for k, v in dataclasses.asdict(summary).items()})
    path = write_epoch_files(run) if ctx.is_main else checkpoint_path(run.out_dir)
    distributed.barrier(ctx)
    yield summary
    yield ev.LatentSnapshot(epoch=epoch, latents=latents_after)
    yield model_fsc(run, values)
    if preview_due(cfg, run.epoch):
        yield ev.PreviewVolumes(epoch=epoch, sigmas=(-1.0, 1.0), volumes=preview_volumes(run.model, run.latents), apix=run.apix)
    release_freed_memory()  # the epoch's freed blocks go back to the system (napari; a flex3d command keeps them)
    yield ev.CheckpointWritten(epoch=run.epoch, path=str(path))


def _notices(run: RunState) -> Iterator[ev.Event]:
    """The events a step or the validation queued on the run (:class:`~.events.MicroBatchReduced`)."""
    while run.notices:
        yield run.notices.pop(0)


def _steps(run: RunState, epoch: int, step_idx: list) -> Iterator[ev.Event]:
    """The epoch's minibatches ``step_idx`` from ``run.epoch_step`` on, read ahead by a
    prefetcher; yields each step's losses (kept in ``run.epoch_losses``/``epoch_residuals``
    for the epoch summary) and, every ``checkpoint_minutes``, a mid-epoch checkpoint."""
    cfg, spe = run.config, run.steps_per_epoch
    losses, residuals = run.epoch_losses, run.epoch_residuals

    def read_ahead(idx):  # this rank's images of the next minibatch, read while the current one computes
        local = local_rows(run, idx)
        return read_batch(run, local) if len(local) else None

    def step_news(pending) -> ev.StepLoss:  # reads the step's losses off the device
        step, global_step, phase, band, values = pending
        loss, data, rigid = values.tolist()
        losses.append(loss)
        residual = 2.0 * data / band_coefficients(run.box, band * run.box / 2)
        residuals.append(residual)
        return ev.StepLoss(
            epoch=epoch, step=step, global_step=global_step, phase=phase, loss=loss, data_loss=data,
            rigidity_loss=rigid, band_limit_nyquist=band, band_limit_a=2.0 * run.apix / band, steps_per_epoch=spe,
            residual=residual,
        )

    pending = None  # the previous step, announced once the next one is queued: the device never idles for it
    first = run.epoch_step
    with Prefetcher(read_ahead, step_idx[first:]) as batches:
        for step, (idx, batch) in enumerate(zip(step_idx[first:], batches), start=first):
            band = _band(cfg, epoch + step / spe)
            phase = phase_of_step(
                epoch, run.global_step - cfg.warmup_epochs * spe, cfg.warmup_epochs, cfg.flow_batches,
                cfg.structure_batches,
            )
            # the rate a step uses is the one at its end: the last step runs at lr_final
            set_learning_rates(run, lr_factor(epoch + (step + 1) / spe, cfg.epochs, cfg.lr_final, cfg.band_ramp_epochs))
            values = train_step(run, idx, phase, band, batch=batch)
            yield from _notices(run)  # the micro-batch halved after running out of memory
            run.global_step += 1
            run.epoch_step = step + 1
            if pending is not None:
                yield step_news(pending)
            pending = (step, run.global_step, phase, band, values)
            if step + 1 < spe and checkpoint_due(run):  # the epoch's end writes its own
                yield step_news(pending)  # its loss belongs in the checkpoint
                pending = None
                path = write_checkpoint(run)
                yield ev.CheckpointWritten(epoch=run.epoch, path=str(path), step=run.epoch_step)
    if pending is not None:
        yield step_news(pending)
