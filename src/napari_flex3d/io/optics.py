"""Optics groups: the microscope and CTF constants shared by groups of particles.

:class:`OpticsGroup` holds voltage, spherical aberration, amplitude contrast, pixel size
and box of one group; a ``ParticleSet`` keeps a list of them and one group index per
particle. Each format groups particles its own way, all gathered here:

- RELION 3.1+: the ``data_optics`` block, indexed by each particle's ``rlnOpticsGroup``;
- RELION 3.0: one group per distinct (voltage, Cs, amplitude contrast, pixel size) of the
  per-particle columns;
- cryoSPARC: one group per distinct (``ctf/exp_group_id``, voltage, Cs, amplitude
  contrast, pixel size, box, ``blob/sign``) of the records.

A box the metadata do not give is read from the first existing stack's header.

Imports NumPy, pandas and the ``io`` format layers (``star``, ``cryosparc``, ``image_source``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .cryosparc import numeric_field
from .image_source import stack_header_value
from .star import numeric_column

__all__ = [
    "DEFAULT_AMPLITUDE_CONTRAST",
    "OpticsGroup",
    "check_positive",
    "cs_optics",
    "star_optics",
]

DEFAULT_AMPLITUDE_CONTRAST = 0.1


@dataclass(frozen=True)
class OpticsGroup:
    """One optics group. ``apix`` is the particle image's pixel size (Å); ``box`` may be
    ``None`` when neither the metadata nor an existing stack says it."""

    name: str
    number: int
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    apix: float
    box: int | None
    inverted: bool = False
    ctf_premultiplied: bool = False


def check_positive(values, path, column) -> None:
    """ValueError naming ``column`` and the first row where ``values`` is not positive."""
    if np.any(values <= 0):
        row = int(np.flatnonzero(values <= 0)[0])
        raise ValueError(f"{path}: {column} must be positive, got {values[row]} at row {row + 1}")


# ------------------------------------------------------------------------- RELION
def star_optics(table: pd.DataFrame, optics_df: pd.DataFrame | None, image_paths, path):
    """Optics groups of a particle STAR table and each particle's group index ``(n,)`` int64.

    ``optics_df``: the ``data_optics`` block (RELION 3.1+) or None (RELION 3.0 columns).
    ``image_paths (n,)``: resolved stacks, read for a box or pixel size the metadata lack.
    """
    if optics_df is not None:
        optics, group = _optics_from_block(table, optics_df, path)
    else:
        optics, group = _optics_from_columns(table, image_paths, path)
    if any(g.box is None for g in optics):
        box = stack_header_value(image_paths, "box")
        if box is not None:
            optics = [replace(g, box=box) if g.box is None else g for g in optics]
    return optics, group


def _amplitude_contrast(table, path, where) -> np.ndarray:
    if "rlnAmplitudeContrast" in table.columns:
        return numeric_column(table, "rlnAmplitudeContrast", path)
    warnings.warn(
        f"{path}: no rlnAmplitudeContrast in the {where}; using the default {DEFAULT_AMPLITUDE_CONTRAST}",
        stacklevel=4,
    )
    return np.full(len(table), DEFAULT_AMPLITUDE_CONTRAST)


def _pixel_size_columns(table, path) -> np.ndarray | None:
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in table.columns:
            return numeric_column(table, col, path)
    if "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
        det_um = numeric_column(table, "rlnDetectorPixelSize", path)
        mag = numeric_column(table, "rlnMagnification", path)
        if np.any(mag <= 0):
            raise ValueError(f"{path}: rlnMagnification must be positive")
        return det_um * 1e4 / mag
    return None


def _groups_from_block(optics_df: pd.DataFrame, path) -> tuple[list[OpticsGroup], np.ndarray]:
    """RELION 3.1+ ``data_optics`` -> groups and their rlnOpticsGroup numbers."""
    if len(optics_df) == 0:
        raise ValueError(f"{path}: the data_optics block has no rows")
    n_opt = len(optics_df)
    numbers = (
        numeric_column(optics_df, "rlnOpticsGroup", path, dtype=np.int64)
        if "rlnOpticsGroup" in optics_df.columns
        else np.arange(1, n_opt + 1)
    )
    if len(set(numbers.tolist())) != n_opt:
        raise ValueError(f"{path}: data_optics repeats an rlnOpticsGroup number ({numbers.tolist()})")
    volt = numeric_column(optics_df, "rlnVoltage", path)
    cs = numeric_column(optics_df, "rlnSphericalAberration", path)
    ac = _amplitude_contrast(optics_df, path, "data_optics block")
    apix = _pixel_size_columns(optics_df, path)
    if apix is None:
        raise ValueError(f"{path}: data_optics has no rlnImagePixelSize (nor rlnDetectorPixelSize and rlnMagnification)")
    check_positive(apix, path, "rlnImagePixelSize")
    check_positive(volt, path, "rlnVoltage")
    box = numeric_column(optics_df, "rlnImageSize", path, dtype=np.int64, allow_missing=True)
    premult = numeric_column(optics_df, "rlnCtfDataAreCtfPremultiplied", path, dtype=np.int64, allow_missing=True)
    names = (
        optics_df["rlnOpticsGroupName"].astype(str).to_numpy()
        if "rlnOpticsGroupName" in optics_df.columns
        else [f"opticsGroup{k}" for k in numbers]
    )
    groups = [
        OpticsGroup(
            name=str(names[i]),
            number=int(numbers[i]),
            voltage_kv=float(volt[i]),
            cs_mm=float(cs[i]),
            amplitude_contrast=float(ac[i]),
            apix=float(apix[i]),
            box=None if box is None else int(box[i]),
            inverted=False,
            ctf_premultiplied=bool(premult[i]) if premult is not None else False,
        )
        for i in range(n_opt)
    ]
    return groups, numbers


def _optics_from_block(table, optics_df, path) -> tuple[list[OpticsGroup], np.ndarray]:
    """RELION 3.1+: the groups of ``data_optics``, each particle's by its ``rlnOpticsGroup`` number."""
    optics, numbers = _groups_from_block(optics_df, path)
    if "rlnOpticsGroup" in table.columns:
        part_numbers = numeric_column(table, "rlnOpticsGroup", path, dtype=np.int64)
    elif len(optics) == 1:
        part_numbers = np.full(len(table), numbers[0])
    else:
        raise ValueError(f"{path}: missing column rlnOpticsGroup with {len(optics)} optics groups")
    lookup = {int(k): i for i, k in enumerate(numbers)}
    unknown = sorted(set(np.unique(part_numbers).tolist()) - set(lookup))
    if unknown:
        raise ValueError(f"{path}: rlnOpticsGroup {unknown[0]} is not in the data_optics block ({sorted(lookup)})")
    group = np.array([lookup[int(k)] for k in part_numbers], dtype=np.int64)
    _warn_disagreeing_columns(table, optics, group, path)
    return optics, group


