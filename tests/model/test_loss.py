"""Whitened, band-limited data term and the noise spectrum it is whitened with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_flex3d.model.loss import (
    data_loss,
    estimate_noise_spectra,
    estimate_noise_spectrum,
    fit_scale,
    n_shells_2d,
    radial_frequency_2d,
    rfft_plane_weights,
    shell_index_2d,
    total_loss,
)


def _shell_mean(values_rfft: torch.Tensor, box: int) -> torch.Tensor:
    """Full-plane mean of a per-coefficient quantity within each shell (the oracle)."""
    pw, sh = rfft_plane_weights(box).reshape(-1), shell_index_2d(box).reshape(-1)
    n = n_shells_2d(box)
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, sh, (pw * values_rfft.reshape(-1)).double())
    den = torch.zeros(n, dtype=torch.float64).index_add_(0, sh, pw.double())
    return num / den


def _coloured_filter(box):
    k = radial_frequency_2d(box)
    return 1.0 / (1.0 + (k / 6.0) ** 2) + 0.3  # (h, w//2+1): 1.3 at DC -> ~0.33 at Nyquist


def test_noise_spectrum_recovers_coloured_noise():
    torch.manual_seed(0)
    box, b, sigma = 48, 600, 2.0
    h = _coloured_filter(box)
    white = torch.randn(b, box, box) * sigma
    noise = torch.fft.irfft2(torch.fft.rfft2(white) * h, s=(box, box))
    # a bright "particle" inside the mask must not leak into the background estimate
    yy, xx = torch.meshgrid(torch.arange(box) - box // 2, torch.arange(box) - box // 2, indexing="ij")
    particle = 50.0 * torch.exp(-(xx**2 + yy**2) / (2 * 4.0**2))
    est = estimate_noise_spectrum(noise + particle, mask_radius_px=0.35 * box)
    truth = _shell_mean(sigma**2 * h**2, box)
    ratio = (est[1 : box // 2 + 1] / truth[1 : box // 2 + 1]).float()
    assert ratio.shape == (box // 2,)
    assert (ratio - 1).abs().max() < 0.10, ratio
    assert (ratio - 1).abs().mean() < 0.03


def test_spectra_per_optics_group():
    torch.manual_seed(1)
    box = 32
    imgs = torch.cat([torch.randn(60, box, box) * 1.0, torch.randn(60, box, box) * 3.0])
    groups = torch.cat([torch.zeros(60), torch.ones(60)]).long()
    spectra = estimate_noise_spectra(imgs, groups, 2, mask_radius_px=10)
    assert spectra.shape == (2, n_shells_2d(box))
    assert abs(spectra[0, 1:17].mean().item() - 1.0) < 0.05
    assert abs(spectra[1, 1:17].mean().item() - 9.0) < 0.45


def test_whitened_loss_is_half_chi_squared():
    torch.manual_seed(2)
    box, b, sigma = 48, 400, 1.7
    target = torch.randn(b, box, box) * sigma
    pred = torch.zeros_like(target)
    spectrum = torch.full((n_shells_2d(box),), sigma**2)
    k = radial_frequency_2d(box)
    for max_freq in (None, 10.0):
        allowed = (k > 0) if max_freq is None else (k > 0) & (k <= max_freq)
        n_freq = (rfft_plane_weights(box) * allowed).sum().item()
        loss = data_loss(pred, target, spectrum, max_freq_px=max_freq)
        assert loss.shape == (b,)
        # E = n_freq / 2, sd of the mean = sqrt(n_freq / 2) / sqrt(b)
        assert abs(loss.mean().item() - n_freq / 2) < 4 * (n_freq / 2) ** 0.5 / b**0.5, (loss.mean(), n_freq / 2)
    # with every frequency the whitened loss is the real-space 1/2 ||.||^2 / sigma^2 minus DC
    full = data_loss(pred, target, spectrum)
    dc = target.sum(dim=(-2, -1)) ** 2 / box**2
    torch.testing.assert_close(full, 0.5 * (target.pow(2).sum(dim=(-2, -1)) - dc) / sigma**2, rtol=1e-4, atol=1e-3)


def test_band_limit_and_coloured_weighting():
    torch.manual_seed(3)
    box = 32
    target = torch.randn(4, box, box)
    k = radial_frequency_2d(box)
    # adding signal only above the band limit does not change the loss
    high = torch.fft.irfft2(torch.randn(4, box, box // 2 + 1, dtype=torch.complex64) * (k > 9), s=(box, box))
    spectrum = torch.linspace(2.0, 0.5, n_shells_2d(box))
    a = data_loss(torch.zeros_like(target), target, spectrum, max_freq_px=8.0)
    b = data_loss(high, target, spectrum, max_freq_px=8.0)
    torch.testing.assert_close(a, b)
    # a per-image spectrum (b, n_shells) equals the shared one when rows repeat it
    c = data_loss(torch.zeros_like(target), target, spectrum.expand(4, -1), max_freq_px=8.0)
    torch.testing.assert_close(a, c)
    # doubling the noise power halves the loss
    torch.testing.assert_close(data_loss(torch.zeros_like(target), target, 2 * spectrum, 8.0), a / 2)


def test_fitted_scale():
    torch.manual_seed(4)
    box = 32
    pred = torch.randn(6, box, box)
    scale = torch.linspace(0.2, 3.0, 6)
    target = pred * scale[:, None, None] + 0.01 * torch.randn(6, box, box)
    spectrum = torch.ones(n_shells_2d(box))
    torch.testing.assert_close(fit_scale(pred, target, spectrum), scale, rtol=1e-2, atol=1e-2)
    fitted = data_loss(pred, target, spectrum, scale="fit")
    unscaled = data_loss(pred, target, spectrum)
    assert (fitted < unscaled).all() and (fitted < 0.5 * 1e-4 * box * box * 2).all()
    with pytest.raises(ValueError, match="scale"):
        data_loss(pred, target, spectrum, scale="auto")


def test_total_loss_and_gradient():
    pred = torch.randn(3, 16, 16, requires_grad=True)
    data = data_loss(pred, torch.zeros(3, 16, 16), torch.ones(n_shells_2d(16)))
    rigid = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(total_loss(data, rigid, 0.5), (data + 0.5 * rigid).mean())
    torch.testing.assert_close(total_loss(data, rigid, 0.5, reduction="sum"), (data + 0.5 * rigid).sum())
    total_loss(data, rigid, 0.5).backward()
    assert pred.grad.abs().sum() > 0


def test_residual_per_coefficient_is_one_for_pure_noise_at_any_band():
    """2 x data_loss / band_coefficients: white noise of the estimated spectrum gives 1, whatever the band
    (the loss itself grows with the number of coefficients frequency marching lets in)."""
    from napari_flex3d.model.loss import band_coefficients, data_loss

    box = 48
    gen = torch.Generator().manual_seed(3)
    noise = 1.7 * torch.randn(400, box, box, generator=gen)
    spectrum = torch.full((box // 2 + 1,), 1.7**2)
    losses, residuals = [], []
    for band in (4.0, 10.0, 20.0, None):
        d = data_loss(torch.zeros_like(noise), noise, spectrum, max_freq_px=band).mean()
        losses.append(float(d))
        residuals.append(2.0 * float(d) / band_coefficients(box, band))
    assert losses == sorted(losses) and losses[-1] > 20 * losses[0]
    np.testing.assert_allclose(residuals, 1.0, atol=0.03)
    assert band_coefficients(box) == box * box - 1  # every real coefficient but DC


def test_band_coefficients_count_the_loss_weights_at_every_band():
    """The cached NumPy count equals the loss's own weights summed in torch, at bands on and beside every
    coefficient's radius (a band is compared in float32 as the weights compare it)."""
    from napari_flex3d.model.loss import _band_plane, band_coefficients

    for box in (16, 31, 48):
        radii = np.unique(radial_frequency_2d(box).double().numpy())
        bands = np.concatenate([radii, np.nextafter(radii, 0), np.nextafter(radii, np.inf), [0.3, 7.77]])
        for band in [None, *map(float, bands)]:
            plane_w, _ = _band_plane(box, band, n_shells_2d(box), torch.device("cpu"), torch.float32)
            assert band_coefficients(box, band) == float(plane_w.double().sum()), (box, band)
