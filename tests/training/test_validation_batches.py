"""Validation reads and transforms its held-out particles once per run (while they are small enough to keep)."""

from __future__ import annotations

import numpy as np
import torch

from napari_flex3d.training import metrics
from napari_flex3d.training.run_state import new_run


def test_validation_reads_its_particles_once_per_run(tiny_sim, tiny_config, tmp_path, monkeypatch):
    """Two validations read each held-out minibatch once and give the losses of a fresh read at the
    latents stored then; with nothing kept (a set over the bound) every validation reads again."""
    config = tiny_config(tiny_sim, tmp_path / "v", warmup_epochs=0, preview_every=0, batch=5, flow_init_a=3.0)
    run = new_run(config, tmp_path / "v", torch.device("cpu"))
    reads = []
    read = metrics.read_batch
    monkeypatch.setattr(metrics, "read_batch", lambda r, idx: reads.append(len(idx)) or read(r, idx))
    first = metrics.validation_losses(run, 0.5, infer=False)
    run.latents.add_(0.5)  # the losses follow the latents: only the particles are kept
    second = metrics.validation_losses(run, 0.5, infer=False)
    assert sum(reads) == len(run.val_idx) and len(reads) > 2
    monkeypatch.setattr(metrics, "KEEP_VALIDATION_BYTES", 0)
    run.validation_batches = None
    fresh = [metrics.validation_losses(run, 0.5, infer=False) for _ in range(2)]
    assert sum(reads) == 3 * len(run.val_idx)  # read again, and not kept
    np.testing.assert_array_equal(fresh[0], second)
    np.testing.assert_array_equal(fresh[1], second)
    assert not np.allclose(first, second)
