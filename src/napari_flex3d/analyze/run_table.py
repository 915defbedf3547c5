"""A run's particle table for the explorer: what :func:`.covariates.particle_table` needs, read from the run.

:func:`run_particle_table` reads the run's settings and the particles it trained on
(``pipeline.read_run_particles``), takes the per-particle residual from the run's
``analysis/particles.csv`` when ``flex3d analyze`` wrote one for these latents, and
returns the table with the pose/defocus artefact flags. The residual itself, when there
is none on disk, is :func:`.residuals.particle_residuals` at :func:`run_residuals`'s box.
Imports ``model.run`` (the settings) and this package's pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .covariates import ARTEFACT_SPEARMAN, latent_columns, particle_table, pose_artefacts

__all__ = ["RunTable", "run_particle_table", "saved_residual", "run_residuals"]


@dataclass
class RunTable:
    """``table`` (one row per particle, :func:`.covariates.particle_table`), ``artefacts``
    (:func:`.covariates.pose_artefacts`), ``ps`` (the run's ``ParticleSet``), ``particle_file``
    and ``residual_from`` (the CSV the residual was read from, or ``""``)."""

    table: pd.DataFrame
    artefacts: pd.DataFrame
    ps: object
    particle_file: str
    residual_from: str


def saved_residual(run_dir, latents: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``(residual (n,), path)`` from ``RUN/analysis/particles.csv`` when it holds a ``residual``
    column for exactly these latents (same rows, same values to 1e-4), else ``(None, "")``:
    a table of an older epoch or another particle file is not silently reused."""
    path = Path(run_dir) / "analysis" / "particles.csv"
    if not path.is_file():
        return None, ""
    z = np.asarray(latents, np.float64)
    cols = latent_columns(z.shape[1])
    try:
        saved = pd.read_csv(path, usecols=lambda c: c in set(cols) | {"residual"})
    except (ValueError, pd.errors.ParserError):
        return None, ""
    if "residual" not in saved or any(c not in saved for c in cols) or len(saved) != len(z):
        return None, ""
    if not np.allclose(saved[cols].to_numpy(np.float64), z, atol=1e-4, rtol=1e-4):
        return None, ""
    return saved["residual"].to_numpy(np.float64), str(path)


def run_particle_table(run_dir, config, latents: np.ndarray, particles=None,
                       threshold: float = ARTEFACT_SPEARMAN) -> RunTable:
    """The particle table of the run in ``run_dir`` (trained with ``config``, its ``TrainConfig``)
    for ``latents (n, K)`` (its rows).

    ``particles``: the run's particle file when it moved (the same rows). Raises
    ``ValueError`` when the particles and the latents differ in number.
    """
    from .pipeline import read_run_particles

    ps, particle_file = read_run_particles(config, particles)
    z = np.asarray(latents, np.float64)
    if len(z) != len(ps):
        raise ValueError(f"{run_dir}: {len(z)} latents but {len(ps)} particles in {particle_file}")
    residual, source = saved_residual(run_dir, z)
    table = particle_table(z, ps, residual)
    return RunTable(table, pose_artefacts(table, threshold), ps, str(particle_file), source)


def run_residuals(run_dir, ps, latents: np.ndarray, progress=None) -> np.ndarray:
    """``(n,)`` whitened residual per particle at the box ``flex3d analyze`` uses by default."""
    from ..model.run import load_run
    from .pipeline import residual_box_for
    from .residuals import particle_residuals

    run = load_run(run_dir)
    box = residual_box_for(run.config, int(run.model.box))
    return particle_residuals(run_dir, ps, latents, box=box, progress=progress)
