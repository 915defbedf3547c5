"""STAR files: a thin boundary over the ``starfile`` library.

``starfile`` (0.5) parses every odd file in ``testdata/formats`` correctly (labels with
and without ``#N``, tab/space mixes, blank lines, missing final newline, blocks in any
order, one-row loops, quoted cells). What it does not do is fail cleanly: on garbage
it raises whatever pandas or its tokenizer raises. ``read_star`` turns any parser
failure into a ``ValueError`` naming the file.

This module is the file format only (blocks of tables); what the columns mean for
particles is in ``io.star_particles`` and ``io.optics``. Imports NumPy, pandas, starfile.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_text

__all__ = ["read_star", "write_star_blocks", "numeric_column"]


def read_star(path) -> dict[str, pd.DataFrame | dict]:
    """All data blocks of a STAR file: ``{name: DataFrame (loop) | dict (key/value)}``.

    Block names lose their ``data_`` prefix (``data_`` alone gives ``""``); labels lose
    their leading underscore. Raises FileNotFoundError if absent, ValueError if unparsable.
    """
    import starfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such STAR file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        head.decode("utf-8")  # binary garbage is not a STAR file
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a STAR file (not UTF-8 text)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=[])
    except Exception as exc:  # the parser's own errors (pandas, tokenizer, decoding) are opaque
        text = str(exc)
        hint = ""
        if "Length mismatch" in text or "Expected" in text and "fields" in text:
            hint = "; a data row has the wrong number of fields (a truncated or damaged file?)"
        elif "EOF inside string" in text:
            hint = "; an unclosed quote"
        raise ValueError(f"{path}: not a readable STAR file ({type(exc).__name__}: {text}{hint})") from None
    if not isinstance(blocks, dict) or not blocks:
        raise ValueError(f"{path}: no data blocks found (not a STAR file?)")
    out: dict[str, pd.DataFrame | dict] = {}
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            block = block.copy()
            block.columns = [str(c) for c in block.columns]
            dup = block.columns[block.columns.duplicated()]
            if len(dup):
                raise ValueError(f"{path}: data_{name} has the label {dup[0]} more than once")
        out[str(name)] = block
    return out


def numeric_column(table: pd.DataFrame, column: str, path, *, dtype=np.float64, allow_missing=False):
    """``table[column]`` as a finite numpy array, or a ValueError naming file, column and row."""
    if column not in table.columns:
        if allow_missing:
            return None
        raise ValueError(f"{path}: missing column {column}")
    raw = table[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: column {column} has a non-numeric, NaN or infinite value {raw.iloc[row]!r} "
            f"at data row {row + 1} ({int(bad.sum())} bad value(s) in all)"
        )
    if np.issubdtype(np.dtype(dtype), np.integer):
        if not np.all(values == np.round(values)):
            row = int(np.flatnonzero(values != np.round(values))[0])
            raise ValueError(f"{path}: column {column} must hold integers, got {raw.iloc[row]!r} at data row {row + 1}")
    return values.astype(dtype)


def _column_format(values: pd.Series) -> tuple[str, list]:
    """One column as a %-format spec and a list of Python values (strings quoted when needed)."""
    if pd.api.types.is_bool_dtype(values):
        return "%d", values.astype(np.int64).tolist()
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return "%d", values.to_numpy(dtype=np.int64).tolist()
    if pd.api.types.is_float_dtype(values):
        return "%.12g", values.to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    text = values.astype(object).where(values.notna(), "<NA>").astype(str)
    needs_quote = (text.str.len() == 0) | (text.str.contains(r"\s", regex=True) & ~text.str.startswith('"'))
    text = text.where(~needs_quote, '"' + text + '"')
    return "%s", text.tolist()


def write_star_blocks(path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write loop blocks in the given order with a RELION 3.1 version comment (atomically).

    Our own writer: ``starfile.write`` formats every value separately and takes about a
    minute for 200k particles here; one %-format per row is about 8x faster.
    """
    path = Path(path)
    parts = ["", "# version 30001", ""]
    for name, table in blocks.items():
        parts += [f"data_{name}", "", "loop_"]
        parts += [f"_{col} #{i + 1}" for i, col in enumerate(table.columns)]
        if len(table.columns):
            specs, columns = zip(*(_column_format(table[col]) for col in table.columns))
            row_format = " ".join(specs)
            parts += [row_format % row for row in zip(*columns)]
        parts.append("")
    write_text(path, "\n".join(parts) + "\n")
