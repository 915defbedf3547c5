"""Fuzzing the STAR and .cs readers: bad input gives ValueError, never another exception."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_flex3d.io.info import describe

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_ok_or_valueerror(path):
    """Read (through ``describe``, which also summarises) and accept only success or ValueError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            summary = describe(path)
        except ValueError as exc:
            assert path.name in str(exc) or str(path) in str(exc), str(exc)
            return None
    assert summary["n_particles"] > 0
    return summary


@pytest.fixture(scope="module")
def star_text(formats_dir):
    return (formats_dir / "cryodrgn" / "relion31.star").read_text()


@pytest.fixture(scope="module")
def cs_records(formats_dir):
    return np.load(formats_dir / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs", allow_pickle=False)[:20]


@FUZZ
@given(data=st.binary(max_size=2000))
def test_star_random_bytes(tmp_path, data):
    path = tmp_path / "random.star"
    path.write_bytes(data)
    _read_ok_or_valueerror(path)


TOKENS = ["nan", "inf", "", "@", "0@x.mrcs", "-1", "1e400", "abc", "data_", "loop_", "_rlnImageName", '"', "#", "\t", "data_optics", "_rlnOpticsGroup", "_rlnDefocusU", "_rlnAngleRot"]


@FUZZ
@given(
    cut=st.floats(0, 1),
    edits=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(TOKENS)), max_size=6),
    drop=st.lists(st.floats(0, 1), max_size=4),
)
def test_star_garbled_table(tmp_path, star_text, cut, edits, drop):
    lines = star_text.splitlines()
    for f in drop:
        if lines:
            lines.pop(int(f * (len(lines) - 1)))
    tokens = "\n".join(lines).split(" ")
    for f, tok in edits:
        tokens[int(f * (len(tokens) - 1))] = tok
    text = " ".join(tokens)
    text = text[: max(1, int(cut * len(text)))] if cut < 0.95 else text
    path = tmp_path / "garbled.star"
    path.write_text(text)
    _read_ok_or_valueerror(path)


@FUZZ
@given(data=st.binary(max_size=3000), keep_magic=st.booleans())
def test_cs_random_bytes(tmp_path, cs_records, data, keep_magic):
    buf = io.BytesIO()
    np.save(buf, cs_records)
    raw = buf.getvalue()
    if keep_magic:  # a real npy header followed by garbage / truncated data
        data = raw[: 128 + len(data) % 512] + data
    path = tmp_path / "random.cs"
    path.write_bytes(data)
    _read_ok_or_valueerror(path)


NUMERIC = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, 3.0])


@FUZZ
@given(
    drop=st.sets(st.integers(0, 33), max_size=6),
    row=st.integers(0, 19),
    field=st.integers(0, 33),
    value=NUMERIC,
    path_value=st.sampled_from([b"", b">", b"x.mrc", b"\xff\xfe", b">J1/a.mrcs"]),
)
def test_cs_garbled_records(tmp_path, cs_records, drop, row, field, value, path_value):
    recs = cs_records.copy()
    name = recs.dtype.names[field]
    if recs.dtype[name].kind == "f":
        recs[name][row] = value
    elif name == "blob/path":
        recs[name][row] = path_value
    keep = [n for i, n in enumerate(recs.dtype.names) if i not in drop]
    recs = np.array(recs[keep], dtype=[(n, recs.dtype[n]) for n in keep])
    path = tmp_path / "garbled.cs"
    with open(path, "wb") as fh:
        np.save(fh, recs)
    _read_ok_or_valueerror(path)
