"""Micro-batches: a minibatch worked through in pieces that halve on a CUDA out-of-memory error.

A minibatch of ``B`` particles is processed ``TrainConfig.micro_batch`` particles at a time
(``None``: all at once). Latent inference, the data term under ``no_grad`` (validation) and
the model update's gradient (accumulated over the pieces, then one optimiser step) give
the same result whatever the piece size: every particle's latents and loss depend on that
particle alone, and the update's loss is the sum over pieces divided by ``B``. No random
number is drawn per piece, so the run's RNG stream is the same too.

When a piece raises ``torch.OutOfMemoryError`` (another process took GPU memory), the
micro-batch becomes half that piece, the piece is done again (the model update restarts
its accumulation), a :class:`~.events.MicroBatchReduced` is queued on the run
(``run.notices``, yielded by the loop) and the smaller size is kept in ``run.config``:
in every later step and, through the checkpoint's settings, after ``--resume``. A piece
of one particle that does not fit stops the run with :class:`DeviceMemoryError`.
Imports config and training's :mod:`.events`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from . import events as ev

__all__ = ["DeviceMemoryError", "MicroBatchState", "micro_batch_size", "in_micro_batches", "rows_of"]

T = TypeVar("T")


class DeviceMemoryError(ValueError):
    """A training setting that does not fit the device's memory (refused before the run, or a
    micro-batch of one particle that ran out of memory). A ``ValueError``: the user fixes it
    with a smaller batch or box, a latent box, or by freeing the GPU."""


@dataclass
class MicroBatchState:
    """What :func:`in_micro_batches` reads and lowers, before a run's :class:`~.run_state.RunState`
    exists (the set-up's variability start): its settings (``config.micro_batch``), device and
    training box, and the :class:`~.events.MicroBatchReduced` it queues (``notices``). The run
    takes the lowered settings and the events over."""

    config: object  # TrainConfig
    device: torch.device
    box: int
    epoch: int = 0
    epoch_step: int = 0
    notices: list = field(default_factory=list)


def micro_batch_size(run, n: int) -> int:
    """Particles per piece for a minibatch of ``n``: ``run.config.micro_batch``, at most ``n``."""
    micro = run.config.micro_batch
    return max(1, n if micro is None else min(int(micro), n))


def rows_of(batch: dict, rows: slice) -> dict:
    """The particles ``rows`` of a minibatch dict (every tensor with a particle axis; the rest as is)."""
    n = batch["images"].shape[0]
    if rows.start in (0, None) and rows.stop >= n:
        return batch
    return {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n else v for k, v in batch.items()}


def in_micro_batches(run, n: int, work: Callable[[slice], T], where: str, restart: Callable[[], None] | None = None) -> list[T]:
    """``work(rows)`` over ``range(n)`` in pieces of :func:`micro_batch_size`, halving on out-of-memory.

    Args:
        run: the :class:`~.run_state.RunState`, or a :class:`MicroBatchState` (its ``config.micro_batch``
            is read and lowered).
        n: particles in the minibatch.
        work: ``rows (slice) -> result`` for one piece.
        where: what the pieces are, for the event (``"latent inference"``, ``"model update"``...).
        restart: ``None`` when pieces are independent (only the failed piece is done again);
            else called after an out-of-memory error before every piece is done again from
            the first (the model update: its accumulated gradients are dropped).
    Returns:
        The pieces' results in order.
    """
    results: list[T] = []
    start = 0
    while start < n:
        size = micro_batch_size(run, n)
        stop = min(n, start + size)
        try:
            results.append(work(slice(start, stop)))
        except torch.OutOfMemoryError as exc:
            message = str(exc).split("\n")[0]
        else:
            start = stop
            continue
        # out of the handler: its traceback, and the tensors its frames hold, are released
        _halve(run, stop - start, n, where, message)
        if restart is not None:
            restart()
            results, start = [], 0
    return results


def _halve(run, failed: int, n: int, where: str, message: str) -> None:
    """Lower ``run.config.micro_batch`` to half the ``failed`` piece and queue the event; at one particle, stop."""
    cfg = run.config
    if failed <= 1:
        raise DeviceMemoryError(
            f"out of {run.device} memory in {where} with a micro-batch of 1 particle (box {run.box}; {message}): "
            "free the GPU (other processes), or train at a smaller --box or --latent-box, and resume with --resume"
        )
    if run.device.type == "cuda":
        torch.cuda.empty_cache()  # hand the failed piece's cached blocks back before trying again
    smaller = failed // 2
    run.config = dataclasses.replace(cfg, micro_batch=smaller)
    run.notices.append(
        ev.MicroBatchReduced(
            epoch=run.epoch, step=run.epoch_step, where=where, batch=cfg.batch, previous=failed, micro_batch=smaller,
            message=message,
        )
    )
