"""A tiny simulated dataset shared by the training tests (simulated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest


def simulate_small(out_dir: Path, n_particles: int, box: int, motion: str = "hinge", snr: float = 0.1, seed: int = 0):
    """``flex3d simulate`` into ``out_dir`` (the molecule keeps its size in Å: ``apix = 192 / box``)."""
    from napari_flex3d.simulate.dataset import simulate_dataset

    return simulate_dataset(out_dir, n_particles=n_particles, box=box, apix=192.0 / box, snr=snr, motion=motion, seed=seed)


@pytest.fixture(scope="session")
def simulate_small_into():
    """``simulate_small`` for tests that simulate their own size (a fixture, not ``from conftest
    import``: which ``conftest`` module that names depends on the order pytest collected the folders)."""
    return simulate_small


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    """120 hinge particles at box 24: enough to exercise every code path in seconds."""
    out = tmp_path_factory.mktemp("tiny_sim")
    simulate_small(out, n_particles=120, box=24)
    return out


@pytest.fixture(scope="session")
def tiny_config():
    """``make(sim, out, **overrides) -> TrainConfig``: a small, fast model for the loop tests."""
    return _tiny_config


def _tiny_config(sim: Path, out: Path, **overrides):
    from napari_flex3d.config import TrainConfig

    settings = dict(
        particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(out), latent_dim=1,
        hidden=16, layers=2, epochs=3, batch=40, kernel="linear", latent_grid=5, latent_steps=1,
        preview_every=1, threads=1, warmup_epochs=1, val_fraction=0.1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
