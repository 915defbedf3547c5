"""Validation maths against oracles: known B-factors, phase randomisation, FSC limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.ops.fsc import shell_frequencies_a
from napari_flex3d.reconstruct.validation import (
    apply_radial_filter,
    fsc_weight,
    guinier_bfactor,
    masked_fsc,
    phase_randomise,
    radial_average,
    radial_shells_3d,
    sharpen,
)

BOX, APIX = 48, 1.5


def _white(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BOX, BOX, BOX, generator=g, dtype=torch.float64)


def _blur(vol, b):
    s = torch.as_tensor(shell_frequencies_a(BOX, APIX))
    return apply_radial_filter(vol, torch.exp(-b * s**2 / 4))


@pytest.mark.parametrize("b_true", [50.0, 150.0])
def test_guinier_fit_recovers_a_known_bfactor(b_true):
    vol = _blur(_white(), b_true)
    b_fit = guinier_bfactor(vol, APIX, low_a=10.0, high_a=3.2)
    assert abs(b_fit - b_true) < 0.1 * b_true, (b_fit, b_true)
    assert abs(guinier_bfactor(_white(), APIX, high_a=3.2)) < 10.0  # a flat spectrum has B ~ 0


def test_sharpening_undoes_a_blur():
    truth = _white(1)
    blurred = _blur(truth, 100.0)
    perfect = np.ones(BOX // 2 + 1)  # FSC 1 everywhere: no FSC down-weighting
    sharp, b = sharpen(blurred, APIX, perfect, resolution_a=2 * APIX + 1e-6, bfactor=None, low_a=10.0)
    assert 85 < b < 115
    shells = radial_shells_3d(BOX)
    mid = (shells > 3) & (shells < BOX // 2 - 2)
    ratio = (radial_average(sharp) / radial_average(truth))[3 : BOX // 2 - 2]
    assert torch.all((ratio > 0.8) & (ratio < 1.25)), ratio
    assert mid.any()


def test_phase_randomisation_keeps_amplitudes_and_low_frequencies():
    vol = _white(2)
    r = phase_randomise(vol, from_shell=10, seed=3)
    fa, fr = torch.fft.rfftn(vol), torch.fft.rfftn(r)
    shells = radial_shells_3d(BOX)
    assert torch.allclose(fa.abs(), fr.abs(), rtol=1e-6, atol=1e-8)
    low, high = shells < 10, shells >= 10
    assert torch.allclose(fa[low], fr[low], atol=1e-8)
    corr = (fa[high].conj() * fr[high]).real.sum() / (fa[high].abs() ** 2).sum()
    assert abs(float(corr)) < 0.05
    assert r.dtype == vol.dtype and torch.isfinite(r).all()


def test_fsc_limits_and_noise_substitution():
    signal = _blur(_white(4), 30.0)
    a = signal + 0.3 * _white(5)
    b = signal + 0.3 * _white(6)
    same = masked_fsc(a, a, APIX)
    assert np.allclose(same.curve[1:], 1.0, atol=1e-6)
    assert same.resolution_0143_a == pytest.approx(2 * APIX)
    ind = masked_fsc(_white(7), _white(8), APIX)
    assert np.abs(ind.curve[2:]).max() < 0.2
    assert ind.resolution_0143_a > 10 * APIX or ind.resolution_0143_a == float("inf")
    # a tight mask on pure noise induces correlation; noise substitution removes it
    zz, yy, xx = torch.meshgrid(*(torch.arange(BOX) - BOX // 2,) * 3, indexing="ij")
    tight = ((zz**2 + yy**2 + xx**2) < 6**2).double()
    shared = _white(9) * tight  # the same masked noise pattern in both maps: mask-induced correlation
    n1, n2 = shared + 0.05 * _white(10), shared + 0.05 * _white(11)
    raw = masked_fsc(n1, n2, APIX, mask=tight)
    corrected = masked_fsc(n1, n2, APIX, mask=tight, randomise_from_a=8.0)
    from_shell = int(np.ceil(BOX * APIX / 8.0))
    assert corrected.corrected and corrected.randomised is not None
    assert raw.curve[from_shell + 2 :].mean() > 0.5
    assert np.abs(corrected.curve[from_shell + 2 :]).mean() < raw.curve[from_shell + 2 :].mean()


def test_fsc_weight():
    w = fsc_weight(np.array([1.0, 0.5, 0.0, -0.2]))
    assert w[0] == pytest.approx(1.0) and w[2] == 0 and w[3] == 0
    assert w[1] == pytest.approx(np.sqrt(2 * 0.5 / 1.5))
