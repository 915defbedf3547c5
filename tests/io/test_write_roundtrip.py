"""Writers: STAR and .cs round trips, subsets, in-memory sets (the simulator's path)."""

from __future__ import annotations

import numpy as np
import pytest
import starfile

from napari_flex3d.io.particles import OpticsGroup, ParticleSet, read_particles, write_cs, write_star
from io_fixtures import copy_formats, fmt  # noqa: F401 (pytest fixtures)

STAR = "cryodrgn/relion31.star"
STACK = "cryodrgn/relion31.mrcs"


def assert_same_particles(a, b, images=True):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.rotations, b.rotations, atol=1e-6)
    np.testing.assert_allclose(a.shifts_a, b.shifts_a, atol=1e-5)
    for name in ("defocus_u_a", "defocus_v_a", "defocus_angle_deg", "phase_shift_deg"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(a.half_set, b.half_set)
    np.testing.assert_array_equal(a.image_indices, b.image_indices)
    for name in ("voltage_kv", "cs_mm", "amplitude_contrast", "apix_per_particle"):
        np.testing.assert_allclose(getattr(a, name)(), getattr(b, name)(), rtol=1e-6)
    if images:
        np.testing.assert_array_equal(a.images(slice(None)), b.images(slice(None)))


def test_write_star_round_trip_keeps_columns(copy_formats, tmp_path):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    out = base / "cryodrgn" / "out.star"
    latents = np.arange(10.0).reshape(5, 2)
    write_star(ps, out, extra_columns={"rlnFlex3dLatent": latents, "rlnFlex3dScore": np.ones(5)})
    back = read_particles(out)
    assert back.fmt == "relion3.1"
    assert_same_particles(ps, back)
    assert set(ps.table.columns) <= set(back.table.columns)
    for col in ("rlnImageOriginalName", "rlnCtfFigureOfMerit", "rlnLogLikeliContribution", "rlnGroupNumber"):
        assert back.table[col].tolist() == ps.table[col].tolist()
    np.testing.assert_array_equal(back.table[["rlnFlex3dLatent1", "rlnFlex3dLatent2"]].to_numpy(), latents)
    assert back.table["rlnImageName"][0] == "000001@relion31.mrcs"  # same folder: original name kept
    assert set(ps.optics_table.columns) <= set(back.optics_table.columns)
    assert back.optics_table["rlnMicrographOriginalPixelSize"][0] == 1.403
    # the file is plain RELION 3.1: starfile sees the two blocks
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles"]


def test_write_star_elsewhere_points_at_original_stack(copy_formats, tmp_path):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    (base / "elsewhere" / "deep").mkdir(parents=True)
    out = base / "elsewhere" / "deep" / "subset.star"
    write_star(ps.subset([3, 1]), out)
    back = read_particles(out)
    assert back.image_paths[0] == str(base / STACK)
    assert back.table["rlnImageName"][0] == f"000004@{base / STACK}"  # absolute: not reachable relatively
    np.testing.assert_array_equal(back.images([0, 1]), ps.images([3, 1]))


def test_modified_arrays_are_written(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR).subset(np.array([True, False, True, True, False]))
    assert len(ps) == 3 and ps.table["rlnImageName"].tolist() == ["000001@relion31.mrcs", "000003@relion31.mrcs", "000004@relion31.mrcs"]
    from scipy.spatial.transform import Rotation

    ps.rotations = Rotation.random(3, random_state=1).as_matrix()
    ps.shifts_a = np.array([[1.0, -2.0], [3.5, 0.25], [0.0, 0.0]])
    ps.defocus_u_a = ps.defocus_u_a + 100
    ps.half_set = np.array([0, 1, 1], np.int8)
    write_star(ps, base / "cryodrgn" / "mod.star")
    back = read_particles(base / "cryodrgn" / "mod.star")
    assert_same_particles(ps, back)
    assert back.table["rlnRandomSubset"].tolist() == [1, 2, 2]


def test_relion30_to_31(fmt, tmp_path):
    ps = read_particles(fmt / "relion" / "ref_it002_data.star")
    write_star(ps, tmp_path / "r31.star")
    back = read_particles(tmp_path / "r31.star")
    assert back.fmt == "relion3.1" and back.apix == pytest.approx(3.540002)
    assert_same_particles(ps, back, images=False)
    # px origins are kept and rewritten consistently with the Å ones
    np.testing.assert_allclose(back.table["rlnOriginX"], ps.table["rlnOriginX"], atol=1e-6)
    assert "rlnParticleSelectZScore" in back.table.columns


def test_write_cs_from_cs_keeps_uid_and_fields(fmt, tmp_path):
    ps = read_particles(fmt / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs")
    sub = ps.subset(np.arange(0, 2019, 10))
    write_cs(sub, tmp_path / "subset.cs", extra_fields={"flex3d/latent": np.zeros((len(sub), 3), np.float32)})
    recs = np.load(tmp_path / "subset.cs", allow_pickle=False)
    assert set(ps.records.dtype.names) < set(recs.dtype.names) and "flex3d/latent" in recs.dtype.names
    np.testing.assert_array_equal(recs["uid"], ps.records["uid"][::10])
    np.testing.assert_array_equal(recs["blob/path"], ps.records["blob/path"][::10])
    np.testing.assert_allclose(recs["alignments3D/pose"], ps.records["alignments3D/pose"][::10], atol=2e-6)
    np.testing.assert_allclose(recs["alignments3D/shift"], ps.records["alignments3D/shift"][::10], atol=1e-5)
    np.testing.assert_array_equal(recs["alignments3D/error"], ps.records["alignments3D/error"][::10])
    back = read_particles(tmp_path / "subset.cs")
    # paths are kept as in the original (project-relative), so compare everything but images
    assert_same_particles(sub, back, images=False)


def test_write_cs_from_star(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    write_cs(ps, base / "cryodrgn" / "from_star.cs")
    recs = np.load(base / "cryodrgn" / "from_star.cs", allow_pickle=False)
    for name in ("uid", "blob/path", "blob/idx", "blob/shape", "blob/psize_A", "ctf/df1_A", "ctf/accel_kv", "alignments3D/pose", "alignments3D/shift", "alignments3D/split"):
        assert name in recs.dtype.names
    assert len(set(recs["uid"].tolist())) == 5
    assert recs["blob/path"][0] == b"relion31.mrcs" and recs["blob/idx"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(recs["blob/shape"][0], [256, 256])
    back = read_particles(base / "cryodrgn" / "from_star.cs")
    assert_same_particles(ps, back)
    # and from the .cs back to STAR
    write_star(back, base / "cryodrgn" / "again.star")
    assert_same_particles(ps, read_particles(base / "cryodrgn" / "again.star"))


def test_from_arrays_simulator_path(tmp_path):
    from napari_flex3d.io.mrc import write_map

    rng = np.random.default_rng(3)
    n, box, apix = 6, 16, 2.5
    stack = rng.normal(size=(n, box, box)).astype(np.float32)
    write_map(tmp_path / "particles.mrcs", stack, apix=apix)
    from scipy.spatial.transform import Rotation

    optics = OpticsGroup("opticsGroup1", 1, 300.0, 2.7, 0.1, apix, box)
    ps = ParticleSet.from_arrays(
        image_paths=str(tmp_path / "particles.mrcs"),
        image_indices=np.arange(n),
        defocus_u_a=rng.uniform(8000, 20000, n),
        defocus_v_a=rng.uniform(8000, 20000, n),
        defocus_angle_deg=rng.uniform(-180, 180, n),
        rotations=Rotation.random(n, random_state=0).as_matrix(),
        shifts_a=rng.normal(size=(n, 2)),
        optics=optics,
        half_set=np.arange(n) % 2,
    )
    assert ps.has_poses and ps.apix == apix and ps.box == box
    np.testing.assert_array_equal(ps.images([5, 0]), stack[[5, 0]])
    write_star(ps, tmp_path / "particles.star")
    text = (tmp_path / "particles.star").read_text()
    assert "000001@particles.mrcs" in text  # relative to the STAR's folder
    back = read_particles(tmp_path / "particles.star")
    assert_same_particles(ps, back)
    assert back.table["rlnRandomSubset"].tolist() == [1, 2, 1, 2, 1, 2]
    with pytest.raises(ValueError, match="shifts_a has shape"):
        ParticleSet.from_arrays(image_paths="x.mrcs", image_indices=[0, 1], defocus_u_a=[1, 2], optics=optics, shifts_a=np.zeros((3, 2)))


def test_stack_cache_is_bounded_and_shared(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    sub = ps.subset([0, 1])
    sub.images(0)
    assert len(ps._cache) == 1  # a subset shares its parent's open stacks
    ps.images(slice(None))
    assert len(ps._cache) == 1


def test_pickle_does_not_copy_mapped_stacks(copy_formats):
    import pickle

    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    first = ps.images(slice(None))
    blob = pickle.dumps(ps)
    assert len(blob) < 200_000  # the 1.3 MB stack stays on disk
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.images(slice(None)), first)


def test_star_writer_quotes_strings(copy_formats):
    base = copy_formats(STAR, STACK)
    ps = read_particles(base / STAR)
    ps.table["rlnComment"] = ["two words", "", "plain", "tab\tinside", "x"]
    write_star(ps, base / "cryodrgn" / "quoted.star")
    blocks = starfile.read(base / "cryodrgn" / "quoted.star", always_dict=True)  # independent reader
    assert blocks["particles"]["rlnComment"].tolist()[0] == "two words"
    assert blocks["particles"]["rlnComment"].tolist()[2:] == ["plain", "tab\tinside", "x"]
    assert len(blocks["particles"]) == 5 and blocks["particles"]["rlnDefocusU"].tolist() == ps.defocus_u_a.tolist()
