"""A tiny simulated hinge dataset with six junk particles, and a short run trained on it (once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

JUNK_ROWS = np.array([3, 50, 77, 120, 151, 190])  # particles with a contaminant (junk) beside them


@pytest.fixture(scope="session")
def hinge_sim(tmp_path_factory) -> Path:
    """200 hinge particles at box 24 (8 Å/px, SNR 0.3); the ``JUNK_ROWS`` images get a blob the model
    cannot explain (8 noise sds high, 2 px wide, off-centre: ice or a neighbour)."""
    import mrcfile

    from napari_flex3d.simulate.dataset import simulate_dataset

    out = tmp_path_factory.mktemp("analyze_sim")
    simulate_dataset(out, n_particles=200, box=24, apix=8.0, snr=0.3, motion="hinge", seed=0)
    with mrcfile.mmap(out / "particles.mrcs", mode="r+") as m:
        sd = float(np.std(m.data))
        yy, xx = np.mgrid[:24, :24]
        blob = np.exp(-((xx - 6.0) ** 2 + (yy - 7.0) ** 2) / (2 * 2.0**2)).astype(np.float32)
        m.data[JUNK_ROWS] += 8.0 * sd * blob  # a sign flip would not do: the residual fits a per-image scale
    return out


@pytest.fixture(scope="session")
def trained_run(hinge_sim, tmp_path_factory) -> Path:
    """A K=2 run of 3 short epochs on :func:`hinge_sim` (a small, fast model)."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.loop import train_run

    out = tmp_path_factory.mktemp("analyze_run")
    config = TrainConfig(
        particles=str(hinge_sim / "particles.star"), map=str(hinge_sim / "consensus.mrc"), out=str(out), latent_dim=2,
        hidden=16, layers=2, epochs=3, batch=50, kernel="linear", latent_grid=5, latent_steps=1, preview_every=0,
        threads=1, warmup_epochs=1, val_fraction=0.1,
    )
    for _ in train_run(config, out):
        pass
    return out


@pytest.fixture(scope="session")
def junk_rows() -> np.ndarray:
    """The rows of :func:`hinge_sim` with a contaminant."""
    return JUNK_ROWS
