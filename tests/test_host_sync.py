"""No host round trips in the inner loops (training step, L-BFGS pass over chunks).

On a GPU every ``.item()`` / ``float(tensor)`` / ``bool(tensor)`` and every op whose output
shape depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``,
``unique``, ``repeat_interleave`` without a size) makes the host wait for the device. They
dispatch through the same aten ops on the CPU, so a dispatch mode that records them (with
the Python frame that asked) audits the loops here, without a GPU.

Allowed, by design: reads once per epoch / per L-BFGS pass (``_reduce``, the validation sum,
the epoch summary), and ``torch.optim.Adam``'s step counter (a host tensor unless
``capturable``: reading it does not touch the device).
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::masked_scatter",
    "aten::unique_consecutive", "aten::_unique2", "aten::unique_dim", "aten::repeat_interleave",
}
_INDEX_OPS = {"aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_", "aten::index"}


class HostSyncRecorder(TorchDispatchMode):
    """Records each op that would wait for a GPU, with the stack of Python functions that asked."""

    def __init__(self):
        super().__init__()
        self.hits: list[tuple[str, list[tuple[str, str]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        hit = name in _SYNC_OPS
        if name in _INDEX_OPS and len(args) > 1 and isinstance(args[1], (list, tuple)):
            hit = any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        if hit:
            frames = [(f.filename, f.name) for f in traceback.extract_stack()[:-1]]
            self.hits.append((name, frames))
        return func(*args, **(kwargs or {}))


def _inside(frames, function_names: set[str]) -> bool:
    return any(fn in function_names and "napari_flex3d" in path for path, fn in frames)


def _from_optimizer(frames) -> bool:
    """Asked for by torch.optim below our code: Adam reads its host-side step counter."""
    last_ours = max(i for i, (path, _) in enumerate(frames) if "napari_flex3d" in path)
    return any("torch/optim" in path.replace("\\", "/") for path, _ in frames[last_ours + 1 :])


def _describe(hits) -> str:
    where = collections.Counter()
    for name, frames in hits:
        ours = [f"{Path(p).name}:{fn}" for p, fn in frames if "napari_flex3d" in p]
        where[(name, " <- ".join(reversed(ours[-3:])))] += 1
    return "; ".join(f"{n}x {op} at {w}" for (op, w), n in where.most_common())


def test_recorder_sees_host_syncs():
    """The probe itself: .item(), float(), boolean indexing and nonzero are caught, arithmetic is not."""
    x = torch.arange(6.0)
    with HostSyncRecorder() as rec:
        y = (x * 2 + 1).sum()
    assert rec.hits == []
    with HostSyncRecorder() as rec:
        y.item()
        float(y)
        x[x > 2]
        torch.nonzero(x)
        x[x > 2] = 0.0
    assert len(rec.hits) == 5, _describe(rec.hits)


@pytest.mark.parametrize("latent_box", [None, 16])
def test_training_step_and_latent_inference_do_not_wait(tmp_path, latent_box):
    """Every step of two epochs (warm-up, then flow and structure steps with latent inference),
    also with inference at a smaller box (the cropped map and batch are made inside the step)."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training import events as ev
    from napari_flex3d.training.loop import train_run

    sim, out = tmp_path / "sim", tmp_path / "run"
    simulate_dataset(sim, n_particles=120, box=24, apix=8.0, snr=0.1, motion="hinge", seed=0)
    config = TrainConfig(
        particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(out), latent_dim=2, hidden=16,
        layers=2, epochs=2, batch=40, kernel="linear", latent_grid=5, latent_steps=1, preview_every=0, threads=1,
        warmup_epochs=1, val_fraction=0.1, latent_box=latent_box,
    )
    threads = torch.get_num_threads()
    rec = HostSyncRecorder()
    steps = 0
    try:
        for e in train_run(config, out):
            if isinstance(e, ev.RunStarted):
                rec.__enter__()
                torch.ones(1).item()  # the probe is live: this read is recorded (the loop itself may read none)
            elif isinstance(e, ev.StepLoss):
                steps += 1
            elif isinstance(e, ev.RunFinished):
                rec.__exit__(None, None, None)
    finally:
        torch.set_num_threads(threads)
    assert steps == 6
    assert rec.hits, "the recorder must have seen the probe's read"
    in_step = [h for h in rec.hits if _inside(h[1], {"train_step"}) and not _from_optimizer(h[1])]
    assert in_step == [], _describe(in_step)
    # validation: one read per pass, not one per minibatch
    in_val = [h for h in rec.hits if _inside(h[1], {"validation_loss"}) and not _inside(h[1], {"choose_rigidity"})]
    assert len(in_val) <= 2, _describe(in_val)  # 2 epochs
    # the rigidity choice's trials: two held-out passes each (trial band, final band; at most the ladder's 4 weights)
    in_choice = [h for h in rec.hits if _inside(h[1], {"choose_rigidity"}) and not _inside(h[1], {"train_step"})]
    assert len(in_choice) <= 8, _describe(in_choice)


def test_lbfgs_pass_reads_the_device_once_per_pass(tmp_path):
    """The chunk loop of each objective/gradient and Hessian-vector pass stays on the device."""
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.reconstruct.halfmaps import HalfMapProblem
    from napari_flex3d.simulate.dataset import simulate_dataset

    sim = tmp_path / "sim"
    simulate_dataset(sim, n_particles=64, box=24, apix=8.0, snr=1.0, motion="hinge", seed=0)
    ps = read_particles(sim / "particles.star")
    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0) - 12] * 3, indexing="ij"), -1).reshape(-1, 3).flip(-1) * 8.0
    points = grid[grid.norm(dim=-1) < 60.0]
    flow = lambda sel: 0.5 * torch.ones(len(sel), points.shape[0], 3)  # noqa: E731  a shared shift, any flow does
    problem = HalfMapProblem(ps, np.arange(64), points, flow, 24, 8.0, torch.ones(1, 13), chunk=16, kernel="linear")
    assert problem.chunk == 16  # 4 chunks per pass
    values = torch.randn(problem.n_values)
    with HostSyncRecorder() as rec:
        f, grad = problem.objective_and_gradient(values)
        hd, dhd = problem.hessian_vector(values)
    assert np.isfinite(f) and np.isfinite(dhd) and grad.shape == hd.shape == values.shape
    per_chunk = [h for h in rec.hits if not _inside(h[1], {"_reduce"})]
    assert per_chunk == [], _describe(per_chunk)
    assert len(rec.hits) == 2, _describe(rec.hits)  # one read per pass
