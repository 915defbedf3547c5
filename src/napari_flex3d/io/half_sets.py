"""Gold-standard half sets: the one in-memory encoding and its converters at the file boundary.

In memory a half set is an ``(n,)`` int8 array: ``0`` = half A, ``1`` = half B, ``-1`` =
unknown. Files and settings use other encodings, converted here and nowhere else:

=========================================  ======  ======  =======
encoding                                    A       B       unknown
=========================================  ======  ======  =======
in memory (``ParticleSet.half_set``)        0       1       -1
RELION ``rlnRandomSubset``                  1       2       0 / absent
cryoSPARC ``alignments3D/split``            0       1       (none)
user-facing settings (``--half-set``)       "A"     "B"     ""
=========================================  ======  ======  =======

Imports only NumPy.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HALF_A",
    "HALF_B",
    "HALF_UNKNOWN",
    "check_half_set",
    "half_set_code",
    "half_set_from_cryosparc",
    "half_set_from_relion",
    "half_set_name",
    "half_set_rows",
    "half_set_to_cryosparc",
    "half_set_to_relion",
]

HALF_A, HALF_B, HALF_UNKNOWN = 0, 1, -1
_NAMES = ("A", "B")


def _from_codes(values, code_a, code_b) -> np.ndarray:
    values = np.asarray(values)
    half = np.full(values.shape, HALF_UNKNOWN, np.int8)
    half[values == code_a] = HALF_A
    half[values == code_b] = HALF_B
    return half


def half_set_from_relion(random_subset) -> np.ndarray:
    """RELION ``rlnRandomSubset`` ``(n,)`` (1, 2; anything else unknown) -> ``(n,)`` int8 half set."""
    return _from_codes(random_subset, 1, 2)


def half_set_to_relion(half_set) -> np.ndarray:
    """``(n,)`` half set -> RELION ``rlnRandomSubset`` ``(n,)`` int64 (1, 2; 0 where unknown)."""
    half = np.asarray(half_set)
    return np.where(half >= 0, half.astype(np.int64) + 1, 0)


def half_set_from_cryosparc(split) -> np.ndarray:
    """cryoSPARC ``alignments3D/split`` ``(n,)`` (0, 1; anything else unknown) -> ``(n,)`` int8 half set."""
    return _from_codes(split, 0, 1)


def half_set_to_cryosparc(half_set) -> np.ndarray:
    """``(n,)`` half set -> cryoSPARC ``alignments3D/split`` ``(n,)`` uint32.

    The field has no "unknown": unknown particles are written as split 0 (half A).
    """
    return np.clip(np.asarray(half_set), 0, 1).astype(np.uint32)


def half_set_code(name: str) -> int:
    """A user-facing half-set name ``"A"``/``"B"`` -> its code 0/1; ValueError for anything else."""
    if name not in _NAMES:
        raise ValueError(f"half set must be 'A' or 'B', got {name!r}")
    return _NAMES.index(name)


def half_set_name(code: int) -> str:
    """A half-set code 0/1/-1 -> ``"A"``, ``"B"`` or ``"unknown"``."""
    return _NAMES[int(code)] if int(code) in (HALF_A, HALF_B) else "unknown"


def check_half_set(half_set, n: int, where: str) -> np.ndarray:
    """``half_set`` as an ``(n,)`` int8 array of 0, 1 and -1; ValueError naming ``where`` otherwise."""
    half = np.asarray(half_set)
    if half.size != n:
        raise ValueError(f"{where}: half_set has shape {half.shape}, expected {(n,)}")
    half = half.reshape(-1)
    bad = ~np.isin(half, (HALF_A, HALF_B, HALF_UNKNOWN))
    if bad.any():
        raise ValueError(f"{where}: half_set holds {half[bad][0].item()!r}; expected 0 (A), 1 (B) or -1 (unknown)")
    return half.astype(np.int8)


def half_set_rows(ps, half: str) -> np.ndarray:
    """Rows of half set ``"A"`` or ``"B"`` of a ``ParticleSet`` in input order, ``(m,)`` int64.

    ``ValueError`` naming the file and the columns if any particle has no half set: a
    half taken from a partial split would not be the refinement's gold-standard half.
    """
    code = half_set_code(half)
    labels = np.asarray(ps.half_set)
    unknown = int(np.count_nonzero(labels < 0))
    if unknown:
        raise ValueError(
            f"{ps.source}: {unknown} of {len(ps)} particles have no half set (STAR column rlnRandomSubset 1/2, "
            "cryoSPARC field alignments3D/split 0/1); independent half sets need the refinement's split"
        )
    return np.flatnonzero(labels == code)