def _warn_disagreeing_columns(table, optics, group, path) -> None:
    # some writers repeat optics values per particle; data_optics is what RELION itself uses
    for col, attr in (("rlnVoltage", "voltage_kv"), ("rlnSphericalAberration", "cs_mm"), ("rlnAmplitudeContrast", "amplitude_contrast")):
        if col in table.columns:
            vals = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            ref = np.array([getattr(g, attr) for g in optics])[group]
            if not np.allclose(vals, ref, rtol=1e-4, equal_nan=False):
                warnings.warn(f"{path}: particle column {col} disagrees with data_optics; using data_optics", stacklevel=5)


def _optics_from_columns(table, image_paths, path) -> tuple[list[OpticsGroup], np.ndarray]:
    """RELION 3.0: one group per distinct (voltage, Cs, amplitude contrast, pixel size) of the particle columns."""
    n = len(table)
    volt = numeric_column(table, "rlnVoltage", path)
    cs = numeric_column(table, "rlnSphericalAberration", path)
    ac = _amplitude_contrast(table, path, "particle table")
    apix = _pixel_size_columns(table, path)
    if apix is None:
        header_apix = stack_header_value(image_paths, "apix")
        if header_apix is None:
            raise ValueError(
                f"{path}: no pixel size: needs rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification"
            )
        warnings.warn(
            f"{path}: no pixel size column; using the first stack's header ({header_apix:g} Å), "
            "which is often wrong in RELION-written stacks",
            stacklevel=4,
        )
        apix = np.full(n, header_apix)
    check_positive(apix, path, "pixel size")
    check_positive(volt, path, "rlnVoltage")
    keys = np.stack([volt, cs, ac, np.round(apix, 6)], axis=1)
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    box = stack_header_value(image_paths, "box")
    optics = [
        OpticsGroup(f"opticsGroup{k + 1}", k + 1, float(u[0]), float(u[1]), float(u[2]), float(u[3]), box)
        for k, u in enumerate(uniq)
    ]
    return optics, group.reshape(-1).astype(np.int64)


# ---------------------------------------------------------------------- cryoSPARC
def cs_optics(records: np.ndarray, image_paths, path) -> tuple[list[OpticsGroup], np.ndarray, np.ndarray]:
    """Optics groups of cryoSPARC particle records, each particle's group index ``(n,)``
    int64, and each particle's image pixel size ``(n,)`` Å (``blob/psize_A``)."""
    n = len(records)
    psize = numeric_field(records, "blob/psize_A", path, required=False)
    if psize is None:
        psize = numeric_field(records, "alignments3D/psize_A", path)
    check_positive(psize, path, "blob/psize_A")
    shape = numeric_field(records, "blob/shape", path, shape=(2,), required=False)
    volt = numeric_field(records, "ctf/accel_kv", path)
    cs = numeric_field(records, "ctf/cs_mm", path)
    if "ctf/amp_contrast" in records.dtype.names:
        ac = numeric_field(records, "ctf/amp_contrast", path)
    else:
        warnings.warn(f"{path}: no ctf/amp_contrast; using the default {DEFAULT_AMPLITUDE_CONTRAST}", stacklevel=4)
        ac = np.full(n, DEFAULT_AMPLITUDE_CONTRAST)
    sign = numeric_field(records, "blob/sign", path, required=False, default=1.0)
    exp = numeric_field(records, "ctf/exp_group_id", path, required=False, default=0.0)
    if shape is None:
        box_stack = stack_header_value(image_paths, "box")
        box_all = np.full(n, -1.0 if box_stack is None else float(box_stack))
    else:
        box_all = shape[:, 1]
    keys = np.stack([exp, volt, cs, ac, psize, box_all, sign < 0], axis=1)
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    optics = [
        OpticsGroup(
            name=f"exp_group_{int(u[0])}",
            number=k + 1,
            voltage_kv=float(u[1]),
            cs_mm=float(u[2]),
            amplitude_contrast=float(u[3]),
            apix=float(u[4]),
            box=None if u[5] < 0 else int(u[5]),
            inverted=bool(u[6]),
        )
        for k, u in enumerate(uniq)
    ]
    return optics, group.reshape(-1).astype(np.int64), psize
