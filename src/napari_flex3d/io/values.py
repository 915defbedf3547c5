"""Checks of numbers read from users' files or about to be written: found at the boundary,
named by their file, never deep in a kernel.

Imports NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["require_finite", "require_informative_map"]


def require_finite(values, what: str) -> np.ndarray:
    """``values`` as an array; ``ValueError`` naming ``what`` and the count when any is NaN or infinite."""
    arr = np.asarray(values)
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{what}: {int(bad.sum())} of {arr.size} values are NaN or infinite (first at index "
                             f"{first if len(first) > 1 else first[0]})")
    return arr


def require_informative_map(volume, what: str) -> np.ndarray:
    """``volume`` if it is finite and not constant (all zero, say); else ``ValueError`` naming ``what``.

    A map that is constant carries no density: writing it as a result, or thresholding it for
    a mask, would only hide the failure upstream (NaN images, an empty selection).
    """
    arr = require_finite(volume, what)
    if arr.size == 0:
        raise ValueError(f"{what}: the map is empty (shape {arr.shape})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise ValueError(f"{what}: every voxel is {lo:g}; the map carries no density (check the input that made it)")
    return arr
