"""GPU memory: the estimate before a run, the refusal of a batch that cannot fit, and micro-batches
that halve on a CUDA out-of-memory error with the same result (all tested on the CPU).

An out-of-memory error is injected where a piece of the minibatch meets the model
(``step.model_data_terms``): it raises ``torch.OutOfMemoryError`` whenever it is handed more
particles than a limit, as a GPU that another process filled would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_flex3d.io.checkpoint import load_checkpoint
from napari_flex3d.model.run import checkpoint_path
from napari_flex3d.training import events as ev
from napari_flex3d.training import step as step_module
from napari_flex3d.training.loop import train_run
from napari_flex3d.training.micro_batch import DeviceMemoryError
from napari_flex3d.training.progress import format_event

#: Two epochs of three steps of 40 (108 training particles); the second infers latents with the learned prior.
SMALL = dict(epochs=2, preview_every=0, checkpoint_minutes=0.0)


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _oom_above(monkeypatch, limit: int) -> list[int]:
    """From now on a piece of more than ``limit`` particles runs out of memory; returns the sizes tried."""
    real = step_module.model_data_terms
    tried: list[int] = []

    def limited(run, batch, z, *args, **kwargs):
        particles = len(batch["index"])  # the particles of the piece (stacked candidates repeat them)
        tried.append(particles)
        if particles > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {particles} particles (injected)")
        return real(run, batch, z, *args, **kwargs)

    monkeypatch.setattr(step_module, "model_data_terms", limited)
    return tried


@pytest.fixture(scope="module")
def whole_batch_run(tiny_sim, tiny_config, tmp_path_factory):
    """A run that never runs out of memory: each minibatch in one piece."""
    out = tmp_path_factory.mktemp("whole")
    events = list(train_run(tiny_config(tiny_sim, out, **SMALL), out))
    return out, events


def _assert_close_runs(a_dir, b_dir, rtol=1e-4, atol=1e-6):
    """The same run up to float rounding: parameters, latents, Adam moments, RNG and the loss history."""
    a, b = load_checkpoint(checkpoint_path(a_dir)), load_checkpoint(checkpoint_path(b_dir))
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    assert torch.equal(a["rng_torch"], b["rng_torch"])  # the same random numbers drawn: noise, shuffles
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=rtol, atol=atol, msg=f"model {k}")
    torch.testing.assert_close(b["latents"], a["latents"], rtol=rtol, atol=1e-4)
    for opt in ("opt_flow", "opt_canonical"):
        for sa, sb in zip(a[opt]["state"].values(), b[opt]["state"].values()):
            torch.testing.assert_close(sb["exp_avg"], sa["exp_avg"], rtol=1e-3, atol=1e-9)
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (a_dir, b_dir))
    for key in ("train_loss", "val_loss", "train_residual"):
        np.testing.assert_allclose([h[key] for h in hb], [h[key] for h in ha], rtol=rtol, err_msg=key)
    return a, b


def test_out_of_memory_halves_the_micro_batch_with_the_same_result(whole_batch_run, tiny_sim, tiny_config, tmp_path,
                                                                   monkeypatch):
    reference, ref_events = whole_batch_run
    tried = _oom_above(monkeypatch, 15)
    events = list(train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path))
    reduced = [e for e in events if isinstance(e, ev.MicroBatchReduced)]
    # the first minibatch (warm-up: model update only) halves twice, 40 -> 20 -> 10; nothing after
    assert [(e.epoch, e.step, e.where, e.previous, e.micro_batch) for e in reduced] == [
        (0, 0, "model update", 40, 20), (0, 0, "model update", 20, 10)
    ]
    assert max(tried[tried.index(10):]) == 10  # once halved, never tried larger again
    line = format_event(reduced[-1])
    assert "out of memory" in line and "20 -> 10" in line and "batch of 40" in line and "same result" in line
    # same steps in the same order as the run that never ran out
    assert [(e.epoch, e.step) for e in events if isinstance(e, ev.StepLoss)] == [
        (e.epoch, e.step) for e in ref_events if isinstance(e, ev.StepLoss)
    ]
    a, b = _assert_close_runs(reference, tmp_path)
    assert json.loads(b["config_json"])["micro_batch"] == 10 and json.loads(a["config_json"])["micro_batch"] is None


def test_the_smaller_micro_batch_is_kept_across_resume(whole_batch_run, tiny_sim, tiny_config, tmp_path, monkeypatch):
    reference, _ = whole_batch_run
    tried = _oom_above(monkeypatch, 25)
    gen = train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path)
    for e in gen:
        if isinstance(e, ev.CheckpointWritten):  # the first epoch's end
            break
    gen.close()
    assert json.loads(load_checkpoint(checkpoint_path(tmp_path))["config_json"])["micro_batch"] == 20
    tried.clear()
    events = list(train_run(None, tmp_path, resume=True))
    assert not [e for e in events if isinstance(e, ev.MicroBatchReduced)]  # never tried the whole batch again
    assert tried and max(tried) == 20
    _assert_close_runs(reference, tmp_path)


def _oom_without_grad_above(monkeypatch, limit: int) -> None:
    """Pieces evaluated without gradients (latent inference's grid, validation) above ``limit`` run out of memory."""
    real = step_module.model_data_terms

    def limited(run, batch, z, *args, **kwargs):
        if not torch.is_grad_enabled() and len(batch["index"]) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(run, batch, z, *args, **kwargs)

    monkeypatch.setattr(step_module, "model_data_terms", limited)


def test_latent_inference_halves_too(whole_batch_run, tiny_sim, tiny_config, tmp_path, monkeypatch):
    reference, _ = whole_batch_run
    _oom_without_grad_above(monkeypatch, 7)
    events = list(train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path))
    reduced = [(e.epoch, e.where, e.previous, e.micro_batch) for e in events if isinstance(e, ev.MicroBatchReduced)]
    # first met inferring the 12 validation particles' latents at the first epoch's end; the pieces stay at 6
    assert reduced == [(0, "latent inference", 12, 6)]
    _assert_close_runs(reference, tmp_path)


def test_validation_halves_too(tiny_sim, tiny_config, tmp_path, monkeypatch):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    settings = dict(latent_inference="none", **SMALL)  # validation is then the only work without gradients
    list(train_run(tiny_config(tiny_sim, out_a, **settings), out_a))
    _oom_without_grad_above(monkeypatch, 7)
    events = list(train_run(tiny_config(tiny_sim, out_b, **settings), out_b))
    reduced = [(e.epoch, e.where, e.previous, e.micro_batch) for e in events if isinstance(e, ev.MicroBatchReduced)]
    assert reduced == [(0, "validation", 12, 6)]
    _assert_close_runs(out_a, out_b)


def test_a_micro_batch_of_one_that_does_not_fit_stops_the_run(tiny_sim, tiny_config, tmp_path, monkeypatch):
    _oom_above(monkeypatch, 0)
    with pytest.raises(DeviceMemoryError, match="micro-batch of 1 particle") as info:
        list(train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path))
    assert "--box" in str(info.value) and "model update" in str(info.value)
