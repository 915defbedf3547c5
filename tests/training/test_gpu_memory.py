"""GPU memory: the estimate before a run, the refusal of a batch that cannot fit, and micro-batches
that halve on a CUDA out-of-memory error with the same result (all tested on the CPU).

An out-of-memory error is injected where a piece of the minibatch meets the model
(``step.model_data_terms``): it raises ``torch.OutOfMemoryError`` whenever it is handed more
particles than a limit, as a GPU that another process filled would.
"""

from __future__ import annotations

import dataclasses
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
from napari_flex3d.training.run_state import _smaller_micro_batch

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


def test_a_resumption_may_lower_the_micro_batch_but_not_raise_it(whole_batch_run, tiny_sim, tiny_config, tmp_path,
                                                                  monkeypatch):
    from napari_flex3d.cli import main

    reference, _ = whole_batch_run
    gen = train_run(tiny_config(tiny_sim, tmp_path, micro_batch=20, **SMALL), tmp_path)
    for e in gen:
        if isinstance(e, ev.CheckpointWritten):  # the first epoch's end
            break
    gen.close()
    tried = _oom_above(monkeypatch, 1000)  # nothing runs out: only records the pieces' sizes
    assert main(["train", "--resume", str(tmp_path), "--micro-batch", "8", "--quiet", "--checkpoint-minutes", "0"]) == 0
    assert json.loads(load_checkpoint(checkpoint_path(tmp_path))["config_json"])["micro_batch"] == 8
    assert max(tried) == 8  # a smaller GPU: lowered as asked
    _assert_close_runs(reference, tmp_path)
    saved = tiny_config(tiny_sim, tmp_path, micro_batch=20)
    for asked, kept in ((30, 20), (None, 20), (8, 8)):  # never above what the run already fell back to
        assert _smaller_micro_batch(saved, dataclasses.replace(saved, micro_batch=asked)).micro_batch == kept


@pytest.mark.parametrize("inference, where", [("grid", "latent inference"), ("none", "validation")])
def test_latent_inference_and_validation_halve_too(tiny_sim, tiny_config, tmp_path, monkeypatch, inference, where):
    """Met first at the first epoch's end, on its 12 validation particles: inferring their latents
    (or, without inference, their data term); the pieces then stay at 6."""
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    list(train_run(tiny_config(tiny_sim, out_a, latent_inference=inference, **SMALL), out_a))
    _oom_without_grad_above(monkeypatch, 7)
    events = list(train_run(tiny_config(tiny_sim, out_b, latent_inference=inference, **SMALL), out_b))
    reduced = [(e.epoch, e.where, e.previous, e.micro_batch) for e in events if isinstance(e, ev.MicroBatchReduced)]
    assert reduced == [(0, where, 12, 6)]
    _assert_close_runs(out_a, out_b)


def test_the_variability_start_halves_its_micro_batch_too(whole_batch_run, tiny_sim, tiny_config, tmp_path,
                                                          monkeypatch):
    """The first latents (the variability start, in the set-up) run out of memory as a step would: its
    batch of all 120 particles halves to 60, then 30; the run comes out the same, and keeps the 30."""
    from napari_flex3d.training import variability

    reference, _ = whole_batch_run
    real = variability._residuals  # where a piece of the batch meets the model, in both passes
    tried: list[int] = []

    def limited(model, batch, *args, **kwargs):
        tried.append(batch["images"].shape[0])
        if tried[-1] > 50:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {tried[-1]} particles (injected)")
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(variability, "_residuals", limited)
    events = list(train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path))
    reduced = [e for e in events if isinstance(e, ev.MicroBatchReduced)]
    assert [(e.where, e.batch, e.previous, e.micro_batch) for e in reduced] == [
        ("latent initialisation", 40, 120, 60), ("latent initialisation", 40, 60, 30)
    ]
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("MicroBatchReduced") < kinds.index("RunStarted")  # said before the first step
    assert max(tried[tried.index(30):]) == 30  # once halved, never tried larger again
    assert format_event(reduced[-1]).startswith("set-up, latent initialisation: out of GPU memory")
    _, b = _assert_close_runs(reference, tmp_path)
    assert json.loads(b["config_json"])["micro_batch"] == 30  # the steps' pieces too, and after --resume


def test_a_micro_batch_of_one_that_does_not_fit_stops_the_run(tiny_sim, tiny_config, tmp_path, monkeypatch):
    _oom_above(monkeypatch, 0)
    with pytest.raises(DeviceMemoryError, match="micro-batch of 1 particle") as info:
        list(train_run(tiny_config(tiny_sim, tmp_path, **SMALL), tmp_path))
    assert "--box" in str(info.value) and "model update" in str(info.value)


