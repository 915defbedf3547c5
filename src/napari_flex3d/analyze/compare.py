"""Latents of other tools, matched to our particles by image name, and how they agree with ours.

Particles are matched by name (``io.particle_names``: the stack's file name and the
0-based index in it), whatever the row order, folder layout or subset of either file.

A comparison source is ``PATH`` or ``PATH::SPEC``:

- ``z.pkl`` / ``.npy`` (cryoDRGN): an array in the row order of the particle file it was
  trained on, which ``SPEC`` names (default: the run's own particle file). The pickle is
  read by ``training.latents.read_latents_pkl``, which rebuilds NumPy arrays only and
  refuses a pickle naming anything else;
- ``.cs`` (cryoSPARC 3DVA): ``components_mode_N/value`` fields (``SPEC``: another field prefix);
- ``.star`` (RELION, DynaMight, ...): the numeric columns whose names start with ``SPEC``
  (default ``rlnFlex3dLatent``).

Imports NumPy, pandas, ``io.particle_names`` and ``training``'s latent readers and canonical correlations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..io.particle_names import cs_names, match_by_name, names_from_file, particle_names, star_names, star_particle_block

__all__ = ["particle_names", "names_from_file", "ExternalLatents", "read_external", "match_by_name", "compare_latents",
           "compare_source"]


@dataclass
class ExternalLatents:
    """Another tool's latents: ``values (m, q)``, ``names (m,)``, ``columns`` (q labels), ``label`` (the file)."""

    values: np.ndarray
    names: np.ndarray
    columns: list[str]
    label: str


def _numeric_star_columns(block: pd.DataFrame, prefix: str, path) -> list[str]:
    cols = [c for c in block.columns if c.startswith(prefix) and pd.api.types.is_numeric_dtype(block[c])]
    if not cols:
        numeric = [c for c in block.columns if pd.api.types.is_numeric_dtype(block[c])]
        raise ValueError(f"{path}: no numeric column starting with {prefix!r}; give one as {path}::COLUMN "
                         f"(numeric columns: {', '.join(numeric[:20])})")
    return cols


def read_external(source: str, default_names=None) -> ExternalLatents:
    """Read one comparison source ``PATH`` or ``PATH::SPEC`` (see the module docstring).

    ``default_names`` is the run's particle file, the row order a ``.pkl``/``.npy`` follows
    when ``SPEC`` is not given.
    """
    from ..training.latents import read_latents_file

    text, _, spec = str(source).partition("::")
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"--compare {source}: {path} not found")
    suffix = path.suffix.lower()
    label = path.name
    if suffix in (".pkl", ".pickle", ".npy"):
        names_file = spec or default_names
        if not names_file:
            raise ValueError(f"--compare {source}: a {suffix} has no particle names; give its particle file as {path}::PARTICLES.star")
        values = read_latents_file(path)
        names = names_from_file(names_file)
        if len(names) != len(values):
            raise ValueError(f"--compare {source}: {len(values)} latent rows but {len(names)} particles in {names_file}")
        return ExternalLatents(values.astype(np.float64), names, [f"{label}:{i + 1}" for i in range(values.shape[1])], label)
    if suffix == ".cs":
        values = read_latents_file(path, column=spec or None)
        names = cs_names(np.load(path, allow_pickle=False), path)
        prefix = spec or "components_mode_"
        return ExternalLatents(values.astype(np.float64), names, [f"{prefix}{i}" for i in range(values.shape[1])], label)
    if suffix == ".star":
        block = star_particle_block(path)
        cols = _numeric_star_columns(block, spec or "rlnFlex3dLatent", path)
        return ExternalLatents(block[cols].to_numpy(np.float64), star_names(block, path), list(cols), label)
    raise ValueError(f"--compare {source}: latents are read from .pkl, .npy, .cs or .star")


def compare_latents(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """``{"spearman": (K, q), "canonical": (min(K, q),)}`` between matched latent tables ``(m, K)``, ``(m, q)``."""
    from ..training.agreement import canonical_correlations
    from .covariates import spearman_matrix

    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if len(ours) != len(theirs) or len(ours) < 3:
        raise ValueError(f"compare_latents needs the same >= 3 particles on both sides, got {len(ours)} and {len(theirs)}")
    return {"spearman": spearman_matrix(ours, theirs), "canonical": canonical_correlations(ours, theirs)}


def compare_source(source: str, ps, latents: np.ndarray, default_names=None) -> dict:
    """Read ``source``, match it to the rows of ``ps`` by name and compare it with ``latents (n, K)``.

    Returns ``{"external": ExternalLatents, "values": (n, q)`` their latents in our rows (NaN
    where none of theirs matched), ``"matched": int, "spearman": (K, q), "canonical": (min(K, q),)}``.
    ``ValueError`` when fewer than 3 particles match.
    """
    ext = read_external(source, default_names=default_names)
    ours_rows, their_rows = match_by_name(particle_names(ps), ext.names)
    if len(ours_rows) < 3:
        raise ValueError(f"{source}: only {len(ours_rows)} of its {len(ext.names)} particles match ours by image name")
    z = np.asarray(latents, np.float64)
    values = np.full((len(z), ext.values.shape[1]), np.nan)
    values[ours_rows] = ext.values[their_rows]
    return {"external": ext, "values": values, "matched": int(len(ours_rows)),
            **compare_latents(z[ours_rows], ext.values[their_rows])}
