"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node G flex3d train ...``).

Every process (rank) holds the whole model, the whole latent table and the same CPU
random generator, so all ranks draw the same epoch permutation and the same latent
noise as one process would. Each global minibatch ``idx (B,)`` is split by position,
rank ``r`` taking ``idx[r::world]`` (:func:`shard`); each rank infers and updates the
latents of its own particles, computes the sum of its per-particle losses divided by the
*global* batch size, and the gradients of the flow generator and of the canonical map
are summed over ranks (:func:`all_reduce_grads`). The sum equals the gradient of the
global batch mean, so G processes take the step one process takes with the same global
batch (up to the order of float additions). At the end of an epoch each particle was
processed by exactly one rank; :func:`gather_rows` assembles the full latent table on
every rank (exactly: the other ranks contribute zeros). Rank 0 alone writes files; the
others wait at a barrier. A checkpoint holds the full latent table and nothing that
depends on the number of ranks, so a run may resume with another number of processes.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) :func:`context_from_env` returns an
inactive context and nothing here is called: single-process training is unchanged.

Environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
(set by ``torchrun``); ``FLEX3D_DIST_TIMEOUT_S`` (default 1800) bounds every collective,
so a rank that dies makes the others fail with an error instead of hanging.
Imports torch only (no module of the package); reconstruct reuses it for its L-BFGS passes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DistContext",
    "context_from_env",
    "init_process_group",
    "shard",
    "all_reduce_grads",
    "all_reduce_sum",
    "gather_rows",
    "broadcast_tensors",
    "barrier",
    "check_same",
    "timeout_s",
]

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer") from None


def timeout_s() -> float:
    """The collective timeout in seconds, from ``FLEX3D_DIST_TIMEOUT_S`` (default 1800)."""
    text = os.environ.get("FLEX3D_DIST_TIMEOUT_S", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"FLEX3D_DIST_TIMEOUT_S={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"FLEX3D_DIST_TIMEOUT_S={text!r} must be positive")
    return value


def context_from_env() -> DistContext:
    """The context ``torchrun`` describes in ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (inactive without them).

    With CUDA present, the current CUDA device becomes ``LOCAL_RANK`` so that ``"cuda"``
    (and ``device="auto"``) means this rank's own GPU.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world}: rank must lie in [0, world size)")
    ctx = DistContext(rank=rank, world=world, local_rank=local)
    if ctx.active and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(local)
    return ctx


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """Join the process group (gloo for CPU tensors, nccl for CUDA), unless already joined."""
    import torch.distributed as dist

    if not ctx.active or dist.is_initialized():
        return
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, rank=ctx.rank, world_size=ctx.world, timeout=datetime.timedelta(seconds=timeout_s())
    )


def shard(idx: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Positions ``(b_local,)`` into a global minibatch of ``len(idx)`` that rank ``ctx.rank`` takes."""
    return np.arange(ctx.rank, len(idx), ctx.world)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (and return it)."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the ``.grad`` of ``params`` over ranks (one flat buffer; a missing gradient counts as zero)."""
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = all_reduce_sum(_flat([p.grad for p in params]))
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def gather_rows(table: torch.Tensor, owned: np.ndarray, device) -> torch.Tensor:
    """The full ``(n, K)`` table on every rank from each rank's own rows.

    ``owned (n,) bool`` marks the rows this rank holds the truth of; every row must be
    owned by exactly one rank (rows owned by none come back zero). The others' rows
    travel as exact zeros, so the sum is bit-exact.
    """
    mask = torch.as_tensor(owned, dtype=torch.bool, device=table.device).reshape(-1, *([1] * (table.dim() - 1)))
    part = torch.where(mask, table, torch.zeros((), dtype=table.dtype)).to(device)
    return all_reduce_sum(part).to(table.device)


def broadcast_tensors(tensors: list[torch.Tensor], device, src: int = 0) -> None:
    """Copy ``tensors`` from rank ``src`` onto every rank, in place (each travels on ``device``)."""
    import torch.distributed as dist

    for t in tensors:
        buf = t.detach().to(device).contiguous()
        dist.broadcast(buf, src=src)
        with torch.no_grad():
            t.copy_(buf.to(t.device))


def check_same(value, what: str) -> None:
    """Raise ``ValueError`` unless every rank holds an equal ``value`` (a small picklable description)."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise ValueError(f"ranks disagree on {what}: {values}")


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op in one process)."""
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()
