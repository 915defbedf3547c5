"""RELION particle STAR files <-> :class:`ParticleSet`: :func:`read_star_particles`, :func:`write_star`.

Reads RELION 3.0 (optics in per-particle columns), 3.1, 4 and 5 (a ``data_optics``
block) particle files of 2D images; writes RELION 3.1. Poses are RELION's Euler angles
(``rlnAngleRot/Tilt/Psi``, see docs/conventions.md), shifts ``rlnOriginX/YAngst`` (or the
older pixel columns), half sets ``rlnRandomSubset`` 1/2.

Imports NumPy, pandas, ``conventions`` and the ``io`` modules it builds on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..conventions import euler_to_matrix, matrix_to_euler
from .half_sets import half_set_from_relion, half_set_to_relion
from .image_source import output_stack_names, resolve_image_paths
from .optics import star_optics
from .particle_set import ParticleSet
from .star import numeric_column, read_star, write_star_blocks

__all__ = ["read_star_particles", "write_star"]

_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


# -------------------------------------------------------------------------- read
def read_star_particles(path, root=None) -> ParticleSet:
    """Read a RELION 3.0 / 3.1 / 4 / 5 particle STAR file (2D particle images only).

    ``root``: a folder to resolve image paths against first (a moved project).
    """
    path = Path(path)
    table, optics_df = _particle_table(read_star(path), path)
    n = len(table)
    stack_names, image_indices = _parse_image_names(table, path)
    image_paths = resolve_image_paths(stack_names, path.parent, root)
    # each step raises a ValueError naming the column it found bad
    du, dv, dang, phase = _ctf_columns(table, path)
    rotations, has_poses = _poses(table, path)
    optics, group = star_optics(table, optics_df, image_paths, path)
    shifts_a = _shifts_a(table, np.array([g.apix for g in optics])[group], path)
    half = np.full(n, -1, np.int8)
    if "rlnRandomSubset" in table.columns:
        half = half_set_from_relion(numeric_column(table, "rlnRandomSubset", path))
    return ParticleSet(
        rotations=rotations,
        shifts_a=shifts_a,
        defocus_u_a=du,
        defocus_v_a=dv,
        defocus_angle_deg=dang,
        phase_shift_deg=phase,
        optics_group=group,
        optics=optics,
        half_set=half,
        image_paths=image_paths,
        image_indices=image_indices,
        table=table,
        source=path,
        fmt="relion3.0" if optics_df is None else "relion3.1",
        has_poses=has_poses,
        optics_table=None if optics_df is None else optics_df.reset_index(drop=True),
    )


def _pick_particle_block(blocks: dict, path) -> tuple[str, pd.DataFrame]:
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in loops:
        return "particles", loops["particles"]
    for name, df in loops.items():
        if name != "optics" and "rlnImageName" in df.columns:
            return name, df
    names = ", ".join(f"data_{k}" for k in blocks) or "none"
    raise ValueError(
        f"{path}: not a particle STAR file: no data_particles block and no loop with an rlnImageName column "
        f"(blocks: {names})"
    )


def _particle_table(blocks: dict, path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The particle loop and the ``data_optics`` block (None before RELION 3.1), checked
    to be whole and of 2D images."""
    block_name, table = _pick_particle_block(blocks, path)
    table = table.reset_index(drop=True)
    optics_df = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    if len(table) == 0:
        raise ValueError(f"{path}: zero particles (data_{block_name} has no rows)")
    if "rlnImageName" not in table.columns:
        raise ValueError(f"{path}: missing column rlnImageName in data_{block_name}")
    # the parser pads a short last row with NaN: the mark of a file cut off mid-row
    missing = table.isna().to_numpy()
    if missing[-1].any() and not missing[:-1].any():
        raise ValueError(
            f"{path}: the last data row of data_{block_name} has only {int((~missing[-1]).sum())} of "
            f"{table.shape[1]} fields (a truncated file?)"
        )
    dims = None
    if optics_df is not None and "rlnImageDimensionality" in optics_df.columns:
        dims = pd.to_numeric(optics_df["rlnImageDimensionality"], errors="coerce")
    if (dims is not None and (dims == 3).any()) or "rlnTomoName" in table.columns:
        raise ValueError(
            f"{path}: sub-tomogram particles (rlnImageDimensionality 3 / rlnTomoName) are not supported; "
            "napari-flex3d needs 2D particle images"
        )
    return table, optics_df


