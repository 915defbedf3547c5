"""`flex3d reconstruct` under torchrun: 2 gloo ranks split the particles' chunks and sum
the gradients and Hessian-vector products; the half maps must equal one process's."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_flex3d.io.mrc import read_map
from napari_flex3d.simulate.dataset import simulate_dataset

_CHILD = textwrap.dedent(
    """
    import sys, torch
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.reconstruct.halfmaps import solve_half_maps
    from napari_flex3d.simulate.oracle import true_motion_model
    sim, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model, latents = true_motion_model(sim, box=16, fit_steps=50)
    ps = read_particles(sim + "/particles.star")
    for _ in solve_half_maps(model, latents, ps, out, iterations=3, chunk=24, noise_particles=120):
        pass
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(sim, out, world: int) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", FLEX3D_DIST_TIMEOUT_S="120")
        if world > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        else:
            for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
                env.pop(k, None)
        procs.append(subprocess.Popen([sys.executable, "-c", _CHILD, str(sim), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]


@pytest.mark.slow
def test_two_ranks_give_the_half_maps_of_one_process(tmp_path):
    sim = tmp_path / "sim"
    simulate_dataset(sim, n_particles=240, box=24, apix=8.0, snr=1.0, motion="hinge", seed=0)
    # the single process (one thread) and the two ranks run at the same time: each its own output folder
    _wait(_start(sim, tmp_path / "one", 1) + _start(sim, tmp_path / "two", 2))
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["ranks"] == 1 and two["ranks"] == 2
    for mode in ("flex", "rigid"):
        for half in ("A", "B"):
            a = read_map(tmp_path / "one" / f"{mode}_half_{half}.mrc").data
            b = read_map(tmp_path / "two" / f"{mode}_half_{half}.mrc").data
            assert np.abs(a).max() > 0
            assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), (mode, half, np.abs(a - b).max())
            o1, o2 = one["maps"][mode]["objective"][half], two["maps"][mode]["objective"][half]
            assert abs(o1 - o2) <= 1e-6 * abs(o1)