# ----------------------------------------------------------------------------- the estimate and the check


def _peak_tensor_bytes(fn) -> int:
    """The most bytes of tensors ``fn`` held at once beyond what existed before: torch.profiler's record of
    every allocation and free (``profile_memory=True``), summed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return int(np.cumsum([c for _, c in changes]).max())


@pytest.fixture(scope="module")
def box40_sim(tmp_path_factory, simulate_small_into):
    out = tmp_path_factory.mktemp("box40")
    simulate_small_into(out, n_particles=40, box=40)
    return out


@pytest.fixture(scope="module")
def measured(box40_sim, tiny_config, tmp_path_factory):
    """``{(box, batch): (estimate, update bytes, inference bytes)}`` measured at boxes 40 and 32, batches 8 and 32,
    with the default model (6 x 64 flow, cubic kernel, K = 2, 9 x 9 joint grid)."""
    from napari_flex3d.training.memory import estimate_for_run
    from napari_flex3d.training.run_state import new_run
    from napari_flex3d.training.schedule import WARMUP

    torch.set_num_threads(1)
    out = {}
    for box in (40, 32):
        cfg = tiny_config(box40_sim, tmp_path_factory.mktemp(f"m{box}"), box=box, latent_dim=2, hidden=64, layers=6,
                          kernel="cubic", latent_grid=9, latent_steps=2, latent_init="zero", flow_init_a=1.0,
                          mask_dilate_a=20.0)
        run = new_run(cfg, tmp_path_factory.mktemp(f"r{box}"), torch.device("cpu"))
        step_module.train_step(run, np.arange(2), WARMUP, 0.5)  # Adam's moments exist from the first step on
        for b in (8, 32):
            idx = np.arange(b)
            batch = step_module.read_batch(run, idx)
            update = _peak_tensor_bytes(lambda: step_module.train_step(run, idx, WARMUP, 0.5, batch=batch))
            infer = _peak_tensor_bytes(lambda: step_module.infer_batch_latents(run, batch, run.latents[idx], box / 4))
            out[box, b] = (estimate_for_run(run, batch=b), run, update, infer)
    return out


def _estimated(est) -> dict:
    """What the measured calls allocate, by the estimate: the update (and its parameter gradients), the inference."""
    return {"update": est.update + est.optimiser // 3, "inference": est.inference}


def test_the_estimate_is_within_a_factor_of_the_measured_peak(measured):
    """Within 0.75x-1.5x of torch.profiler's peak (the fit over 17 larger models was within 0.85x-1.35x)."""
    ratios = {}
    for (box, b), (est, run, update, infer) in measured.items():
        for name, got in (("update", update), ("inference", infer)):
            ratios[box, b, name] = _estimated(est)[name] / got
        assert est.total > est.step > 0.75 * max(update, infer)
        assert est.resident > sum(t.numel() * 4 for t in run.model.parameters())
    print("estimate / measured:", {k: round(v, 2) for k, v in ratios.items()})
    assert all(0.75 < r < 1.5 for r in ratios.values()), ratios


def test_the_estimate_scales_with_batch_and_box_as_measured(measured):
    """Its growth from batch 8 to 32 and from box 32 to 40 is the measured growth within 20 %."""
    for a, b in [((40, 8), (40, 32)), ((32, 8), (32, 32)), ((32, 8), (40, 8)), ((32, 32), (40, 32))]:
        for name, i in (("update", 2), ("inference", 3)):
            got = measured[b][i] / measured[a][i]
            want = _estimated(measured[b][0])[name] / _estimated(measured[a][0])[name]
            assert got > 1.0 and 0.8 < want / got < 1.25, (a, b, name, want, got)


@pytest.mark.gui
def test_the_train_widget_shows_the_estimate_and_a_halved_micro_batch(make_napari_viewer, tmp_path):
    from napari_flex3d._napari._train_widget import TrainWidget

    train = TrainWidget(make_napari_viewer())
    train._on_event(ev.RunStarted(run_dir=str(tmp_path), n_particles=1000, n_train=950, n_val=50, box=128, apix=2.1,
                                  device="cuda", epochs=4, steps_per_epoch=4, start_epoch=0, n_vertices=1800,
                                  memory_estimate_mb=10240.0))
    assert "about 10.00 GiB per step" in train.status_label.text()
    train._on_event(ev.MicroBatchReduced(epoch=0, step=2, where="model update", batch=256, previous=256, micro_batch=128,
                                         message="CUDA out of memory. Tried to allocate 2.00 GiB"))
    text = train.status_label.text()
    assert "out of GPU memory" in text and "256 -> 128" in text and "2 pieces" in text
    assert train.memory_notes == [text]
    train.grab().save(str(tmp_path / "train_widget_oom.png"))


