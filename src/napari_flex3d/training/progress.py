"""Consume training events on a terminal: a tqdm progress bar and a plain-text log.

The napari widget consumes the same stream (:func:`~.loop.train_run`) in a worker thread;
this is its command-line twin.
Imports training's :mod:`.events` (and tqdm); nothing of the model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from ..io.atomic import format_bytes, open_log
from . import events as ev

__all__ = ["format_event", "consume_events"]


def format_event(event: ev.Event) -> str | None:
    """One log line for an event (``None`` for events that only feed plots)."""
    if isinstance(event, ev.SetupProgress):  # a line as each stage begins
        if event.done:
            return None
        return f"set-up: {event.stage}" + (f" ({event.total:,} {event.unit})" if event.total else "")
    if isinstance(event, ev.RunStarted):
        resumed = f", resuming after epoch {event.start_epoch}" if event.start_epoch else ""
        if event.start_step:
            resumed = f", resuming in epoch {event.start_epoch + 1} after step {event.start_step}"
        memory = ""
        if math.isfinite(event.memory_estimate_mb):
            memory = f", about {format_bytes(event.memory_estimate_mb * 2**20)} of device memory per step (estimate)"
        if 0 < event.micro_batch:
            memory += f", micro-batches of {event.micro_batch}"
        return (
            f"run {event.run_dir}: {event.n_particles} particles ({event.n_train} train, {event.n_val} validation), "
            f"box {event.box} at {event.apix:.3g} Å/px, {event.n_vertices} mesh vertices, device {event.device}, "
            f"{event.epochs} epochs x {event.steps_per_epoch} steps, latent prior {event.latent_prior}{memory}{resumed}"
        )
    if isinstance(event, ev.StepLoss):
        return (
            f"epoch {event.epoch + 1} step {event.step + 1}/{event.steps_per_epoch} {event.phase}: loss {event.loss:.4g} "
            f"(data {event.data_loss:.4g}, rigidity {event.rigidity_loss:.3g}), residual {event.residual:.4f} per "
            f"coefficient, band {event.band_limit_a:.1f} Å ({event.band_limit_nyquist:.2f} Nyquist)"
        )
    if isinstance(event, ev.EpochSummary):
        val = "n/a" if math.isnan(event.val_loss) else f"{event.val_loss:.4g}"
        std = ", ".join(f"{s:.2f}" for s in event.latent_std)
        return (
            f"epoch {event.epoch + 1}: train {event.train_loss:.4g}, validation {val} (residual per coefficient "
            f"{event.train_residual:.4f} / {event.val_residual:.4f}; 1 = noise), {event.seconds:.1f} s "
            f"({event.cpu_seconds:.1f} s CPU), "
            f"latent std ({std}), latent agreement with the last epoch {event.latent_agreement:.4f}, "
            f"peak memory {event.peak_memory_mb:.0f} MB"
        )
    if isinstance(event, ev.FSCCurve):
        return f"epoch {event.epoch + 1}: {event.kind} FSC 0.143 at {event.resolution_a:.2f} Å"
    if isinstance(event, ev.CheckpointWritten):
        if event.step:
            return f"checkpoint in epoch {event.epoch + 1} after step {event.step}: {event.path}"
        return f"checkpoint after epoch {event.epoch}: {event.path}"
    if isinstance(event, ev.MicroBatchReduced):
        where = f"epoch {event.epoch + 1} step {event.step + 1}, {event.where}"
        if event.where == "validation":
            where = f"epoch {event.epoch + 1} validation"
        elif event.where == "latent initialisation":
            where = "set-up, latent initialisation"
        pieces = -(-event.batch // event.micro_batch)
        return (
            f"{where}: out of GPU memory ({event.message or 'torch.OutOfMemoryError'}); "
            f"micro-batch {event.previous} -> {event.micro_batch} particles, each batch of {event.batch} now in "
            f"{pieces} pieces with its gradient accumulated (same result, slower); kept for the rest of the run"
        )
    if isinstance(event, ev.RunFinished):
        return f"finished {event.epochs} epochs in {event.seconds:.0f} s: {event.run_dir}"
    return None


def _on_a_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _setup_bar(bar, event: ev.SetupProgress, tqdm):
    """The set-up's bar: a new one as each stage begins (with its count, if any), else moved on."""
    if bar is None or event.stage != bar.desc:
        if bar is not None:
            bar.close()
        plain = {} if event.total else {"bar_format": "{desc} ({elapsed})"}  # a stage without a count
        bar = tqdm(total=event.total or None, unit=event.unit or "it", desc=event.stage, leave=False, **plain)
    if event.total:
        bar.update(event.done - bar.n)
    return bar


def consume_events(events: Iterable[ev.Event], log_path=None, progress: bool = True) -> list[ev.EpochSummary]:
    """Drive a training generator to its end with a progress bar; log every event's line.

    Args:
        events: what :func:`~.loop.train_run` returns.
        log_path: text file to append the log to (``None``: no file).
        progress: show a tqdm bar over all minibatches (else print epoch lines only).
    Returns:
        The epoch summaries, in order.
    """
    from tqdm.auto import tqdm

    log = open_log(log_path) if log_path is not None else None
    bar = None
    summaries: list[ev.EpochSummary] = []
    try:
        for event in events:
            line = format_event(event)
            if log is not None and line is not None:
                log.write(line + "\n")
            if isinstance(event, ev.SetupProgress):  # a bar per stage on a terminal, else a line as each begins
                if progress and _on_a_terminal():
                    bar = _setup_bar(bar, event, tqdm)
                elif progress and line is not None:
                    print(line, flush=True)
                continue
            if isinstance(event, ev.RunStarted):
                if bar is not None:  # the set-up's
                    bar.close()
                    bar = None
                if progress:
                    total = event.epochs * event.steps_per_epoch
                    done = event.start_epoch * event.steps_per_epoch + event.start_step
                    bar = tqdm(total=total, initial=done, unit="batch", desc="train")
                print(line, flush=True)
            elif isinstance(event, ev.StepLoss):
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=event.epoch + 1, loss=f"{event.loss:.4g}", phase=event.phase, refresh=False)
            elif isinstance(event, ev.EpochSummary):
                summaries.append(event)
                (bar.write if bar is not None else print)(line)
            elif isinstance(event, ev.MicroBatchReduced):  # shown even with --quiet: the run got slower
                (bar.write if bar is not None else print)(line)
            elif isinstance(event, ev.RunFinished):
                if bar is not None:
                    bar.close()
                    bar = None
                print(line, flush=True)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return summaries
