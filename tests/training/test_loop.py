"""The training generator: events, run folder, determinism, stop, resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_flex3d.io.checkpoint import load_checkpoint
from napari_flex3d.io.particles import read_particles
from napari_flex3d.training import events as ev
from napari_flex3d.model.run import checkpoint_path
from napari_flex3d.training.loop import train_run
from napari_flex3d.training.progress import format_event


def _final_state(run_dir):
    state = load_checkpoint(checkpoint_path(run_dir))
    return state["model"], state["latents"], state["opt_flow"]


def _assert_same_state(a_dir, b_dir):
    (ma, za, oa), (mb, zb, ob) = _final_state(a_dir), _final_state(b_dir)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"{k} differs"
    assert torch.equal(za, zb)
    for sa, sb in zip(oa["state"].values(), ob["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])


@pytest.fixture(scope="module")
def full_run(tiny_sim, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_full")
    threads = torch.get_num_threads()
    try:
        events = list(train_run(tiny_config(tiny_sim, out), out, cli_argv=["flex3d", "train", "test"]))
    finally:
        torch.set_num_threads(threads)
    return out, events


def test_event_stream_and_run_folder(full_run, tiny_sim):
    out, events = full_run
    kinds = [type(e).__name__ for e in events]
    setup = events[: kinds.index("RunStarted")]  # the set-up's progress, then the run
    assert {type(e) for e in setup} == {ev.SetupProgress} and kinds[-1] == "RunFinished"
    stages = list(dict.fromkeys(e.stage for e in setup))
    assert stages == ["reading particles", "checking images", "consensus map and mesh", "model", "noise spectra",
                      "latent initialisation"]
    scan = [(e.done, e.total) for e in setup if e.stage == "checking images"]
    assert scan[0] == (0, 120) and scan[-1] == (120, 120)  # every image of the input read once
    init = [(e.done, e.total) for e in setup if e.stage == "latent initialisation"]
    assert init[0] == (0, 7 * 120) and init[-1] == (7 * 120, 7 * 120)  # 6 fitting passes and the coefficients
    assert all(b[0] >= a[0] for a, b in zip(init, init[1:]))
    lines = [format_event(e) for e in setup]
    assert lines[:2] == ["set-up: reading particles", "set-up: checking images (120 images)"]
    assert all((line is None) == bool(e.done) for e, line in zip(setup, lines))  # a line per stage, not per report
    start = events[kinds.index("RunStarted")]
    steps = [e for e in events if isinstance(e, ev.StepLoss)]
    assert len(steps) == start.epochs * start.steps_per_epoch
    assert [s.phase for s in steps[: start.steps_per_epoch]] == ["warmup"] * start.steps_per_epoch
    assert start.latent_prior == "learned (5^1 grid)"  # K = 1, a grid of 5: the joint sweep runs
    assert {s.phase for s in steps[start.steps_per_epoch :]} == {"flow", "structure"}
    assert all(np.isfinite(s.loss) for s in steps)
    from napari_flex3d.model.loss import band_coefficients

    for s in steps:  # the plotted residual per coefficient is the data loss over the band's coefficients
        assert s.residual == pytest.approx(2 * s.data_loss / band_coefficients(24, s.band_limit_nyquist * 12), rel=1e-9)
    assert all(0.5 < s.residual < 3.0 for s in steps)  # near 1 (noise) at SNR 0.1
    bands = [s.band_limit_nyquist for s in steps]
    assert all(s.band_limit_a == pytest.approx(2 * start.apix / s.band_limit_nyquist) for s in steps)
    assert bands == sorted(bands) and bands[0] == pytest.approx(0.25) and bands[-1] <= 0.8
    summaries = [e for e in events if isinstance(e, ev.EpochSummary)]
    assert [s.epoch for s in summaries] == [0, 1, 2] and all(np.isfinite(s.val_loss) for s in summaries)
    assert all(0.5 < s.train_residual < 3.0 and 0.5 < s.val_residual < 3.0 for s in summaries)
    previews = [e for e in events if isinstance(e, ev.PreviewVolumes)]
    assert previews and previews[0].volumes.shape == (1, 2, 24, 24, 24)
    assert len([e for e in events if isinstance(e, ev.CheckpointWritten)]) == 3
    fsc = [e for e in events if isinstance(e, ev.FSCCurve)][-1]
    assert fsc.fsc.shape == (13,) and fsc.fsc[1] > 0.9  # the canonical map stays the consensus at low resolution

    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["latent_dim"] == 1 and config["provenance"]["command_line"][:2] == ["flex3d", "train"]
    assert config["provenance"]["version"] and config["provenance"]["time"]
    z = np.load(out / "latents.npy")
    assert z.dtype == np.float32 and z.shape == (120, 1) and np.isfinite(z).all()
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] and all(h["seconds"] > 0 for h in history)
    # the latent agreement of epoch e is |Pearson| (K = 1) between the snapshots after e - 1 and e
    snaps = [e.latents[:, 0] for e in events if isinstance(e, ev.LatentSnapshot)]
    for e in (1, 2):
        expected = abs(np.corrcoef(snaps[e - 1], snaps[e])[0, 1])
        assert summaries[e].latent_agreement == pytest.approx(expected, abs=1e-6)
        assert history[e]["latent_agreement"] == pytest.approx(expected, abs=1e-6)
    assert 0.0 <= summaries[0].latent_agreement <= 1.0
    ps_in, ps_out = read_particles(tiny_sim / "particles.star"), read_particles(out / "particles.star")
    np.testing.assert_allclose(ps_out.table["rlnFlex3dLatent1"].to_numpy(), z[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ps_out.rotations, ps_in.rotations, atol=1e-5)
    assert set(ps_in.table.columns) <= set(ps_out.table.columns)
    assert (out / "canonical.mrc").is_file() and (out / "mesh.npz").is_file()


def test_latent_agreement_against_known_correlations():
    from napari_flex3d.training.agreement import latent_agreement

    rng = np.random.default_rng(0)
    z = rng.standard_normal((20000, 2))
    moved = z @ np.array([[0.6, -0.8], [0.8, 0.6]]) * 3.0 + 5.0  # rotated, scaled, shifted as a whole
    assert latent_agreement(z, moved) == pytest.approx(1.0, abs=1e-12)
    # independent noise of variance s^2 on every axis: each canonical correlation is 1 / sqrt(1 + s^2)
    noisy = z + 0.5 * rng.standard_normal(z.shape)
    assert latent_agreement(z, noisy) == pytest.approx(1 / np.sqrt(1.25), abs=0.01)
    # noise on one axis only: the smallest correlation is that axis's
    one = z + np.column_stack([np.zeros(len(z)), rng.standard_normal(len(z))])
    assert latent_agreement(z, one) == pytest.approx(1 / np.sqrt(2.0), abs=0.01)
    assert np.isnan(latent_agreement(np.zeros((100, 2)), z[:100]))  # zero start: undefined, not 1
    assert np.isnan(latent_agreement(z[:3], z[:3]))  # too few particles


def test_new_run_refuses_an_existing_run(full_run, tiny_sim, tiny_config):
    out, _ = full_run
    with pytest.raises(ValueError, match="resume"):
        next(train_run(tiny_config(tiny_sim, out), out))


def test_stopping_between_yields_leaves_the_last_checkpoint(tiny_sim, tiny_config, tmp_path, monkeypatch):
    from napari_flex3d.training import loop

    seen = []  # the events and the loop's release of freed memory, in order
    monkeypatch.setattr(loop, "release_freed_memory", lambda: seen.append("released"))
    gen = train_run(tiny_config(tiny_sim, tmp_path, epochs=2), tmp_path)
    for e in gen:
        seen.append(e)
        if isinstance(e, ev.StepLoss) and e.epoch == 1 and e.step == 1:
            break
    gen.close()  # what napari's worker quit() does between yields
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert state["epoch"] == 1
    events = []
    for e in train_run(None, tmp_path, resume=True):
        seen.append(e)
        if not isinstance(e, ev.SetupProgress):
            events.append(e)
    assert events[0].start_epoch == 1 and isinstance(events[-1], ev.RunFinished) and events[-1].epochs == 2
    # once per epoch, at its end (the resumed one included): just before its checkpoint's news
    released = [i for i, e in enumerate(seen) if isinstance(e, str)]
    epoch_ends = [i for i, e in enumerate(seen) if isinstance(e, ev.CheckpointWritten) and e.step == 0]
    assert [i + 1 for i in released] == epoch_ends and len(released) == 2


def test_stopping_in_the_set_up_stops_it_at_its_next_stage(tiny_sim, tiny_config, tmp_path):
    import threading
    import time

    def setting_up() -> bool:
        return any(t.name == "flex3d-setup" for t in threading.enumerate())

    gen = train_run(tiny_config(tiny_sim, tmp_path), tmp_path)
    assert next(gen) == ev.SetupProgress("reading particles")
    gen.close()  # the Stop button during the set-up (napari's worker quit())
    for _ in range(600):
        if not setting_up():
            break
        time.sleep(0.05)
    assert not setting_up()
    assert not (tmp_path / "mesh.npz").exists() and not checkpoint_path(tmp_path).exists()  # nothing built after


def test_inference_at_a_smaller_box_resumes_identically(tiny_sim, tiny_config, tmp_path):
    """latent_box: inference on Fourier-cropped images and map (box 16 of 24); a stopped run
    resumed (the view is rebuilt, its noise spectra estimated again) equals an uninterrupted one."""
    from napari_flex3d.training.latent_state import latent_view

    config = dict(epochs=2, latent_dim=2, latent_box=16, preview_every=0, lr_final=0.3)  # and a decaying rate
    threads = torch.get_num_threads()
    try:
        whole = list(train_run(tiny_config(tiny_sim, tmp_path / "a", **config), tmp_path / "a"))
        gen = train_run(tiny_config(tiny_sim, tmp_path / "b", **config), tmp_path / "b")
        for e in gen:
            if isinstance(e, ev.StepLoss) and e.epoch == 1 and e.step == 1:
                break
        gen.close()
        list(train_run(None, tmp_path / "b", resume=True))
        plain = list(train_run(tiny_config(tiny_sim, tmp_path / "c", **{**config, "latent_box": None}), tmp_path / "c"))
    finally:
        torch.set_num_threads(threads)
    assert isinstance(whole[-1], ev.RunFinished)
    _assert_same_state(tmp_path / "a", tmp_path / "b")
    za, zc = np.load(tmp_path / "a" / "latents.npy"), np.load(tmp_path / "c" / "latents.npy")
    assert np.isfinite(za).all() and not np.array_equal(za, zc)  # inference did run at the other box
    assert json.loads((tmp_path / "a" / "config.json").read_text())["settings"]["latent_box"] == 16
    assert isinstance(plain[-1], ev.RunFinished)
    opt = load_checkpoint(checkpoint_path(tmp_path / "a"))["opt_flow"]["param_groups"][0]
    assert opt["lr"] == pytest.approx(0.3 * opt["initial_lr"])  # the last step ran at lr_final of the start
    from napari_flex3d.model.run import load_run

    cfg, _, fine = load_run(tmp_path / "a")
    for bad in (15, 32, 8):
        with pytest.raises(ValueError, match="latent_box"):
            latent_view(tiny_config(tiny_sim, tmp_path, latent_box=bad), fine, read_particles(cfg.particles), "cpu")
    with pytest.raises(ValueError, match="latent_box 26 must be even, >= 16 and <= the training box 24"):
        list(train_run(tiny_config(tiny_sim, tmp_path / "d", latent_box=26), tmp_path / "d"))  # in the set-up
    assert not (tmp_path / "d" / "mesh.npz").exists()  # refused before anything was built
    with pytest.raises(ValueError, match="lr_final=1.5 must lie in"):
        list(train_run(tiny_config(tiny_sim, tmp_path / "e", lr_final=1.5), tmp_path / "e"))
    assert not (tmp_path / "e" / "mesh.npz").exists()


def test_learned_prior_is_checkpointed_and_resumes_identically(tiny_sim, tiny_config, tmp_path):
    """The empirical latent prior changes after the first epoch that infers, travels in the
    checkpoint, and a run stopped after it resumes exactly; a run from before the learned
    prior (no setting in its checkpoint) keeps the Gaussian."""
    from napari_flex3d.io.checkpoint import save_checkpoint
    from napari_flex3d.training.latents import GridPrior
    from napari_flex3d.model.run import load_run

    config = dict(epochs=3, preview_every=0)
    threads = torch.get_num_threads()
    try:
        list(train_run(tiny_config(tiny_sim, tmp_path / "a", **config), tmp_path / "a"))
        gen = train_run(tiny_config(tiny_sim, tmp_path / "b", **config), tmp_path / "b")
        for e in gen:
            if isinstance(e, ev.StepLoss) and e.epoch == 2 and e.step == 1:
                break
        gen.close()
        stopped = load_checkpoint(checkpoint_path(tmp_path / "b"))
        list(train_run(None, tmp_path / "b", resume=True))
        list(train_run(tiny_config(tiny_sim, tmp_path / "g", latent_prior_shape="gaussian", **config), tmp_path / "g"))
    finally:
        torch.set_num_threads(threads)
    assert stopped["epoch"] == 2
    gauss = GridPrior.gaussian(1, 5, 2.5).log_density
    learned = stopped["latent_prior"]  # after epoch 1 (the first that inferred), before epoch 2
    assert learned.shape == (5,) and (torch.log_softmax(learned, 0) - torch.log_softmax(gauss, 0)).abs().max() > 1e-3
    _assert_same_state(tmp_path / "a", tmp_path / "b")
    final_a, final_b = (load_checkpoint(checkpoint_path(tmp_path / d))["latent_prior"] for d in "ab")
    assert torch.equal(final_a, final_b)
    state_g = load_checkpoint(checkpoint_path(tmp_path / "g"))
    assert "latent_prior" not in state_g
    assert not np.array_equal(np.load(tmp_path / "a" / "latents.npy"), np.load(tmp_path / "g" / "latents.npy"))
    # a checkpoint written before the setting existed reads as the Gaussian it trained with
    settings = json.loads(state_g["config_json"])
    del settings["latent_prior_shape"]
    state_g["config_json"] = json.dumps(settings)
    save_checkpoint(checkpoint_path(tmp_path / "g"), state_g)
    assert load_run(tmp_path / "g")[0].latent_prior_shape == "gaussian"
    # no joint sweep (9^3 > 100 points), or gradient inference: the Gaussian, and the run says so
    from napari_flex3d.training.latent_state import empirical_prior

    assert empirical_prior(tiny_config(tiny_sim, tmp_path, latent_dim=3, latent_grid=9), "cpu") is None
    assert empirical_prior(tiny_config(tiny_sim, tmp_path, latent_inference="gradient"), "cpu") is None
    assert empirical_prior(tiny_config(tiny_sim, tmp_path, latent_dim=2, latent_grid=10), "cpu") is not None


_CHILD = textwrap.dedent(
    """
    import sys
    from napari_flex3d.config import TrainConfig, read_config_json
    from napari_flex3d.training.loop import train_run
    from napari_flex3d.training import events as ev
    config = read_config_json(sys.argv[1], TrainConfig)
    for e in train_run(config, config.out):
        if isinstance(e, ev.CheckpointWritten):
            print("checkpoint", e.epoch, flush=True)
        if isinstance(e, ev.StepLoss):
            print("step", e.epoch, e.step, flush=True)
    """
)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(full_run, tiny_sim, tiny_config, tmp_path):
    from napari_flex3d.io.atomic import write_config_json

    reference, _ = full_run
    out = tmp_path / "killed"
    write_config_json(tmp_path / "child.json", tiny_config(tiny_sim, out))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "child.json")], stdout=subprocess.PIPE, text=True)
    killed_at = None
    for line in proc.stdout:
        words = line.split()
        if words[:2] == ["step", "1"] and int(words[2]) >= 1:  # second epoch, after its first step
            proc.send_signal(signal.SIGKILL)
            killed_at = (int(words[1]), int(words[2]))
            break
    proc.wait(timeout=120)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    assert load_checkpoint(checkpoint_path(out))["epoch"] == 1
    threads = torch.get_num_threads()
    try:
        events = [e for e in train_run(None, out, resume=True) if not isinstance(e, ev.SetupProgress)]
    finally:
        torch.set_num_threads(threads)
    assert events[0].start_epoch == 1
    _assert_same_state(reference, out)
    np.testing.assert_array_equal(np.load(out / "latents.npy"), np.load(reference / "latents.npy"))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    ck = checkpoint_path(tmp_path)
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="last.pt"):
        next(train_run(None, tmp_path, resume=True))
    with pytest.raises(ValueError, match="no checkpoint"):
        next(train_run(None, tmp_path / "empty", resume=True))


def test_motion_modes_of_a_run_against_the_simulators_truth(full_run, tiny_sim):
    from napari_flex3d.evaluate.recovery import motion_modes

    out, _ = full_run
    modes = motion_modes(out, tiny_sim, n=100)
    for name in ("trained", "true"):
        values = modes[name]
        assert values.shape == (4,) and values[0] == 1.0
        assert np.all(np.diff(values) <= 1e-12) and np.all(values >= 0)
    # a hinge is a rotation: its true displacement over the particles has a curvature mode
    assert modes["true"][1] > 0.02


def test_the_cli_shows_the_set_up_stages_with_a_bar_each(tmp_path, capsys, monkeypatch):
    import sys

    from napari_flex3d.training.progress import consume_events

    setup = [ev.SetupProgress("reading particles"), ev.SetupProgress("checking images", 0, 400, "images"),
             ev.SetupProgress("checking images", 256, 400, "images"),
             ev.SetupProgress("checking images", 400, 400, "images"),
             ev.SetupProgress("model")]
    started = ev.RunStarted(run_dir="RUN", n_particles=400, n_train=380, n_val=20, box=64, apix=3.0, device="cpu",
                            epochs=1, steps_per_epoch=6, start_epoch=0, n_vertices=429)
    consume_events(setup + [started], log_path=tmp_path / "train.log", progress=True)
    out, err = capsys.readouterr()  # not a terminal (a batch job's output file): a line as each stage begins
    stages = ["set-up: reading particles", "set-up: checking images (400 images)", "set-up: model"]
    assert out.splitlines()[:3] == stages and "set-up" not in err
    log = (tmp_path / "train.log").read_text().splitlines()
    assert log[:3] == stages and log[3].startswith("run RUN: 400 particles")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)  # on a terminal: tqdm's bars
    consume_events(setup + [started], progress=True)
    out, err = capsys.readouterr()  # one bar per stage, with the count where there is one
    assert "reading particles (00:00)" in err and "checking images:   0%" in err and "0/400" in err and "model" in err
    assert "set-up" not in out
