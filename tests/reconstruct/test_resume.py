"""A reconstruction stopped mid-way and resumed ends with the maps of an uninterrupted run.

The run is a generator: closing it after a few :class:`ReconstructProgress` events (as
napari's worker ``quit()`` or Ctrl-C would) leaves the finished half maps and the solver
state of the half being solved on disk; ``resume=True`` must continue from there, not
restart, and give the same maps (to float tolerance) as a run that was never stopped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.io.mrc import read_map
from napari_flex3d.io.particles import read_particles
from napari_flex3d.reconstruct.halfmaps import HalfMapDone, ReconstructFinished, ReconstructProgress, solve_half_maps
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.simulate.oracle import true_motion_model

ITERATIONS = 4
MAPS = [f"{mode}_half_{h}.mrc" for mode in ("flex", "rigid") for h in ("A", "B")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    sim = simulate_dataset(root / "sim", n_particles=240, box=32, apix=6.0, snr=1.0, motion="hinge", seed=1)
    torch.manual_seed(0)
    model, latents = true_motion_model(root / "sim", box=24, fit_steps=100)
    ps = read_particles(sim.particles_star)
    full = list(solve_half_maps(model, latents, ps, root / "full", iterations=ITERATIONS, chunk=64))
    assert isinstance(full[-1], ReconstructFinished)
    return root, model, latents, ps


def _read(path) -> np.ndarray:
    return np.asarray(read_map(path).data, dtype=np.float32)


@pytest.mark.parametrize("stop_after", [6, 10])  # mid flex B (flex A done); mid rigid A (flex done)
def test_stopped_and_resumed_run_equals_an_uninterrupted_one(setup, stop_after):
    root, model, latents, ps = setup
    out = root / f"stopped_{stop_after}"
    run = solve_half_maps(model, latents, ps, out, iterations=ITERATIONS, chunk=64)
    seen = 0
    for ev in run:
        if isinstance(ev, ReconstructProgress):
            seen += 1
            if seen == stop_after:
                break
    run.close()  # stopped at a yield, as a worker's quit() does
    done_before = {p.name for p in out.glob("*_half_*.mrc")}
    assert not (out / "report.json").exists()
    assert any((out / "state").glob("*.pt")), "no solver state left to resume from"

    events = list(solve_half_maps(model, latents, ps, out, iterations=ITERATIONS, chunk=64, resume=True))
    progress = [e for e in events if isinstance(e, ReconstructProgress)]
    # it continued: fewer iterations than a fresh run (4 half maps x ITERATIONS), the finished ones reused
    assert len(progress) == 4 * ITERATIONS - stop_after
    assert sum(isinstance(e, HalfMapDone) for e in events) == 4
    assert isinstance(events[-1], ReconstructFinished)
    for name in done_before:  # maps finished before the stop are read back, not solved again
        assert not any(f"{p.mode}_half_{p.half}.mrc" == name for p in progress)
    for name in MAPS:
        a, b = _read(root / "full" / name), _read(out / name)
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * scale, err_msg=name)
    assert not any((out / "state").glob("*.pt"))  # states are removed once their map is written


def test_a_fresh_run_without_resume_ignores_a_stale_state(setup):
    """Without ``resume`` a left-over state is not used: the result is the uninterrupted one."""
    root, model, latents, ps = setup
    out = root / "stale"
    run = solve_half_maps(model, latents, ps, out, iterations=ITERATIONS, chunk=64)
    for ev in run:
        if isinstance(ev, ReconstructProgress) and ev.iteration == 2:
            break
    run.close()
    events = list(solve_half_maps(model, latents, ps, out, iterations=ITERATIONS, chunk=64))
    assert sum(isinstance(e, ReconstructProgress) for e in events) == 4 * ITERATIONS
    a, b = _read(root / "full" / "flex_half_A.mrc"), _read(out / "flex_half_A.mrc")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()))
