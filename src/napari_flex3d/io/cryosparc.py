"""cryoSPARC ``.cs`` files: NumPy structured arrays (``np.load(allow_pickle=False)``).

Field names contain ``/`` (``blob/path``, ``ctf/df1_A``, ``alignments3D/pose``); string
fields are fixed-width bytes. Non-exported job outputs keep unchanged fields in a
separate ``*_passthrough_*.cs`` file whose rows match the main file's by ``uid``.

This module is the file format only (load, save, merge, check a field); what the fields
mean for particles is in ``io.cs_particles`` and ``io.optics``. Imports NumPy and pandas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import save_npy

__all__ = ["load_cs", "merge_passthrough", "records_to_frame", "save_cs", "merge_fields", "numeric_field"]


def load_cs(path) -> np.ndarray:
    """Load a ``.cs`` file as a 1D structured array; ValueError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such cryoSPARC .cs file")
    try:
        with open(path, "rb") as fh:
            records = np.load(fh, allow_pickle=False)
    except Exception as exc:  # np.load raises ValueError, OSError, EOFError, UnicodeError... on bad input
        raise ValueError(f"{path}: not a readable cryoSPARC .cs file ({type(exc).__name__}: {exc})") from None
    if not isinstance(records, np.ndarray) or records.dtype.names is None:
        raise ValueError(f"{path}: not a cryoSPARC .cs file (no named fields)")
    if records.ndim != 1:
        raise ValueError(f"{path}: a .cs file holds a 1D table, got shape {records.shape}")
    if any(records.dtype[name].hasobject for name in records.dtype.names):
        raise ValueError(f"{path}: object fields are not allowed in a .cs file")
    return records


def numeric_field(records: np.ndarray, name: str, path, *, shape=(), required=True, default=None):
    """Field ``name`` as a finite float64 ``(n, *shape)`` array.

    A missing field raises ValueError if ``required``, else gives None (``default`` None)
    or ``default`` everywhere. ValueError naming the file, field and row for a wrong
    dtype or shape, a NaN or an infinity.
    """
    if name not in records.dtype.names:
        if required:
            raise ValueError(f"{path}: missing field {name}")
        return None if default is None else np.full((len(records),) + shape, default, dtype=np.float64)
    values = records[name]
    if values.dtype.kind not in "iuf" or values.shape[1:] != shape:
        raise ValueError(f"{path}: field {name} has dtype {values.dtype} and shape {values.shape[1:]}, expected numbers of shape {shape}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values.reshape(len(records), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: field {name} has a NaN or infinite value at row {int(np.flatnonzero(bad)[0])}")
    return values


def merge_fields(base: np.ndarray, extra: dict[str, np.ndarray]) -> np.ndarray:
    """A copy of ``base`` with fields replaced or appended from ``extra`` ({name: (n, ...) array})."""
    n = len(base)
    descr = []
    for name in base.dtype.names:
        if name in extra:
            continue
        descr.append((name, base.dtype[name]))
    for name, values in extra.items():
        values = np.asarray(values)
        if values.shape[0] != n:
            raise ValueError(f"field {name}: {values.shape[0]} values for {n} rows")
        descr.append((name, values.dtype, values.shape[1:]) if values.ndim > 1 else (name, values.dtype))
    out = np.zeros(n, dtype=descr)
    for name in out.dtype.names:
        out[name] = extra[name] if name in extra else base[name]
    return out


def merge_passthrough(records: np.ndarray, passthrough: np.ndarray, path_main, path_pass) -> np.ndarray:
    """Add the passthrough file's fields to ``records`` matching rows by ``uid``.

    Fields present in both keep the main file's values.
    """
    for recs, p in ((records, path_main), (passthrough, path_pass)):
        if "uid" not in recs.dtype.names:
            raise ValueError(f"{p}: no uid field, cannot merge a passthrough file")
    order = np.argsort(passthrough["uid"], kind="stable")
    sorted_uid = passthrough["uid"][order]
    pos = np.searchsorted(sorted_uid, records["uid"])
    pos = np.clip(pos, 0, max(len(sorted_uid) - 1, 0))
    found = (len(sorted_uid) > 0) & (sorted_uid[pos] == records["uid"]) if len(sorted_uid) else np.zeros(len(records), bool)
    if not np.all(found):
        missing = records["uid"][~found]
        raise ValueError(
            f"{path_pass}: {len(missing)} uid(s) of {path_main} are not in the passthrough file (first: {int(missing[0])})"
        )
    rows = passthrough[order[pos]]
    extra = {name: rows[name] for name in passthrough.dtype.names if name not in records.dtype.names}
    return merge_fields(records, extra)


def records_to_frame(records: np.ndarray) -> pd.DataFrame:
    """A DataFrame view of the records: vector fields split as ``name/0``, ``name/1``...; bytes decoded."""
    columns = {}
    for name in records.dtype.names:
        values = records[name]
        if values.ndim > 1:
            flat = values.reshape(len(records), -1)
            for j in range(flat.shape[1]):
                columns[f"{name}/{j}"] = flat[:, j]
        elif values.dtype.kind == "S":
            columns[name] = np.char.decode(values, "utf-8", errors="replace").astype(object)
        else:
            columns[name] = values
    return pd.DataFrame(columns)


def save_cs(path, records: np.ndarray) -> None:
    """Write records as a ``.cs`` (``.npy`` format, no pickles), atomically, keeping the name."""
    save_npy(path, records)
