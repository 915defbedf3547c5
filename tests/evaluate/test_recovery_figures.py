"""The benchmark's map figures (``evaluate.recovery.map_figures``) on maps of known error.

Why the moving domain is judged by its real-space correlation: a map that averages the
domain over its positions (motion blur) keeps the phases, and a masked FSC, normalised per
shell, barely sees it, while a misplaced domain (a phase error) shows at once.
"""

import numpy as np
import pytest
import torch

from napari_flex3d.evaluate.recovery import map_figures

BOX, APIX = 32, 3.0
NYQUIST = 2 * APIX


def _blobs(centres: np.ndarray, sigma: float = 1.0) -> torch.Tensor:
    """Sum of Gaussians of ``sigma`` px at ``centres (n, 3)`` (z, y, x px) on the box grid."""
    grid = np.stack(np.meshgrid(*[np.arange(BOX)] * 3, indexing="ij"), -1).astype(np.float64)  # (N, N, N, 3)
    out = np.zeros((BOX,) * 3)
    for c in centres:
        out += np.exp(-((grid - c) ** 2).sum(-1) / (2 * sigma**2))
    return torch.as_tensor(out)


@pytest.fixture(scope="module")
def maps():
    rng = np.random.default_rng(0)

    def ball(centre, radius, n):
        d = rng.normal(size=(n, 3))
        r = radius * rng.uniform(0, 1, (n, 1)) ** (1 / 3)  # uniform in the ball
        return np.asarray(centre) + d / np.linalg.norm(d, axis=1, keepdims=True) * r

    static, moving = ball((16, 16, 10), 5.0, 40), ball((16, 16, 22), 4.0, 30)
    rest = _blobs(static)
    truth = rest + _blobs(moving)
    shifts = np.linspace(-6.0, 6.0, 25)
    weights = np.exp(-0.5 * (shifts / 2.0) ** 2)
    weights /= weights.sum()
    blurred = rest + sum(w * _blobs(moving + [0.0, s, 0.0]) for s, w in zip(shifts, weights))  # along y
    misplaced = rest + _blobs(moving + [0.0, 1.5, 0.0])
    grid = np.stack(np.meshgrid(*[np.arange(BOX)] * 3, indexing="ij"), -1)
    r = np.linalg.norm(grid - np.array([16, 16, 22]), axis=-1)
    mask = torch.as_tensor(np.clip((10.0 - r) / 3.0, 0.0, 1.0))  # 1 inside 7 px, 0 beyond 10 px
    return truth, blurred, misplaced, mask


def test_the_truth_scores_perfectly(maps):
    truth, _, _, mask = maps
    f = map_figures(truth, truth, mask, APIX)
    assert f["moving_corr"] == pytest.approx(1.0, abs=1e-9)
    for key in ("a", "half_a", "moving_a", "moving_half_a"):
        assert f[key] == pytest.approx(NYQUIST)


def test_moving_domain_fsc_is_blind_to_blur_and_the_correlation_is_not(maps):
    truth, blurred, misplaced, mask = maps
    blur, shift = map_figures(blurred, truth, mask, APIX), map_figures(misplaced, truth, mask, APIX)
    # the domain spread over its positions (sd 2 px): the masked FSC stays above 0.5 to Nyquist,
    # the correlation drops
    assert blur["moving_a"] == pytest.approx(NYQUIST)
    assert blur["moving_half_a"] == pytest.approx(NYQUIST)
    assert blur["moving_corr"] < 0.96
    # a domain misplaced by 1.5 px: the masked FSC falls well before Nyquist
    assert shift["moving_a"] > 1.5 * NYQUIST
    assert shift["moving_corr"] < 0.9  # the correlation sees it too
    # the static domain is untouched in both, so the whole-map figures are better than the domain's
    assert shift["a"] < shift["moving_a"]


def test_figures_do_not_depend_on_the_maps_scale(maps):
    """Any scale of the map (a consensus or a convected map on its own scale) gives the same figures."""
    truth, blurred, _, mask = maps
    a, b = map_figures(blurred, truth, mask, APIX), map_figures(7.5 * blurred, truth, mask, APIX)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9)
