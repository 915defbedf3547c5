"""Particle names: what identifies a particle across files, tools and row orders.

A particle's name is ``"index@stack file name"`` (0-based index in the stack): RELION's
``rlnImageName`` ``000012@Extract/job/mic1.mrcs`` and cryoSPARC's ``blob/path`` +
``blob/idx`` both give it, so two files of the same particles match whatever their row
order, folder layout or subset. Only the stack's file name is compared, not its folder
(projects move). Used to match other tools' latents (``analyze.compare``) and to select
a subset of particles for a reconstruction (``flex3d reconstruct --subset``).

Imports NumPy, pandas and starfile.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["particle_names", "names_from_file", "match_by_name", "star_particle_block", "star_names", "cs_names"]


def _name_keys(stacks, indices) -> np.ndarray:
    base = [os.path.basename(str(s).lstrip(">").strip()) for s in stacks]
    return np.array([f"{int(i)}@{b}" for i, b in zip(indices, base)], dtype=object)


def particle_names(ps) -> np.ndarray:
    """``(n,)`` names ``"index@stack file name"`` (0-based index) of an ``io.particles.ParticleSet``'s rows."""
    stacks = ps.input_stack_names()
    if stacks is None:
        stacks = ps.image_paths
    return _name_keys(stacks, ps.image_indices)


def star_particle_block(path) -> pd.DataFrame:
    """The first block of a STAR file with ``rlnImageName`` (its particles), rows renumbered from 0."""
    import starfile

    data = starfile.read(path, always_dict=True)
    for block in data.values():
        if hasattr(block, "columns") and "rlnImageName" in block.columns:
            return block.reset_index(drop=True)
    raise ValueError(f"{path}: no particle block with rlnImageName")


def star_names(block: pd.DataFrame, path) -> np.ndarray:
    """The names of a STAR particle block's rows (``path`` for messages)."""
    names = block["rlnImageName"].astype(str)
    parts = names.str.partition("@")
    if not names.str.contains("@", regex=False).all():
        raise ValueError(f"{path}: rlnImageName must read index@stack, e.g. {names.iloc[0]!r}")
    return _name_keys(parts[2], parts[0].astype(int) - 1)  # RELION counts from 1


def cs_names(rec: np.ndarray, path) -> np.ndarray:
    """The names of a cryoSPARC record array's rows (``path`` for messages)."""
    names = rec.dtype.names or ()
    if "blob/path" not in names or "blob/idx" not in names:
        raise ValueError(f"{path}: no blob/path and blob/idx fields to match particles by")
    paths = np.char.decode(rec["blob/path"], "utf-8", errors="replace") if rec["blob/path"].dtype.kind == "S" else rec["blob/path"]
    return _name_keys(paths, rec["blob/idx"])


def names_from_file(path) -> np.ndarray:
    """Particle names of a STAR or ``.cs`` particle file, in its row order."""
    path = Path(path)
    if path.suffix.lower() == ".star":
        return star_names(star_particle_block(path), path)
    if path.suffix.lower() == ".cs":
        return cs_names(np.load(path, allow_pickle=False), path)
    raise ValueError(f"{path}: particle names come from a .star or .cs file")


def match_by_name(ours: np.ndarray, theirs: np.ndarray, what: str = "the compared file") -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(our_rows, their_rows)`` of the particles both name lists hold, in our order.

    A name listed twice on their side (``what`` names it in the message) is refused: the
    match would be ambiguous.
    """
    theirs = pd.Index(np.asarray(theirs, dtype=object))
    if theirs.has_duplicates:
        dup = theirs[theirs.duplicated()][0]
        raise ValueError(f"particle {dup!r} appears more than once in {what}")
    pos = theirs.get_indexer(np.asarray(ours, dtype=object))
    our_rows = np.flatnonzero(pos >= 0)
    return our_rows, pos[our_rows]
