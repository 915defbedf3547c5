"""FSC curves, masks and the resolution at a threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.ops.fsc import fsc, fsc_resolution, shell_frequencies_inv_a

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_fsc_identical_independent_and_half_snr(device):
    g = torch.Generator().manual_seed(0)
    s, n1, n2 = (torch.randn(32, 32, 32, generator=g).to(device) for _ in range(3))
    assert fsc(s, s).shape == (17,)
    torch.testing.assert_close(fsc(s, s).cpu(), torch.ones(17), atol=1e-5, rtol=0)
    assert fsc(n1, n2)[1:].abs().mean() < 0.05
    # signal + equal-power noise: FSC = SNR / (1 + SNR) = 0.5 in every shell
    half = fsc(s + n1, s + n2)[3:].cpu()
    assert (half - 0.5).abs().max() < 0.12 and abs(half.mean() - 0.5) < 0.03


def test_fsc_mask_and_batch():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 16, 16, 16, generator=g)
    mask = torch.rand(16, 16, 16, generator=g)
    torch.testing.assert_close(fsc(a, b, mask=mask), fsc(a * mask, b * mask))
    assert fsc(torch.stack([a, b]), torch.stack([b, a])).shape == (2, 9)
    with pytest.raises(ValueError, match="same shape"):
        fsc(a, b[:8])


def test_fsc_resolution_interpolates_the_crossing():
    box, apix = 32, 1.5
    f = shell_frequencies_inv_a(box, apix)
    assert f.shape == (17,) and f[16] == pytest.approx(1 / (2 * apix))
    curve = np.ones(17)
    curve[5], curve[6] = 0.3, 0.1  # 0.143 crossed 0.785 of the way from shell 5 to 6
    t = (0.3 - 0.143) / (0.3 - 0.1)
    assert fsc_resolution(curve, box, apix) == pytest.approx(1 / ((5 + t) / (box * apix)))
    assert fsc_resolution(torch.ones(17), box, apix) == pytest.approx(2 * apix)
    assert fsc_resolution(np.r_[1.0, np.zeros(16)], box, apix) == float("inf")
    with pytest.raises(ValueError, match="shells"):
        fsc_resolution(np.ones(10), box, apix)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fsc_matches_torch_fourier_shell_correlation(dtype):
    """One pass over the coefficients gives the per-shell loop's curve (the library is the oracle)."""
    from torch_fourier_shell_correlation import fourier_shell_correlation

    g = torch.Generator().manual_seed(2)
    s = torch.randn(20, 20, 20, generator=g, dtype=torch.float64)
    noisy = torch.stack([s + torch.randn(20, 20, 20, generator=g, dtype=torch.float64) * k for k in (0.3, 1.0, 3.0)])
    pairs = [
        (s, noisy[1]),  # one pair
        (noisy, torch.flip(noisy, (0,))),  # a batch
        (torch.randn(2, 12, 16, 18, generator=g, dtype=torch.float64), torch.randn(2, 12, 16, 18, generator=g, dtype=torch.float64)),  # not cubic
    ]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for a, b in pairs:
        a, b = a.to(dtype), b.to(dtype)
        expected = fourier_shell_correlation(a, b)
        got = fsc(a, b)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        torch.testing.assert_close(got, expected, atol=tol, rtol=0)
