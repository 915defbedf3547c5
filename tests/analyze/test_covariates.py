"""Colour by anything, and the pose-artefact flag: an axis made to track defocus is flagged, the true hinge is not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_flex3d.analyze.covariates import particle_table, pose_artefacts, spearman_matrix
from napari_flex3d.conventions import euler_to_matrix
from napari_flex3d.io.particles import read_particles


def test_spearman_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 3)), rng.normal(size=(300, 2))
    b[:, 1] += a[:, 0] ** 3  # a monotone, non-linear dependence
    full = spearmanr(np.concatenate([a, b], axis=1)).statistic
    np.testing.assert_allclose(spearman_matrix(a, b), full[:3, 3:], atol=1e-12)
    assert spearman_matrix(a, np.ones((300, 1))).tolist() == [[0.0]] * 3  # a constant column: 0, not NaN


def test_viewing_direction_is_the_projection_axis(hinge_sim):
    ps = read_particles(hinge_sim / "particles.star")
    table = particle_table(np.zeros((len(ps), 1)), ps)
    view = table[["view_x", "view_y", "view_z"]].to_numpy()
    # the projection integrates along the image frame's z: A maps the viewing direction onto it
    np.testing.assert_allclose(np.einsum("nij,nj->ni", ps.rotations, view), np.tile([0.0, 0.0, 1.0], (len(ps), 1)),
                               atol=1e-9)
    again = euler_to_matrix(table["rot_deg"], table["tilt_deg"], table["psi_deg"])
    np.testing.assert_allclose(again, ps.rotations, atol=1e-9)  # the angles are RELION's, in degrees


def test_defocus_tracking_axis_is_flagged_and_the_hinge_is_not(hinge_sim):
    ps = read_particles(hinge_sim / "particles.star")
    hinge = np.load(hinge_sim / "truth" / "coords.npy")[:, 0]  # the simulator's true hinge coordinate
    defocus = 0.5 * (ps.defocus_u_a + ps.defocus_v_a)
    rng = np.random.default_rng(1)
    fake = (defocus - defocus.mean()) / defocus.std() + 0.5 * rng.normal(size=len(ps))  # an axis tracking defocus
    flags = pose_artefacts(particle_table(np.stack([hinge, fake], axis=1), ps))
    assert flags["flagged"].tolist() == [False, True]
    assert flags.loc[1, "covariate"] == "defocus_a" and flags.loc[1, "spearman"] > 0.7


def test_pose_tracking_axis_is_flagged_through_wrapped_angles(hinge_sim):
    ps = read_particles(hinge_sim / "particles.star")
    table = particle_table(np.zeros((len(ps), 1)), ps)
    # rot wraps at +-180 degrees: its cosine is continuous, so an axis following it is caught there
    table["z1"] = np.cos(np.deg2rad(table["rot_deg"])) + 0.2 * np.random.default_rng(2).normal(size=len(ps))
    flags = pose_artefacts(table)
    assert bool(flags.loc[0, "flagged"]) and flags.loc[0, "covariate"] == "cos_rot"
    with pytest.raises(ValueError, match="threshold"):
        pose_artefacts(table, threshold=1.5)


def test_file_columns_are_carried_through(hinge_sim):
    ps = read_particles(hinge_sim / "particles.star")
    table = particle_table(np.zeros((len(ps), 2)), ps, residual=np.arange(len(ps), dtype=float))
    np.testing.assert_allclose(table["file:rlnDefocusU"], ps.table["rlnDefocusU"])
    assert {"z1", "z2", "latent_norm", "residual", "optics_group", "half_set"} <= set(table.columns)
