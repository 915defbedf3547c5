"""The recovery figures for latents: the linear canonical correlation against a bent latent space,
and the quadratic read-out that forgives the bend (but nothing else)."""

import numpy as np

from napari_flex3d.evaluate.recovery import quadratic_readout_correlations
from napari_flex3d.training.agreement import canonical_correlations


def _coords(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-1, 1, n), np.sign(rng.standard_normal(n)) * 0.6 + 0.2 * rng.standard_normal(n)], 1)


def test_a_linear_map_of_the_truth_is_perfect_by_both():
    c = _coords()
    z = c @ np.array([[0.8, -1.3], [2.0, 0.4]]) + 5.0
    assert np.allclose(canonical_correlations(z, c), 1.0)
    assert np.allclose(quadratic_readout_correlations(z, c), 1.0)


def test_a_bent_latent_space_loses_only_the_linear_figure():
    c = _coords()
    # one motion traces an arc: the second latent also moves with the square of the first coordinate
    z = np.stack([c[:, 0], c[:, 1] + 1.5 * c[:, 0] ** 2], 1)
    linear = canonical_correlations(z, c)
    assert linear.min() < 0.9
    assert np.allclose(quadratic_readout_correlations(z, c), 1.0, atol=1e-9)


def test_the_readout_does_not_forgive_noise():
    c = _coords()
    rng = np.random.default_rng(1)
    z = c + 0.5 * rng.standard_normal(c.shape)
    linear, readout = canonical_correlations(z, c), quadratic_readout_correlations(z, c)
    assert readout.max() < 0.95
    # the extra features can only add what is linear in them, and noise is not: within 0.01
    assert np.all(readout >= linear - 1e-9) and np.all(readout - linear < 0.01)


def test_more_latent_axes_than_coordinates():
    c = _coords()[:, :1]
    rng = np.random.default_rng(2)
    z = np.stack([c[:, 0] ** 2 + 0.3 * c[:, 0], rng.standard_normal(len(c)), c[:, 0]], 1)
    out = quadratic_readout_correlations(z, c)
    assert out.shape == (1,)
    assert np.isclose(out[0], 1.0)


def _rotation_displacements(angles, points, axis):
    """Displacements ``(n, p, 3)`` of ``points`` rotated by each angle about ``axis`` (Rodrigues)."""
    k = axis / np.linalg.norm(axis)
    kx = np.cross(k, points)  # (p, 3)
    kkx = np.cross(k, kx)
    s, c = np.sin(angles)[:, None, None], np.cos(angles)[:, None, None]
    return s * kx + (1.0 - c) * kkx


def test_displacement_modes_of_a_linear_flow_stop_at_its_rank():
    from napari_flex3d.evaluate.recovery import displacement_modes

    rng = np.random.default_rng(3)
    fields = rng.standard_normal((2, 50, 3))
    z = rng.standard_normal((500, 2))
    modes = displacement_modes(np.einsum("nk,kpd->npd", z, fields))
    assert modes[0] == 1.0 and modes[1] > 0.1
    assert np.all(modes[2:] < 1e-10)


def test_displacement_modes_of_a_rotation_show_its_curvature():
    from napari_flex3d.evaluate.recovery import displacement_modes

    rng = np.random.default_rng(4)
    points = rng.standard_normal((200, 3)) * 10.0
    angles = rng.uniform(-np.pi / 3, np.pi / 3, 4000)
    modes = displacement_modes(_rotation_displacements(angles, points, np.array([0.3, -0.2, 1.0])))
    # sin and 1 - cos multiply two orthogonal fields of equal norm (k x p and k x (k x p)), so the
    # modes are those of the two functions' 2 x 2 covariance over the angles
    eig = np.sqrt(np.linalg.eigvalsh(np.cov(np.sin(angles), 1.0 - np.cos(angles))))
    expected = eig[0] / eig[1]
    assert np.isclose(modes[1], expected, rtol=1e-6)
    assert 0.1 < modes[1] < 0.5
    assert np.all(modes[2:] < 1e-8)
