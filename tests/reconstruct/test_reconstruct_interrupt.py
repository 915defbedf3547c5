"""SIGKILL mid-reconstruction and mid-series export: no torn file, and the reconstruction resumes.

The reconstruction writes a solver state after every L-BFGS iteration (one pass over a half
set) and each map once whole, all through ``io.atomic``; a killed run leaves finished maps
and states that read, and ``resume=True`` ends with the uninterrupted run's maps.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_flex3d.io import atomic
from napari_flex3d.io.atomic import DiskFullError
from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles
from napari_flex3d.reconstruct.halfmaps import ReconstructFinished, solve_half_maps

OPTIONS = dict(iterations=3, chunk=32, rigid=False)
#: The model of the simulation's true motion; FIT_STEPS = 0 with the weights the test fitted (the child's).
_MODEL = """
import torch
from napari_flex3d.io.particles import read_particles
from napari_flex3d.simulate.oracle import true_motion_model
torch.set_num_threads(1)
model, latents = true_motion_model(SIM, box=16, fit_steps=FIT_STEPS)
if not FIT_STEPS:
    model.load_state_dict(torch.load(SIM + "/flow.pt", weights_only=True))
ps = read_particles(SIM + "/particles.star")
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from napari_flex3d.simulate.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("interrupt")
    simulate_dataset(root / "sim", n_particles=80, box=20, apix=9.6, snr=1.0, motion="hinge", seed=2)
    threads = torch.get_num_threads()
    try:
        scope = {"SIM": str(root / "sim"), "FIT_STEPS": 30}
        exec(_MODEL, scope)
        model, latents, ps = scope["model"], scope["latents"], scope["ps"]
        torch.save(model.state_dict(), root / "sim" / "flow.pt")  # the child's model, without fitting it again
        events = list(solve_half_maps(model, latents, ps, root / "full", **OPTIONS))
    finally:
        torch.set_num_threads(threads)
    assert isinstance(events[-1], ReconstructFinished)
    return root, model, latents, ps


def _no_torn_files(out):
    for path in out.rglob("*.mrc"):
        assert np.all(np.isfinite(read_map(path).data)), path
    for path in (out / "state").glob("*.pt"):
        torch.load(path, weights_only=True)
    assert not list(out.rglob(".*.tmp*"))


_CHILD = textwrap.dedent(
    """
    import sys
    from napari_flex3d.reconstruct.halfmaps import ReconstructProgress, solve_half_maps
    SIM, OUT, FIT_STEPS = sys.argv[1], sys.argv[2], 0
    """
) + _MODEL + textwrap.dedent(
    """
    for e in solve_half_maps(model, latents, ps, OUT, iterations=3, chunk=32, rigid=False):
        if isinstance(e, ReconstructProgress):
            print("progress", e.mode, e.half, e.iteration, flush=True)
    """
)


def test_sigkill_mid_reconstruction_leaves_readable_files_and_resumes(setup):
    root, model, latents, ps = setup
    out = root / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(root / "sim"), str(out)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.split() == ["progress", "flex", "B", "2"]:  # half map A written, B's solver state at iteration 2
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    _no_torn_files(out)
    assert (out / "flex_half_A.mrc").exists() and not (out / "report.json").exists()
    assert torch.load(out / "state" / "flex_B.pt", weights_only=True)["k"] >= 2
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        events = list(solve_half_maps(model, latents, ps, out, resume=True, **OPTIONS))
    finally:
        torch.set_num_threads(threads)
    assert isinstance(events[-1], ReconstructFinished)
    for name in ("flex_half_A.mrc", "flex_half_B.mrc", "flex_map.mrc"):
        a, b = (np.asarray(read_map(d / name).data) for d in (root / "full", out))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()), err_msg=name)
    _no_torn_files(out)


def test_a_disk_filling_at_a_map_write_stops_cleanly_and_resume_finishes(setup, monkeypatch):
    import errno

    root, model, latents, ps = setup
    out = root / "full_disk"

    def full_at_map_b(tmp, path):
        if path.name == "flex_half_B.mrc":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "before_replace", full_at_map_b)
    with pytest.raises(DiskFullError, match=r"no space left on the device while writing .*flex_half_B\.mrc .*is intact"):
        list(solve_half_maps(model, latents, ps, out, **OPTIONS))
    monkeypatch.setattr(atomic, "before_replace", None)
    _no_torn_files(out)
    assert not (out / "flex_half_B.mrc").exists() and torch.load(out / "state" / "flex_B.pt", weights_only=True)["k"] == 3
    events = list(solve_half_maps(model, latents, ps, out, resume=True, **OPTIONS))  # space freed
    assert isinstance(events[-1], ReconstructFinished)
    for name in ("flex_half_A.mrc", "flex_half_B.mrc"):
        a, b = (np.asarray(read_map(d / name).data) for d in (root / "full", out))
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()), err_msg=name)


def test_a_reconstruction_that_cannot_fit_is_refused_before_its_first_pass(setup, monkeypatch):
    root, model, latents, ps = setup
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10_000)
    with pytest.raises(DiskFullError, match=r"small: the half maps, sharpened maps and solver states need about "
                                            r"[0-9.]+ kB but only 10\.0 kB is free"):
        next(iter(solve_half_maps(model, latents, ps, root / "small", **OPTIONS)))


_SERIES_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from napari_flex3d.explore.series import write_volume_series
    from napari_flex3d.io import atomic

    def kill_at_the_third_frame(tmp, path):
        if path.name == "frame_002.mrc":
            os.kill(os.getpid(), signal.SIGKILL)

    atomic.before_replace = kill_at_the_third_frame
    write_volume_series(np.random.default_rng(0).random((6, 16, 16, 16), dtype=np.float32), 2.0, sys.argv[1])
    """
)


def test_sigkill_mid_series_export_leaves_whole_frames_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _SERIES_CHILD, str(tmp_path / "series")], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    frames = sorted(p.name for p in (tmp_path / "series").glob("frame_*.mrc"))
    assert frames == ["frame_000.mrc", "frame_001.mrc"]  # written whole; the third never replaced anything
    for name in frames:
        assert read_map(tmp_path / "series" / name).data.shape == (16, 16, 16)
    assert not (tmp_path / "series" / "series.cxc").exists()


def test_a_series_that_cannot_fit_is_refused_before_its_first_frame(tmp_path, monkeypatch):
    from napari_flex3d.explore.series import write_volume_series

    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 20_000)
    with pytest.raises(DiskFullError, match=r"series: 41 frames of 16\^3 need about 713\.7 kB but only 20\.0 kB is free"):
        write_volume_series(np.zeros((41, 16, 16, 16), np.float32), 2.0, tmp_path / "series")
    assert not list((tmp_path / "series").glob("*.mrc"))
