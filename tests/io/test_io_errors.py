"""Damaged copies of testdata/formats: every fault is a ValueError naming the file and the column/value."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.io.particles import read_particles
from io_fixtures import copy_formats, fmt  # noqa: F401 (pytest fixtures)

STAR = "cryodrgn/relion31.star"
STACK = "cryodrgn/relion31.mrcs"
CS = "cryodrgn/empiar_10076_7.cs"


def _edit_star(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


@pytest.mark.parametrize("label", ["_rlnImageName", "_rlnDefocusU"])
def test_missing_column(copy_formats, label):
    base = copy_formats(STAR)
    path = base / STAR
    _edit_star(path, label + " ", "_rlnSomethingElse ")
    with pytest.raises(ValueError, match=f"relion31.star.*{label[1:]}"):
        read_particles(path)


def test_missing_voltage_in_optics(copy_formats):
    path = copy_formats(STAR) / STAR
    _edit_star(path, "_rlnVoltage", "_rlnVoltageX")
    with pytest.raises(ValueError, match="relion31.star: missing column rlnVoltage"):
        read_particles(path)


def test_nan_in_numeric_column(copy_formats):
    path = copy_formats(STAR) / STAR
    _edit_star(path, "13108.082418", "nan")
    with pytest.raises(ValueError, match="relion31.star: column rlnDefocusU .*data row 1"):
        read_particles(path)


def test_text_in_numeric_column(copy_formats):
    path = copy_formats(STAR) / STAR
    _edit_star(path, "-102.30296", "abc")
    with pytest.raises(ValueError, match="rlnAngleRot.*'abc'"):
        read_particles(path)


def test_bad_image_name(copy_formats):
    path = copy_formats(STAR) / STAR
    _edit_star(path, "000001@relion31.mrcs", "0@relion31.mrcs")
    with pytest.raises(ValueError, match="rlnImageName '0@relion31.mrcs' at data row 1"):
        read_particles(path)


def test_unknown_optics_group(copy_formats):
    path = copy_formats(STAR) / STAR
    text = path.read_text().splitlines()
    # rlnOpticsGroup is the 23rd particle column; change it on the first data row
    row = next(i for i, line in enumerate(text) if "000001@relion31.mrcs" in line)
    fields = text[row].split()
    fields[22] = "7"
    text[row] = " ".join(fields)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match="rlnOpticsGroup 7 is not in the data_optics block"):
        read_particles(path)


@pytest.mark.parametrize("old,new,label", [
    ("_rlnOpticsGroupName #2", "_rlnOpticsGroup #2", "rlnOpticsGroup"),
    ("_rlnCoordinateX #1", "_rlnImageName #1", "rlnImageName"),
])
def test_duplicate_label(copy_formats, old, new, label):
    path = copy_formats(STAR) / STAR
    _edit_star(path, old, new)
    with pytest.raises(ValueError, match=f"relion31.star: data_.* has the label {label} more than once"):
        read_particles(path)


def test_truncated_star(copy_formats):
    path = copy_formats(STAR) / STAR
    raw = path.read_bytes()
    path.write_bytes(raw[:3000])  # ends in the middle of a data row
    with pytest.raises(ValueError, match="relion31.star: the last data row of data_particles has only 18 of 26 fields"):
        read_particles(path)
    path.write_bytes(raw[:1500])  # ends in the middle of the labels
    with pytest.raises(ValueError, match="relion31.star: .*wrong number of fields"):
        read_particles(path)


def test_zero_particles(copy_formats):
    path = copy_formats(STAR) / STAR
    lines = path.read_text().splitlines()
    kept = [line for line in lines if "@relion31.mrcs" not in line]
    path.write_text("\n".join(kept) + "\n")
    with pytest.raises(ValueError, match="relion31.star: zero particles"):
        read_particles(path)


def test_missing_stack_and_index_past_end(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    assert ps.images([0, 4]).shape == (2, 256, 256)
    # index past the end: particle 2 says image 9 of a 5-image stack
    _edit_star(base / STAR, "000002@relion31.mrcs", "000009@relion31.mrcs")
    ps = read_particles(base / STAR)  # not an error at read time
    ps.images(0)
    with pytest.raises(ValueError, match=r"relion31.mrcs: image 9 \(1-based\) is past the end of the stack.*5 image"):
        ps.images([0, 1])
    # a missing stack is named, at images() time only
    (base / STACK).unlink()
    ps = read_particles(base / STAR)
    assert ps.image_stacks() == {str(base / STACK): False}
    with pytest.raises(ValueError, match="relion31.mrcs: particle image stack not found"):
        ps.images(3)
    with pytest.raises(ValueError, match="out of range"):
        ps.images(5)


def test_truncated_stack(copy_formats):
    base = copy_formats(STAR, STACK)
    raw = (base / STACK).read_bytes()
    (base / STACK).write_bytes(raw[: len(raw) // 2])
    ps = read_particles(base / STAR)
    with pytest.raises(ValueError, match="relion31.mrcs: truncated MRC file"):
        ps.images(0)


def test_truncated_cs(copy_formats):
    path = copy_formats(CS) / CS
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match="empiar_10076_7.cs: not a readable cryoSPARC .cs file"):
        read_particles(path)
    path.write_bytes(raw[:50])
    with pytest.raises(ValueError, match="empiar_10076_7.cs"):
        read_particles(path)


def test_cs_nan_and_missing_field(copy_formats):
    path = copy_formats(CS) / CS
    recs = np.load(path, allow_pickle=False)
    recs["ctf/df1_A"][3] = np.nan
    with open(path, "wb") as fh:
        np.save(fh, recs)
    with pytest.raises(ValueError, match="empiar_10076_7.cs: field ctf/df1_A has a NaN or infinite value at row 3"):
        read_particles(path)
    names = [n for n in recs.dtype.names if n != "ctf/accel_kv"]
    with open(path, "wb") as fh:
        np.save(fh, np.array(recs[names], dtype=[(n, recs.dtype[n]) for n in names]))
    with pytest.raises(ValueError, match="missing field ctf/accel_kv"):
        read_particles(path)


def test_cs_pickle_refused(tmp_path):
    path = tmp_path / "evil.cs"
    with open(path, "wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="evil.cs: not a readable cryoSPARC .cs file"):
        read_particles(path)


def test_unknown_suffix_and_absent(tmp_path, fmt):
    with pytest.raises(ValueError, match="unknown particle file suffix '.mrcs'"):
        read_particles(fmt / STACK)
    with pytest.raises(FileNotFoundError):
        read_particles(tmp_path / "absent.star")
    with pytest.raises(ValueError, match="passthrough"):
        read_particles(fmt / STAR, passthrough=fmt / CS)


def test_box_disagrees_with_stack(copy_formats):
    base = copy_formats(STAR, STACK)
    _edit_star(base / STAR, "          256            2", "          128            2")
    ps = read_particles(base / STAR)
    assert ps.box == 128
    with pytest.raises(ValueError, match="relion31.mrcs: the stack holds 256 x 256 images but the particle metadata says box"):
        ps.images(0)