def test_a_batch_that_cannot_fit_is_refused_with_the_largest_that_does(tiny_sim, tiny_config, tmp_path, monkeypatch,
                                                                       capsys):
    from napari_flex3d.cli import main
    from napari_flex3d.io.atomic import format_bytes
    from napari_flex3d.training import memory
    from napari_flex3d.training.run_state import new_run

    cfg = tiny_config(tiny_sim, tmp_path / "run", **SMALL)
    probe = new_run(cfg, tmp_path / "probe", torch.device("cpu"))
    step_bytes = {b: memory.HEADROOM * memory.estimate_for_run(probe, batch=b).step for b in (10, 11, 40)}
    free = int((step_bytes[10] + step_bytes[11]) / 2)  # batch 10 fits, 11 does not
    micro = max(m for m in range(1, 40) if memory.HEADROOM * memory.estimate_for_run(probe, micro_batch=m).step <= free)
    assert 1 <= micro < 10  # the minibatch of 40 itself costs memory: its pieces must be smaller than 10
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: free)  # as torch.cuda.mem_get_info on a GPU

    with pytest.raises(DeviceMemoryError) as info:
        list(train_run(cfg, cfg.out))
    text = str(info.value)
    assert f"batch 40 at box 24 needs about {format_bytes(step_bytes[40])}" in text
    assert f"only {format_bytes(free)} is free" in text
    assert f"the largest batch that fits is 10 (--batch 10)" in text and f"--micro-batch {micro}" in text
    assert "\n" not in text and not (tmp_path / "run" / "checkpoints").exists()

    args = ["train", "--particles", cfg.particles, "--map", cfg.map, "--out", str(tmp_path / "cli"), "--latent-dim", "1",
            "--hidden", "16", "--layers", "2", "--batch", "40", "--kernel", "linear", "--latent-grid", "5", "--threads", "1"]
    assert main(args + ["--quiet"]) == 2  # a user's error: one line, no traceback
    err = capsys.readouterr().err.strip().split("\n")
    assert len(err) == 1 and err[0].startswith("flex3d train: error: batch 40") and "--batch 10" in err[0]

    # the advice holds: either setting starts
    for out, change in (("b10", dict(batch=10)), ("micro", dict(micro_batch=micro))):
        events = train_run(dataclasses.replace(cfg, out=str(tmp_path / out), **change), tmp_path / out)
        first = next(e for e in events if not isinstance(e, ev.SetupProgress))
        assert isinstance(first, ev.RunStarted)
    with pytest.raises(DeviceMemoryError, match="even one particle at a time does not fit"):
        monkeypatch.setattr(memory, "free_device_bytes", lambda device: 1000)
        list(train_run(cfg, tmp_path / "tiny"))


def test_the_free_memory_query_is_cudas_on_a_gpu_and_none_on_the_cpu():
    from napari_flex3d.training.memory import free_device_bytes

    assert free_device_bytes(torch.device("cpu")) is None
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        assert 0 < free_device_bytes(torch.device("cuda")) <= total


def test_the_cli_progress_shows_the_estimate_and_a_halved_micro_batch(tmp_path, capsys):
    from napari_flex3d.training.progress import consume_events

    started = ev.RunStarted(run_dir="RUN", n_particles=1000, n_train=950, n_val=50, box=128, apix=2.1, device="cuda",
                            epochs=1, steps_per_epoch=4, start_epoch=0, n_vertices=1800, memory_estimate_mb=4000.0,
                            micro_batch=64)
    reduced = ev.MicroBatchReduced(epoch=0, step=1, where="latent inference", batch=256, previous=64, micro_batch=32,
                                   message="CUDA out of memory. Tried to allocate 1.00 GiB")
    consume_events([started, reduced], log_path=tmp_path / "train.log", progress=False)  # as flex3d train --quiet
    printed = capsys.readouterr().out
    assert "about 4.2 GB of device memory per step (estimate), micro-batches of 64" in printed
    assert "epoch 1 step 2, latent inference: out of GPU memory (CUDA out of memory. Tried to allocate 1.00 GiB)" in printed
    assert "micro-batch 64 -> 32 particles, each batch of 256 now in 8 pieces" in printed
    assert (tmp_path / "train.log").read_text().count("\n") == 2
