"""cryoSPARC .cs files of testdata/formats: values from its README."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_flex3d.io.particles import read_particles, resolve_image_path
from io_fixtures import copy_formats, fmt  # noqa: F401 (pytest fixtures)

J24 = "cryodrgn/cryosparc_P12_J24_001_particles.cs"
R_ROW0 = np.array([[0.58163, 0.05683, -0.81147], [-0.37730, -0.86491, -0.33101], [-0.72066, 0.49870, -0.48162]])


def test_j24_poses_shifts_ctf(fmt):
    ps = read_particles(fmt / J24)
    assert len(ps) == 2019 and ps.fmt == "cryosparc" and ps.has_poses
    # docs/conventions.md: A = expm([pose]_x)^T; the README's R is expm([pose]_x)
    np.testing.assert_allclose(ps.rotations[0], R_ROW0.T, atol=2e-5)
    v_last = [0.5504799, 3.2572987, -1.5672901]
    np.testing.assert_allclose(ps.rotations[-1], Rotation.from_rotvec(v_last).as_matrix().T, atol=1e-6)
    np.testing.assert_allclose(ps.shifts_a[0], np.array([11.334375, -1.828125]) * 2.95, rtol=1e-6)
    np.testing.assert_allclose(ps.shifts_a[-1], np.array([-3.628125, 8.296875]) * 2.95, rtol=1e-6)
    np.testing.assert_allclose([ps.defocus_u_a[0], ps.defocus_v_a[0]], [45591.37, 45309.793], rtol=1e-7)
    assert ps.defocus_angle_deg[0] == pytest.approx(-78.131, abs=1e-3)
    assert ps.phase_shift_deg[0] == 0
    (g,) = ps.optics
    assert (g.voltage_kv, g.cs_mm, g.box) == (200, 2.0, 180)
    assert g.amplitude_contrast == pytest.approx(0.07) and g.apix == pytest.approx(2.95)
    assert g.inverted  # blob/sign -1
    assert (np.sum(ps.half_set == 0), np.sum(ps.half_set == 1)) == (1010, 1009)
    assert len(set(ps.image_paths)) == 50
    assert ps.image_indices.min() == 0 and ps.image_indices.max() == 124
    assert ps.image_paths[0].endswith("J19/extract/20150917_05196_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrc")
    assert ps.records.dtype.names[0] == "uid" and len(ps.records.dtype.names) == 34
    assert "alignments3D/pose/2" in ps.table.columns


def test_exported_strips_gt_and_has_no_poses(fmt):
    ps = read_particles(fmt / "cryodrgn" / "cryosparc_J2_particles_exported.cs")
    assert len(ps) == 22 and not ps.has_poses
    np.testing.assert_array_equal(ps.rotations, np.broadcast_to(np.eye(3), (22, 3, 3)))
    np.testing.assert_array_equal(ps.shifts_a, 0)
    assert not ps.image_paths[0].count(">")
    assert ps.image_paths[0] == str(fmt / "cryodrgn" / "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs")
    np.testing.assert_array_equal(ps.image_indices, np.arange(22))
    (g,) = ps.optics
    assert g.box == 300 and g.apix == pytest.approx(1.3450001) and g.voltage_kv == 300
    assert g.cs_mm == pytest.approx(2.7) and g.amplitude_contrast == pytest.approx(0.1)
    np.testing.assert_allclose([ps.defocus_u_a[0], ps.defocus_v_a[0]], [16412.178, 16236.26], rtol=1e-7)
    assert ps.defocus_angle_deg[0] == pytest.approx(np.rad2deg(0.86163914))
    assert np.all(ps.half_set == -1)


def test_empiar_star_and_cs_agree(fmt):
    star = read_particles(fmt / "cryodrgn" / "empiar_10076_7.star")
    cs = read_particles(fmt / "cryodrgn" / "empiar_10076_7.cs")
    assert len(star) == len(cs) == 7 and not cs.has_poses
    np.testing.assert_array_equal(star.image_indices, cs.image_indices)
    np.testing.assert_array_equal(star.image_paths, cs.image_paths)
    np.testing.assert_allclose(star.defocus_u_a, cs.defocus_u_a, rtol=1e-6)
    np.testing.assert_allclose(star.defocus_v_a, cs.defocus_v_a, rtol=1e-6)
    np.testing.assert_allclose(star.defocus_angle_deg, cs.defocus_angle_deg, atol=1e-5)  # rad -> deg
    assert cs.apix == pytest.approx(star.apix, rel=1e-6)
    for attr in ("voltage_kv", "cs_mm", "amplitude_contrast"):
        np.testing.assert_allclose(getattr(star, attr)(), getattr(cs, attr)(), rtol=1e-6)
    assert cs.optics[0].inverted and not star.optics[0].inverted
    assert cs.box == star.box == 320
    np.testing.assert_array_equal(star.images(np.arange(7)), cs.images(np.arange(7)))
    stack = star.images(slice(None))
    np.testing.assert_allclose([stack.min(), stack.max()], [-4.34950, 5.53454], atol=1e-5)


def test_passthrough_merged_by_uid(fmt, tmp_path):
    full = np.load(fmt / J24, allow_pickle=False)
    main_fields = ["uid", "alignments3D/pose", "alignments3D/shift", "alignments3D/psize_A", "alignments3D/split"]
    main = full[main_fields]
    main = np.array(main, dtype=[(n, full.dtype[n]) for n in main_fields])
    rest = [n for n in full.dtype.names if n not in main_fields[1:]]
    passthrough = np.array(full[rest], dtype=[(n, full.dtype[n]) for n in rest])[::-1]  # other row order
    with open(tmp_path / "J24_particles.cs", "wb") as fh:
        np.save(fh, main)
    with open(tmp_path / "J24_passthrough_particles.cs", "wb") as fh:
        np.save(fh, passthrough)
    with pytest.raises(ValueError, match="blob/path"):
        read_particles(tmp_path / "J24_particles.cs")
    merged = read_particles(tmp_path / "J24_particles.cs", passthrough=tmp_path / "J24_passthrough_particles.cs")
    ref = read_particles(fmt / J24)
    np.testing.assert_array_equal(merged.records["uid"], ref.records["uid"])
    np.testing.assert_allclose(merged.defocus_u_a, ref.defocus_u_a)
    np.testing.assert_allclose(merged.rotations, ref.rotations)
    np.testing.assert_array_equal(merged.image_indices, ref.image_indices)
    # a passthrough that lacks some uids is refused
    with open(tmp_path / "short_passthrough.cs", "wb") as fh:
        np.save(fh, passthrough[:10])
    with pytest.raises(ValueError, match="not in the passthrough"):
        read_particles(tmp_path / "J24_particles.cs", passthrough=tmp_path / "short_passthrough.cs")


def test_root_remaps_moved_project(copy_formats, tmp_path):
    # cs says "empiar_10076_7.mrc"; put the stack under a new project folder with extra components
    base = copy_formats("cryodrgn/empiar_10076_7.cs")
    recs = np.load(base / "cryodrgn/empiar_10076_7.cs", allow_pickle=False)
    new = recs.astype([(n, "S80" if n == "blob/path" else recs.dtype[n].base, recs.dtype[n].shape) for n in recs.dtype.names])
    new["blob/path"] = b">/old/cluster/P12/J3/imported/empiar_10076_7.mrc"
    with open(base / "moved.cs", "wb") as fh:
        np.save(fh, new)
    project = tmp_path / "newhome"
    (project / "J3" / "imported").mkdir(parents=True)
    ps = read_particles(base / "moved.cs")
    assert not any(ps.image_stacks().values())
    (project / "J3" / "imported" / "empiar_10076_7.mrc").write_bytes(b"")
    ps = read_particles(base / "moved.cs", root=project)
    assert ps.image_paths[0] == str(project / "J3" / "imported" / "empiar_10076_7.mrc")
    assert resolve_image_path("J3/imported/empiar_10076_7.mrc", tmp_path, project) == (ps.image_paths[0], True)
