"""Latents of other tools, matched to our particles by image name, and how they agree with ours.

A particle's name is ``(stack file name, 0-based index in the stack)``: RELION's
``rlnImageName`` ``000012@Extract/job/mic1.mrcs`` and cryoSPARC's ``blob/path`` +
``blob/idx`` both give it, so two tools' files of the same particles match whatever
their row order, folder layout or subset. Only the stack's file name is compared, not its
folder (projects move).

A comparison source is ``PATH`` or ``PATH::SPEC``:

- ``z.pkl`` / ``.npy`` (cryoDRGN): an array in the row order of the particle file it was
  trained on, which ``SPEC`` names (default: the run's own particle file). The pickle is
  read by ``training.latents.read_latents_pkl``, which rebuilds NumPy arrays only and
  refuses a pickle naming anything else;
- ``.cs`` (cryoSPARC 3DVA): ``components_mode_N/value`` fields (``SPEC``: another field prefix);
- ``.star`` (RELION, DynaMight, ...): the numeric columns whose names start with ``SPEC``
  (default ``rlnFlex3dLatent``).

Imports NumPy, pandas, starfile and ``training``'s latent readers and canonical correlations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["particle_names", "names_from_file", "ExternalLatents", "read_external", "match_by_name", "compare_latents",
           "compare_source"]


def _name_keys(stacks, indices) -> np.ndarray:
    base = [os.path.basename(str(s).lstrip(">").strip()) for s in stacks]
    return np.array([f"{int(i)}@{b}" for i, b in zip(indices, base)], dtype=object)


def particle_names(ps) -> np.ndarray:
    """``(n,)`` names ``"index@stack file name"`` (0-based index) of an ``io.particles.ParticleSet``'s rows."""
    stacks = ps.input_stack_names()
    if stacks is None:
        stacks = ps.image_paths
    return _name_keys(stacks, ps.image_indices)


def _star_block(path: Path) -> pd.DataFrame:
    import starfile

    data = starfile.read(path, always_dict=True)
    for block in data.values():
        if hasattr(block, "columns") and "rlnImageName" in block.columns:
            return block.reset_index(drop=True)
    raise ValueError(f"{path}: no particle block with rlnImageName")


def _star_names(block: pd.DataFrame, path) -> np.ndarray:
    names = block["rlnImageName"].astype(str)
    parts = names.str.partition("@")
    if not names.str.contains("@", regex=False).all():
        raise ValueError(f"{path}: rlnImageName must read index@stack, e.g. {names.iloc[0]!r}")
    return _name_keys(parts[2], parts[0].astype(int) - 1)  # RELION counts from 1


def _cs_names(rec: np.ndarray, path) -> np.ndarray:
    names = rec.dtype.names or ()
    if "blob/path" not in names or "blob/idx" not in names:
        raise ValueError(f"{path}: no blob/path and blob/idx fields to match particles by")
    paths = np.char.decode(rec["blob/path"], "utf-8", errors="replace") if rec["blob/path"].dtype.kind == "S" else rec["blob/path"]
    return _name_keys(paths, rec["blob/idx"])


def names_from_file(path) -> np.ndarray:
    """Particle names of a STAR or ``.cs`` particle file, in its row order."""
    path = Path(path)
    if path.suffix.lower() == ".star":
        return _star_names(_star_block(path), path)
    if path.suffix.lower() == ".cs":
        return _cs_names(np.load(path, allow_pickle=False), path)
    raise ValueError(f"{path}: particle names come from a .star or .cs file")


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
        names = _cs_names(np.load(path, allow_pickle=False), path)
        prefix = spec or "components_mode_"
        return ExternalLatents(values.astype(np.float64), names, [f"{prefix}{i}" for i in range(values.shape[1])], label)
    if suffix == ".star":
        block = _star_block(path)
        cols = _numeric_star_columns(block, spec or "rlnFlex3dLatent", path)
        return ExternalLatents(block[cols].to_numpy(np.float64), _star_names(block, path), list(cols), label)
    raise ValueError(f"--compare {source}: latents are read from .pkl, .npy, .cs or .star")


def match_by_name(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(our_rows, their_rows)`` of the particles both name lists hold, in our order.

    A name listed twice on their side is refused (the match would be ambiguous).
    """
    theirs = pd.Index(np.asarray(theirs, dtype=object))
    if theirs.has_duplicates:
        dup = theirs[theirs.duplicated()][0]
        raise ValueError(f"particle {dup!r} appears more than once in the compared file")
    pos = theirs.get_indexer(np.asarray(ours, dtype=object))
    our_rows = np.flatnonzero(pos >= 0)
    return our_rows, pos[our_rows]


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
