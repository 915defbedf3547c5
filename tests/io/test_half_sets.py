"""Half sets: one in-memory code (0 = A, 1 = B, -1 = unknown) and its converters at the boundary."""

from __future__ import annotations

import numpy as np
import pytest

from napari_flex3d.io.half_sets import (
    check_half_set,
    half_set_code,
    half_set_from_cryosparc,
    half_set_from_relion,
    half_set_name,
    half_set_rows,
    half_set_to_cryosparc,
    half_set_to_relion,
)
from napari_flex3d.io.particles import OpticsGroup, ParticleSet, read_particles, write_cs, write_star
from io_fixtures import fmt  # noqa: F401 (pytest fixture)

J24 = "cryodrgn/cryosparc_P12_J24_001_particles.cs"


def test_converters_round_trip():
    subset = np.array([1, 2, 2, 1, 0])  # RELION: 0 (or absent) = unknown
    half = half_set_from_relion(subset)
    assert half.dtype == np.int8 and half.tolist() == [0, 1, 1, 0, -1]
    assert half_set_to_relion(half).tolist() == subset.tolist()
    split = half_set_to_cryosparc(half[:4])
    assert split.dtype == np.uint32 and split.tolist() == [0, 1, 1, 0]
    assert half_set_from_cryosparc(split).tolist() == half[:4].tolist()
    assert half_set_to_relion(half_set_from_cryosparc(split)).tolist() == subset[:4].tolist()
    assert half_set_to_cryosparc([-1]).tolist() == [0]  # cryoSPARC has no "unknown": written as split 0
    assert [half_set_code(n) for n in ("A", "B")] == [0, 1]
    assert [half_set_name(c) for c in (0, 1, -1)] == ["A", "B", "unknown"]
    with pytest.raises(ValueError, match="'A' or 'B'"):
        half_set_code("1")
    with pytest.raises(ValueError, match="half_set holds 2"):
        check_half_set([0, 2], 2, "here")
    with pytest.raises(ValueError, match="half_set has shape"):
        check_half_set([0, 1, 1], 2, "here")


def _in_memory(half) -> ParticleSet:
    n = len(half)
    optics = OpticsGroup("opticsGroup1", 1, 300.0, 2.7, 0.1, 2.0, 16)
    return ParticleSet.from_arrays(
        image_paths="particles.mrcs", image_indices=np.arange(n), defocus_u_a=np.full(n, 1e4),
        optics=optics, rotations=np.broadcast_to(np.eye(3), (n, 3, 3)), half_set=half,
    )


def test_star_and_cs_files_round_trip(tmp_path):
    ps = _in_memory([0, 1, -1, 1])
    write_star(ps, tmp_path / "p.star")
    back = read_particles(tmp_path / "p.star")
    assert back.table["rlnRandomSubset"].tolist() == [1, 2, 0, 2]
    assert back.half_set.dtype == np.int8 and back.half_set.tolist() == [0, 1, -1, 1]
    complete = _in_memory([0, 1, 1, 0])
    write_cs(complete, tmp_path / "p.cs")
    assert np.load(tmp_path / "p.cs")["alignments3D/split"].tolist() == [0, 1, 1, 0]
    assert read_particles(tmp_path / "p.cs").half_set.tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match="from_arrays: half_set holds 2"):
        _in_memory([1, 2])


def test_cs_split_to_star_subset(fmt, tmp_path):
    ps = read_particles(fmt / J24)
    split = np.load(fmt / J24)["alignments3D/split"]
    assert ps.half_set.tolist() == split.tolist()
    write_star(ps, tmp_path / "j24.star")
    star = read_particles(tmp_path / "j24.star")
    assert star.table["rlnRandomSubset"].tolist() == (split + 1).tolist()
    np.testing.assert_array_equal(star.half_set, ps.half_set)
    np.testing.assert_array_equal(half_set_rows(star, "B"), np.flatnonzero(split == 1))
