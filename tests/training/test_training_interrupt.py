"""A crash costs minutes: mid-epoch checkpoints, SIGKILL at any moment, full disks.

Every interrupted run here is resumed and must end with exactly the arrays of an
uninterrupted one (model, latents, Adam moments, learned prior, losses): the mid-epoch
checkpoint carries the epoch's particle order and position and the RNG state.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_flex3d.io import atomic
from napari_flex3d.io.atomic import DiskFullError, write_config_json
from napari_flex3d.io.checkpoint import load_checkpoint
from napari_flex3d.model.run import checkpoint_path
from napari_flex3d.training import events as ev
from napari_flex3d.training.loop import train_run
from napari_flex3d.training.progress import format_event

#: Two epochs of three steps (108 training particles, batch 40); the second infers with the learned prior.
SMALL = dict(epochs=2, preview_every=0)
EVERY_STEP = 1e-9  # checkpoint_minutes: a mid-epoch checkpoint after every step


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tiny_sim, tiny_config, tmp_path_factory):
    """An uninterrupted run, checkpoints at epoch ends only."""
    out = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    try:
        list(train_run(tiny_config(tiny_sim, out, checkpoint_minutes=0.0, **SMALL), out))
    finally:
        torch.set_num_threads(threads)
    return out


def _assert_same_result(reference, out):
    a, b = load_checkpoint(checkpoint_path(reference)), load_checkpoint(checkpoint_path(out))
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model {k} differs"
    assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["latent_prior"], b["latent_prior"])
    assert torch.equal(a["rng_torch"], b["rng_torch"])
    for opt in ("opt_flow", "opt_canonical"):
        for sa, sb in zip(a[opt]["state"].values(), b[opt]["state"].values()):
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    np.testing.assert_array_equal(np.load(out / "latents.npy"), np.load(reference / "latents.npy"))
    ha, hb = (json.loads((d / "history.json").read_text()) for d in (reference, out))
    for key in ("train_loss", "val_loss", "train_residual", "latent_agreement", "latent_std"):
        assert [h[key] for h in ha] == [h[key] for h in hb], key


def _whole_files(out):
    """Every checkpoint/latents file reads (a SIGKILL inside a write may leave its temporary beside them)."""
    load_checkpoint(checkpoint_path(out))
    if (out / "latents.npy").exists():
        np.load(out / "latents.npy")


def _no_torn_files(out):
    """Every checkpoint/latents file reads; no temporary is left beside them."""
    _whole_files(out)
    assert not [p for p in out.rglob(".*.tmp*")], "a temporary was left behind"


def test_a_stop_after_a_mid_epoch_checkpoint_resumes_bit_identically(reference, tiny_sim, tiny_config, tmp_path):
    gen = train_run(tiny_config(tiny_sim, tmp_path, checkpoint_minutes=EVERY_STEP, **SMALL), tmp_path)
    written = []
    for e in gen:
        if isinstance(e, ev.CheckpointWritten):
            written.append((e.epoch, e.step))
        if isinstance(e, ev.StepLoss) and (e.epoch, e.step) == (1, 1):  # the epoch's second step, after its checkpoint
            break
    gen.close()
    assert written == [(0, 1), (0, 2), (1, 0), (1, 1)]  # mid-epoch after steps 1 and 2, the epoch's end, mid-epoch
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert (state["epoch"], state["epoch_step"], len(state["epoch_losses"])) == (1, 1, 1)
    assert state["epoch_order"].shape == (108,) and "latent_mass" in state  # the learned prior's sums so far
    events = [e for e in train_run(None, tmp_path, resume=True) if not isinstance(e, ev.SetupProgress)]
    assert (events[0].start_epoch, events[0].start_step) == (1, 1)
    assert "resuming in epoch 2 after step 1" in format_event(events[0])
    steps = [(e.epoch, e.step) for e in events if isinstance(e, ev.StepLoss)]
    assert steps == [(1, 1), (1, 2)]  # the stopped epoch goes on where its checkpoint left it
    _assert_same_result(reference, tmp_path)


_CHILD = textwrap.dedent(
    """
    import os, resource, signal, sys
    from napari_flex3d.config import TrainConfig, read_config_json
    from napari_flex3d.io import atomic
    from napari_flex3d.training import events as ev
    from napari_flex3d.training.loop import train_run

    config, fault = read_config_json(sys.argv[1], TrainConfig), sys.argv[2]
    writes = []

    def kill_in_second_write(tmp, path):  # SIGKILL with the new checkpoint whole but not yet renamed
        if path.name == "last.pt":
            writes.append(path)
            if len(writes) == 2:
                os.kill(os.getpid(), signal.SIGKILL)

    if fault == "kill-in-write":
        atomic.before_replace = kill_in_second_write
    try:
        for e in train_run(config, config.out):
            if isinstance(e, ev.CheckpointWritten):
                print("checkpoint", e.epoch, e.step, flush=True)
                if fault == "fsize":  # from now on no file may grow past 4 kB: the next checkpoint fails
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
            if isinstance(e, ev.StepLoss):
                print("step", e.epoch, e.step, flush=True)
    except atomic.DiskFullError as exc:
        print("error", exc, flush=True)
        sys.exit(3)
    """
)


def _child(tiny_sim, tiny_config, tmp_path, fault: str) -> subprocess.Popen:
    out = tmp_path / "run"
    write_config_json(tmp_path / "child.json", tiny_config(tiny_sim, out, checkpoint_minutes=EVERY_STEP, **SMALL))
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "child.json"), fault], stdout=subprocess.PIPE,
                            text=True)


def test_sigkill_mid_epoch_loses_only_the_steps_since_the_last_checkpoint(reference, tiny_sim, tiny_config, tmp_path):
    proc = _child(tiny_sim, tiny_config, tmp_path, "none")
    seen = []
    for line in proc.stdout:
        seen.append(line.split())
        if seen[-1] == ["step", "0", "1"] and ["checkpoint", "0", "1"] in seen:  # a step after the mid-epoch checkpoint
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    out = tmp_path / "run"
    _whole_files(out)  # the kill races the next write: its temporary may be left, never a torn checkpoint
    state = load_checkpoint(checkpoint_path(out))
    assert (state["epoch"], state["epoch_step"]) in ((0, 1), (0, 2))  # mid-epoch 0
    from napari_flex3d.cli import main

    assert main(["train", "--resume", str(out), "--checkpoint-minutes", "5", "--quiet"]) == 0  # as a user types it
    _no_torn_files(out)  # the resumed run's writes removed any dead temporary
    _assert_same_result(reference, out)
    assert json.loads(load_checkpoint(checkpoint_path(out))["config_json"])["checkpoint_minutes"] == 5.0


def test_sigkill_inside_a_checkpoint_write_leaves_the_previous_one(reference, tiny_sim, tiny_config, tmp_path):
    proc = _child(tiny_sim, tiny_config, tmp_path, "kill-in-write")
    lines = proc.communicate(timeout=120)[0].split("\n")
    assert proc.returncode == -signal.SIGKILL and "checkpoint 0 1" in lines and "checkpoint 0 2" not in lines
    out = tmp_path / "run"
    state = load_checkpoint(checkpoint_path(out))  # the first checkpoint, whole
    assert (state["epoch"], state["epoch_step"]) == (0, 1)
    assert len(list((out / "checkpoints").glob(".last.pt.tmp*"))) == 1  # the dead write's temporary, never renamed
    list(train_run(None, out, resume=True))
    _no_torn_files(out)  # the resumed run's first write removed it
    _assert_same_result(reference, out)


def test_a_real_file_size_limit_stops_with_a_message_and_resume_works_once_space_is_free(
    reference, tiny_sim, tiny_config, tmp_path
):
    proc = _child(tiny_sim, tiny_config, tmp_path, "fsize")
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, text
    error = [line for line in text.split("\n") if line.startswith("error")][0]
    assert "last.pt" in error and "free in" in error and "is intact" in error and "--resume" in error
    out = tmp_path / "run"
    _no_torn_files(out)
    assert load_checkpoint(checkpoint_path(out))["epoch_step"] == 1  # the first checkpoint: the only one that fit
    list(train_run(None, out, resume=True))  # "space freed": this process has no limit
    _assert_same_result(reference, out)


def test_a_full_disk_at_an_epoch_end_keeps_the_mid_epoch_checkpoint(reference, tiny_sim, tiny_config, tmp_path,
                                                                     monkeypatch):
    def full_at_the_epoch_end(tmp, path):
        if path.name == "last.pt" and not load_checkpoint(tmp).get("epoch_step"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "before_replace", full_at_the_epoch_end)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*last\.pt"):
        list(train_run(tiny_config(tiny_sim, tmp_path, checkpoint_minutes=EVERY_STEP, **SMALL), tmp_path))
    monkeypatch.setattr(atomic, "before_replace", None)
    _no_torn_files(tmp_path)
    assert load_checkpoint(checkpoint_path(tmp_path))["epoch_step"] == 2  # the last mid-epoch checkpoint of epoch 0
    list(train_run(None, tmp_path, resume=True))
    _assert_same_result(reference, tmp_path)


def test_a_run_that_cannot_fit_is_refused_before_it_starts(tiny_sim, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskFullError, match=r"run: a training run's checkpoints and outputs need about [0-9.]+ [kM]B but only "
                                            r"1\.0 kB is free there"):
        list(train_run(tiny_config(tiny_sim, tmp_path / "run", **SMALL), tmp_path / "run"))
    assert not checkpoint_path(tmp_path / "run").exists()
