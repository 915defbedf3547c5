"""Training again without the outliers: the kept particles' file, the run's settings pointed at it, the command.

:func:`write_kept` writes the particles that are not outliers beside the analysis (``.cs``
for a ``.cs`` input, which keeps every cryoSPARC field, else STAR); :func:`retrain_config`
is the run's own ``TrainConfig`` (and mesh) reading that file into a new run folder, and
:func:`train_argv` the ``flex3d train`` command line that runs it. ``flex3d analyze``
prints that command; the explorer's "Exclude and train" hands the same settings to the
Train widget. Imports ``config`` and ``explore.subsets``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..config import to_arguments

__all__ = ["KEPT_STEM", "kept_suffix", "retrain_config", "retrain_dir", "run_mesh", "train_argv", "write_kept"]

KEPT_STEM = "particles_without_outliers"


def kept_suffix(ps) -> str:
    """``.cs`` when the particles came from a ``.cs`` (its records ride along), else ``.star``."""
    return ".cs" if getattr(ps, "records", None) is not None else ".star"


def write_kept(ps, outliers, path) -> tuple[Path, np.ndarray]:
    """Write the particles of ``ps`` not in ``outliers`` (row indices or an ``(n,)`` bool mask) to
    ``path`` (STAR or ``.cs`` by suffix); returns ``(path, kept rows)``. Refuses to keep none."""
    from ..explore.subsets import write_subset

    n = len(ps)
    out = np.asarray(outliers)
    mask = out.astype(bool) if out.dtype == bool else np.isin(np.arange(n), out.astype(np.int64))
    if len(mask) != n:
        raise ValueError(f"an outlier mask of {len(mask)} rows for {n} particles")
    kept = np.flatnonzero(~mask)
    if len(kept) == 0:
        raise ValueError(f"every one of the {n} particles is above the threshold: nothing left to train on")
    return write_subset(ps, kept, path), kept


def retrain_dir(run_dir) -> Path:
    """The default folder of the run without outliers: ``RUN_without_outliers`` beside ``RUN``."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}_without_outliers"


def run_mesh(run_dir) -> Path | None:
    """The mesh a run trained with (``RUN/mesh.npz``, painted masks included), if it is there."""
    path = Path(run_dir) / "mesh.npz"
    return path if path.is_file() else None


def retrain_config(config, particles, out, mesh=None):
    """The run's ``config`` training on ``particles`` (the kept file) into ``out``.

    The kept file is already cut to the run's particle limit (``max_particles`` becomes
    ``None``) and carries any passthrough fields (``passthrough`` becomes ``None``); a
    STAR file names its stacks from its own folder (``root`` becomes ``None``), a ``.cs``
    keeps the project-relative paths and with them ``root``. The half set stays: every
    kept particle is in it. ``mesh``: the mesh to train with (the run's own, from
    :func:`run_mesh`), default the run's setting.
    """
    star = Path(particles).suffix.lower() == ".star"
    return dataclasses.replace(config, particles=str(particles), out=str(out), max_particles=None, passthrough=None,
                               root=None if star else config.root, mesh=str(mesh) if mesh else config.mesh)


def train_argv(config) -> list[str]:
    """``["flex3d", "train", "--particles=...", "--map=...", "--out=...", ...]``: every setting of
    ``config`` that differs from its default (:func:`napari_flex3d.config.to_arguments`)."""
    return ["flex3d", "train", *to_arguments(config)]
