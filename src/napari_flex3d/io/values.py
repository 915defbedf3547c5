"""Checks of numbers read from users' files or about to be written: found at the boundary,
named by their file, never deep in a kernel.

Imports NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["require_finite", "require_informative_map", "require_same_extent"]


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


def require_same_extent(what: str, shape, apix: float | None, box: int, map_apix: float, tolerance: float = 0.01) -> None:
    """``ValueError`` naming ``what`` unless a cubic volume of ``shape`` at ``apix`` Å spans the map's
    box in Å (``box * map_apix``, within ``tolerance``): the same map at another sampling is placed
    by its pixel size, but a volume of another extent was made for another map."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or len(set(shape)) != 1:
        raise ValueError(f"{what}: must be a cubic volume, got shape {shape}")
    if not apix or apix <= 0:
        raise ValueError(f"{what}: no pixel size in its header; set it to the consensus map's ({map_apix:.4g} Å)")
    if abs(shape[0] * apix - box * map_apix) > tolerance * box * map_apix:
        raise ValueError(
            f"{what}: {shape[0]} voxels at {apix:.4g} Å ({shape[0] * apix:.1f} Å across), the map "
            f"{box} voxels at {map_apix:.4g} Å ({box * map_apix:.1f} Å): made for another map; make it on "
            "the consensus map of these particles"
        )
