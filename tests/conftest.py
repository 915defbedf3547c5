"""Shared fixtures: where the real-format test files live, small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning
# threads slowed the suite several-fold (measured 10 s vs 100 s for one simulation).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _keep_freed_memory() -> None:
    """What ``flex3d`` does at its start (``napari_flex3d._process``), for pytest itself and the
    processes tests start: freed blocks up to 1 GiB stay in glibc's heap (the half-map solver's
    per-chunk temporaries were page-faulted in again each chunk; the same arrays and arithmetic)."""
    from napari_flex3d._process import keep_freed_memory

    keep_freed_memory()


_keep_freed_memory()

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _find_formats() -> Path | None:
    env = os.environ.get("FLEX3D_TESTDATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "testdata" / "formats", REPO / "shared" / "testdata" / "formats"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


FORMATS = _find_formats()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def formats_dir() -> Path:
    """``../shared/testdata/formats``: real files written by other programs."""
    if FORMATS is None:
        pytest.skip("../shared/testdata/formats not found (set FLEX3D_TESTDATA)")
    return FORMATS


@pytest.fixture(scope="session")
def trained_hinge(tmp_path_factory) -> Path:
    """The small trained hinge, simulated and trained once per session: 2,000 hinge particles at
    box 48 (2 Å/px, SNR 0.3, seed 0) in ``sim/``, a run in ``run/`` trained at box 24 with K=1, 4
    epochs (1 warm-up), batches of 100, the linear kernel and the rigidity floor at 0.5.

    Used read-only by tests/reconstruct/test_trained_hinge.py and tests/analyze/test_trained_hinge_artefacts.py.
    """
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training.loop import train_run

    root = tmp_path_factory.mktemp("trained_hinge")
    sim = simulate_dataset(root / "sim", n_particles=2000, box=48, apix=2.0, snr=0.3, motion="hinge", seed=0)
    config = TrainConfig(
        particles=str(sim.particles_star), map=str(sim.consensus), out=str(root / "run"), box=24,
        latent_dim=1, epochs=4, warmup_epochs=1, batch=100, kernel="linear", preview_every=0, rigidity_floor=0.5,
    )
    for _ in train_run(config, root / "run"):
        pass
    return root


@pytest.fixture(scope="session")
def oracle_hinge_halfmaps(tmp_path_factory):
    """Flex and rigid half maps of a simulated hinge with the oracle flow, solved once per session:
    1,500 hinge particles at box 64 (3 Å/px, SNR 1, seed 0) in ``sim/``, the flow fitted to the
    simulator's true motion at box 32 (latents the true coordinates), 10 L-BFGS iterations per
    half map with the arm and body masks, into ``rec/``.

    Returns ``SimpleNamespace(root, events, masks)``; used read-only by
    tests/reconstruct/test_moving_domain.py (whose docstring says why box 64) and test_halfmaps.py.
    """
    from types import SimpleNamespace

    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.reconstruct.halfmaps import solve_half_maps
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.simulate.oracle import domain_mask, true_motion_model

    box = 64
    root = tmp_path_factory.mktemp("oracle_hinge")
    sim = simulate_dataset(root / "sim", n_particles=1500, box=box, apix=3.0, snr=1.0, motion="hinge", seed=0)
    torch.manual_seed(0)
    model, latents = true_motion_model(root / "sim", box=32)
    masks = {"arm": domain_mask(root / "sim", 2, box=box), "body": domain_mask(root / "sim", 0, box=box)}
    ps = read_particles(sim.particles_star)
    events = list(solve_half_maps(model, latents, ps, root / "rec", masks=masks, iterations=10))
    return SimpleNamespace(root=root, events=events, masks=masks)
