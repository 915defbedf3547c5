"""RELION STAR files of testdata/formats: values from its README, oracles from scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_flex3d.io.particles import read_particles
from io_fixtures import fmt  # noqa: F401 (pytest fixtures)


def relion_a(rot, tilt, psi):
    """Independent oracle for RELION's A: the transpose of scipy's intrinsic ZYZ rotation."""
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


def check_first(ps, euler=None, origin_a=None, origin_px=None, dfu=None, dfv=None, dfang=None):
    if euler is not None:
        np.testing.assert_allclose(ps.rotations[0], relion_a(*euler), atol=1e-9)
    if origin_a is not None:
        np.testing.assert_allclose(ps.shifts_a[0], origin_a, atol=2e-5)
    if origin_px is not None:
        np.testing.assert_allclose(ps.shifts_a[0] / ps.optics[ps.optics_group[0]].apix, origin_px, atol=2e-5)
    if dfu is not None:
        np.testing.assert_allclose([ps.defocus_u_a[0], ps.defocus_v_a[0], ps.defocus_angle_deg[0]], [dfu, dfv, dfang])


@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])
def test_relion31(fmt, name):
    ps = read_particles(fmt / "cryodrgn" / name)
    assert len(ps) == 5 and ps.fmt == "relion3.1" and ps.has_poses
    (g,) = ps.optics
    assert (g.apix, g.box, g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (2.806, 256, 300.0, 0.01, 0.1)
    assert ps.apix == 2.806 and ps.box == 256
    assert ps.image_paths[0] == str(fmt / "cryodrgn" / "relion31.mrcs") and ps.image_indices[0] == 0
    check_first(ps, (-102.30296, 82.318041, 124.706463), (0.019324, -0.64686), (0.0068867, -0.2305274),
                13108.082418, 12845.582418, -160.39)
    # RELION 3.1 origins are in Å: the px value is Å / apix
    assert ps.table["rlnImageName"][0] == "000001@relion31.mrcs"
    assert set(ps.half_set.tolist()) <= {0, 1}


def test_relion31_images(fmt):
    ps = read_particles(fmt / "cryodrgn" / "relion31.star")
    img = ps.images(0)
    assert img.shape == (1, 256, 256) and img.dtype == np.float32
    np.testing.assert_allclose([img[0, 0, 0], img[0, 0, 1], img[0, 1, 0]], [0.285425, 0.929903, -0.668950], atol=1e-6)
    np.testing.assert_allclose([img.mean(), img.std()], [-0.0177178, 0.993506], atol=1e-5)
    allimg = ps.images(slice(None))
    np.testing.assert_allclose([allimg.min(), allimg.max()], [-4.38332, 4.40074], atol=1e-5)
    # reversed order and repeats come back in the asked order
    np.testing.assert_array_equal(ps.images([4, 0, 4])[1], img[0])
    np.testing.assert_array_equal(ps.images([4, 0, 4])[0], allimg[4])


def test_six_optics_groups(fmt):
    ps = read_particles(fmt / "cryodrgn" / "relion31.6opticsgroups.star")
    assert len(ps) == 139
    numbers = np.array([g.number for g in ps.optics])[ps.optics_group]
    counts = {k: int(np.sum(numbers == k)) for k in range(1, 7)}
    assert counts == {1: 48, 2: 29, 3: 5, 4: 7, 5: 26, 6: 24}
    by_number = {g.number: g for g in ps.optics}
    assert [by_number[k].apix for k in range(1, 7)] == [1.25, 1.24, 1.25, 1.25, 1.24, 1.25]
    assert by_number[4].cs_mm == 2.6 and all(by_number[k].cs_mm == 2.7 for k in (1, 2, 3, 5, 6))
    assert by_number[1].name == "opticsGroup5"
    assert all(g.box == 196 and g.voltage_kv == 200 and g.amplitude_contrast == 0.1 for g in ps.optics)
    assert numbers[0] == 6 and ps.image_indices[0] == 2
    assert ps.image_paths[0].endswith("Polish/job520/Micrographs/0003_shiny.mrcs")
    check_first(ps, (-128.10516, 37.06892, -82.17809), (13.284554, -3.21701), (10.62764, -2.57361),
                10352.805929, 8905.919375, 60.88937)
    with pytest.raises(ValueError, match="different pixel sizes"):
        ps.apix
    # a subset from one optics group has one pixel size
    assert ps.subset(ps.optics_group == ps.optics_group[0]).apix == 1.25
    assert len(ps.image_stacks()) == 139


def test_relion5(fmt):
    ps = read_particles(fmt / "cryodrgn" / "relion5.star")
    assert len(ps) == 17
    stacks = [p.rsplit("/", 1)[-1] for p in ps.image_paths]
    assert stacks.count("toy_images_a.mrcs") == 11 and stacks.count("toy_images_b.mrcs") == 6
    (g,) = ps.optics
    assert (g.apix, g.box, g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (0.89, 448, 100.0, 1.6, 0.1)
    assert ps.optics_table["rlnMagMat00"][0] == pytest.approx(1.001833)
    assert ps.image_indices[0] == 0
    check_first(ps, (111.508618, 36.742536, 141.158035), (-3.12578, -1.41031), None, 11949.06133, 11800.493288, 49.059993)
    # the stacks are not in the folder: reading works, images() names the file
    assert not any(ps.image_stacks().values())
    with pytest.raises(ValueError, match="toy_images_a.mrcs.*not found"):
        ps.images(0)


def test_relion30_pixels_and_default_ac(fmt):
    path = fmt / "cryodrgn" / "FinalRefinement-OriginalParticles-PfCRT.star"
    with pytest.warns(UserWarning, match="rlnAmplitudeContrast"):
        ps = read_particles(path)
    assert ps.fmt == "relion3.0" and len(ps) == 5
    (g,) = ps.optics
    assert g.apix == pytest.approx(1.035) and g.voltage_kv == 300 and g.cs_mm == 0.001 and g.amplitude_contrast == 0.1
    assert g.box is None  # no rlnImageSize and the stack is absent
    with pytest.raises(ValueError, match="box size unknown"):
        ps.box
    check_first(ps, (16.09353, 86.352776, 98.22569), None, (-0.14063, -0.04688), 15686.0, 17521.4, 87.62907)
    np.testing.assert_allclose(ps.shifts_a[0], np.array([-0.14063, -0.04688]) * 1.035)


def test_empiar_star(fmt):
    ps = read_particles(fmt / "cryodrgn" / "empiar_10076_7.star")
    assert len(ps) == 7 and not ps.has_poses and ps.fmt == "relion3.0"
    np.testing.assert_array_equal(ps.rotations, np.broadcast_to(np.eye(3), (7, 3, 3)))
    assert ps.apix == pytest.approx(5e4 / 38168) and ps.apix == pytest.approx(1.3099979, abs=1e-6)
    g = ps.optics[0]
    assert (g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (300, 2.7, 0.07)
    assert g.box == 320  # from the stack header, which exists
    np.testing.assert_array_equal(ps.image_indices, np.arange(7))
    check_first(ps, None, None, None, 15301.1, 14916.4, 5.28)
    img = ps.images(0)[0]
    np.testing.assert_allclose([img[0, 0], img[0, 1], img.mean(), img.std()], [0.682213, 1.598379, -0.00268044, 1.00446], atol=1e-5)


def test_ref_it002(fmt):
    ps = read_particles(fmt / "relion" / "ref_it002_data.star")
    assert len(ps) == 9 and ps.fmt == "relion3.0"
    assert ps.apix == pytest.approx(3.540002, abs=1e-6)
    g = ps.optics[0]
    assert (g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (300, 2.0, 0.1)
    assert ps.image_indices[0] == 8
    assert ps.image_paths[0].endswith("Particles/Micrographs/Falcon_2012_06_12-14_33_35_0_particles_autopick.mrcs")
    check_first(ps, (-141.700901, 92.903462, 174.882300), None, (0.809384, -0.190616), 33863.558594, 34295.921875, 36.07)
    assert "rlnParticleSelectZScore" in ps.table.columns


@pytest.mark.parametrize("name", ["relion_proj_batch.star", "relion_proj_batch_pfac2.star", "pyem.star"])
def test_both_origins_prefers_angst(fmt, name):
    ps = read_particles(fmt / "simplecryoem" / name)
    assert len(ps) == 24
    (g,) = ps.optics
    assert (g.apix, g.box, g.voltage_kv, g.cs_mm, g.amplitude_contrast) == (3.54, 64, 200, 1.4, 0.1)
    # the Å columns are used as they are (not px * apix, which differs by ~5e-6 Å)
    np.testing.assert_array_equal(ps.shifts_a[:, 0], ps.table["rlnOriginXAngst"].to_numpy())
    np.testing.assert_allclose(ps.shifts_a / 3.54, ps.table[["rlnOriginX", "rlnOriginY"]].to_numpy(), atol=1e-5)
    check_first(ps, (142.625517, 37.065672, 85.339883), (-11.6962, -4.6162), (-3.30401, -1.30401),
                10863.991211, 10575.543945, 78.297462)


def test_relion_proj_batch_images(fmt):
    ps = read_particles(fmt / "simplecryoem" / "relion_proj_batch.star")
    imgs = ps.images(np.arange(24))
    assert imgs.shape == (24, 64, 64)
    np.testing.assert_allclose([imgs[0].mean(), imgs[0].std(), imgs[0, 0, 0]], [3.0967e-5, 0.0097104, 0.00597805], rtol=1e-3)
    np.testing.assert_allclose([imgs.min(), imgs.max()], [-0.053975, 0.083099], atol=1e-6)


def test_pyem_onerow(fmt):
    ps = read_particles(fmt / "simplecryoem" / "pyem_onerow.star")
    assert len(ps) == 1 and ps.apix == 3.54 and ps.box == 64
    check_first(ps, (142.625517, 37.065672, 85.339883), (-11.6962, -4.6162), (-3.304011, -1.304011))
    assert ps.image_paths[0].endswith("pyem.mrc") and "level_0" in ps.table.columns


def test_toy_projections_no_poses(fmt):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ps = read_particles(fmt / "cryodrgn" / "toy_projections_13.star")
    assert any("rlnSphericalAberration disagrees" in str(w.message) for w in caught)
    assert len(ps) == 13 and not ps.has_poses
    (g,) = ps.optics
    assert (g.apix, g.box, g.voltage_kv, g.amplitude_contrast, g.cs_mm) == (1.035, 300, 300, 0.1, 0.01)
    assert ps.image_indices[0] == 92 and ps.image_paths[0].endswith("toy_projections.mrcs")
    assert np.all(ps.defocus_u_a == 0) and np.all(ps.defocus_v_a == 0) and np.all(ps.phase_shift_deg == 90)
    assert "dummyVariable" in ps.table.columns


REFUSED = {
    "cylindra/job.star": "not a particle STAR file",
    "starfile/postprocess.star": "not a particle STAR file",
    "starfile/run_it025_optimiser_3D.star": "not a particle STAR file",
    "starfile/basic_double_quote.star": "not a particle STAR file",
    "starfile/loop_double_quote.star": "not a particle STAR file",
    "starfile/empty_loop.star": "not a particle STAR file",
    "starfile/two_single_line_loop_blocks.star": "not a particle STAR file",
    "starfile/rln3.1_data_style.star": "missing column rlnDefocusU",
    "cylindra/run_it050_data.star": "sub-tomogram",
    "cryoCAT/relion_3.1_optics2.star": "sub-tomogram",
    "cryosparc-tools/4k_dataset.cs": "zero particles",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_with_clear_message(fmt, name):
    with pytest.raises(ValueError, match=REFUSED[name]) as info:
        read_particles(fmt / name)
    assert name.rsplit("/", 1)[-1] in str(info.value)