def _parse_image_names(table: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray]:
    """``rlnImageName`` ``N@stack`` -> (stack names ``(n,)`` str, 0-based indices ``(n,)``)."""
    names = table["rlnImageName"]
    if names.isna().any():
        row = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise ValueError(f"{path}: empty rlnImageName at data row {row + 1}")
    names = names.astype(str)
    has_at = names.str.contains("@", regex=False)
    head = names.str.partition("@")
    idx_str = head[0].where(has_at, "1")
    stack = head[2].where(has_at, names)
    idx = pd.to_numeric(idx_str, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(idx) | (idx < 1) | (idx != np.round(idx))
    bad |= (stack.str.len() == 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: rlnImageName {names.iloc[row]!r} at data row {row + 1} is not 'N@stack' with N >= 1"
        )
    return stack.to_numpy(dtype=object), idx.astype(np.int64) - 1


def _ctf_columns(table: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Defocus U, V (Å), astigmatism angle and phase shift (degrees), each ``(n,)``."""
    n = len(table)
    du = numeric_column(table, "rlnDefocusU", path)
    dv = numeric_column(table, "rlnDefocusV", path) if "rlnDefocusV" in table.columns else du.copy()
    dang = numeric_column(table, "rlnDefocusAngle", path, allow_missing=True)
    phase = numeric_column(table, "rlnPhaseShift", path, allow_missing=True)
    return du, dv, np.zeros(n) if dang is None else dang, np.zeros(n) if phase is None else phase


def _poses(table: pd.DataFrame, path) -> tuple[np.ndarray, bool]:
    """Rotations ``(n, 3, 3)`` float64 (our ``A``) and whether the file has poses (identity if not)."""
    if all(c in table.columns for c in _POSE_COLUMNS):
        angles = [numeric_column(table, c, path) for c in _POSE_COLUMNS]
        return np.asarray(euler_to_matrix(*angles), dtype=np.float64), True
    return np.broadcast_to(np.eye(3), (len(table), 3, 3)).copy(), False


def _shifts_a(table: pd.DataFrame, apix_pp: np.ndarray, path) -> np.ndarray:
    """Origins ``(n, 2)`` in Å: ``rlnOriginX/YAngst``, else the pixel columns times ``apix_pp (n,)``, else 0."""
    if "rlnOriginXAngst" in table.columns or "rlnOriginYAngst" in table.columns:
        return np.stack([numeric_column(table, "rlnOriginXAngst", path), numeric_column(table, "rlnOriginYAngst", path)], 1)
    if "rlnOriginX" in table.columns or "rlnOriginY" in table.columns:
        shifts_px = np.stack([numeric_column(table, "rlnOriginX", path), numeric_column(table, "rlnOriginY", path)], 1)
        return shifts_px * apix_pp[:, None]
    return np.zeros((len(table), 2))


# ------------------------------------------------------------------------- write
def _extra_table(extra, n, where) -> dict[str, np.ndarray]:
    """``{name: (n,) or (n, k)}`` -> flat ``{name or name1..namek: (n,)}``."""
    out = {}
    for name, values in (extra or {}).items():
        values = np.asarray(values)
        if values.shape[0] != n or values.ndim > 2:
            raise ValueError(f"{where}: extra column {name} has shape {values.shape}, expected ({n},) or ({n}, k)")
        if values.ndim == 2:
            for j in range(values.shape[1]):
                out[f"{name}{j + 1}"] = values[:, j]
        else:
            out[name] = values
    return out


def write_star(ps: ParticleSet, path, extra_columns: dict | None = None) -> Path:
    """Write a RELION 3.1 STAR (``data_optics`` + ``data_particles``).

    Every column of a STAR input is kept; poses, origins (Å and, if present, px),
    defocus, phase shift, optics group, half set and image names are rewritten from
    the arrays. ``extra_columns``: ``{label: (n,) | (n, k)}`` (a 2D value becomes
    ``label1..labelk``, e.g. ``rlnFlex3dLatent`` -> ``rlnFlex3dLatent1..K``).
    """
    path = Path(path)
    n = len(ps)
    if n == 0:
        raise ValueError(f"{path}: refusing to write zero particles")
    keep_table = ps.fmt.startswith("relion") and ps.records is None
    table = ps.table.copy() if keep_table else pd.DataFrame(index=range(n))
    table = table.reset_index(drop=True)
    stack_names = output_stack_names(ps.image_paths, path.parent, ps.input_stack_names())
    table["rlnImageName"] = [f"{i + 1:06d}@{s}" for i, s in zip(ps.image_indices.tolist(), stack_names.tolist())]
    numbers = np.array([g.number for g in ps.optics])[ps.optics_group]
    table["rlnOpticsGroup"] = numbers.astype(np.int64)
    if ps.has_poses or any(c in table.columns for c in _POSE_COLUMNS):
        euler = matrix_to_euler(ps.rotations)  # (n, 3) rot, tilt, psi
        for j, col in enumerate(_POSE_COLUMNS):
            table[col] = euler[:, j]
    apix_pp = ps.apix_per_particle()
    table["rlnOriginXAngst"] = ps.shifts_a[:, 0]
    table["rlnOriginYAngst"] = ps.shifts_a[:, 1]
    if "rlnOriginX" in table.columns:
        table["rlnOriginX"] = ps.shifts_a[:, 0] / apix_pp
    if "rlnOriginY" in table.columns:
        table["rlnOriginY"] = ps.shifts_a[:, 1] / apix_pp
    table["rlnDefocusU"] = ps.defocus_u_a
    table["rlnDefocusV"] = ps.defocus_v_a
    table["rlnDefocusAngle"] = ps.defocus_angle_deg
    table["rlnPhaseShift"] = ps.phase_shift_deg
    if np.any(ps.half_set >= 0):
        table["rlnRandomSubset"] = half_set_to_relion(ps.half_set)
    for name, values in _extra_table(extra_columns, n, path).items():
        table[name.lstrip("_")] = values
    write_star_blocks(path, {"optics": _optics_block(ps), "particles": table})
    return path


def _optics_block(ps: ParticleSet) -> pd.DataFrame:
    """``data_optics`` of the groups in use: the input's row (every column kept) updated from the groups."""
    rows = []
    for i in sorted(set(ps.optics_group.tolist())):
        g = ps.optics[i]
        row = {}
        if ps.optics_table is not None and "rlnOpticsGroup" in ps.optics_table.columns:
            match = ps.optics_table[pd.to_numeric(ps.optics_table["rlnOpticsGroup"], errors="coerce") == g.number]
            if len(match):
                row.update(match.iloc[0].to_dict())
        row.update(
            rlnOpticsGroup=g.number,
            rlnOpticsGroupName=g.name,
            rlnVoltage=g.voltage_kv,
            rlnSphericalAberration=g.cs_mm,
            rlnAmplitudeContrast=g.amplitude_contrast,
            rlnImagePixelSize=g.apix,
            rlnImageDimensionality=2,
            rlnCtfDataAreCtfPremultiplied=int(g.ctf_premultiplied),
        )
        if g.box is not None:
            row["rlnImageSize"] = g.box
        rows.append(row)
    return pd.DataFrame(rows)
