"""Fourier cropping/padding, sub-pixel shifts and low-pass filters."""

from __future__ import annotations

import pytest
import torch

from napari_flex3d.conventions import voxel_grid_xyz_a
from napari_flex3d.ops.fourier import fourier_crop_2d, fourier_crop_3d, lowpass_3d, shift_images

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _band_limited(shape, keep: int, seed=0) -> torch.Tensor:
    """Real random array with Fourier components only for |f| < keep on every axis."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    dims = tuple(range(-len(shape), 0))
    ft = torch.fft.rfftn(x, dim=dims)
    for d, n in zip(dims[:-1], shape[:-1]):
        f = (torch.fft.fftfreq(n) * n).abs()
        ft = ft * (f < keep).reshape([-1 if i == d % len(shape) else 1 for i in range(len(shape))]).to(ft.real)
    ft[..., keep:] = 0
    return torch.fft.irfftn(ft, s=shape, dim=dims)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_in,n_out", [(32, 20), (33, 20), (32, 21)])
def test_crop_then_pad_is_exact_for_band_limited(device, n_in, n_out):
    vol = _band_limited((n_in,) * 3, keep=n_out // 2 - 1).to(device)
    small = fourier_crop_3d(vol, n_out)
    assert small.shape == (n_out,) * 3 and small.device == vol.device
    torch.testing.assert_close(small.mean(), vol.mean())  # values preserved, not sums
    back = fourier_crop_3d(small, n_in)
    torch.testing.assert_close(back, vol, atol=1e-10, rtol=0)
    imgs = _band_limited((3, n_in, n_in), keep=n_out // 2 - 1, seed=1).to(device)
    torch.testing.assert_close(fourier_crop_2d(fourier_crop_2d(imgs, n_out), n_in), imgs, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n_in,n_out", [(64, 32), (63, 24), (48, 36)])
def test_crop_resamples_a_gaussian_and_keeps_the_centre(n_in, n_out):
    """A Gaussian at apix is the same Gaussian (same values) at apix * n_in / n_out."""
    apix = 1.0
    centre = torch.tensor([3.0, -2.0, 1.5])  # xyz Å
    sigma = 4.0
    def gauss(n, a):
        xyz = voxel_grid_xyz_a(n, a, dtype=torch.float64)
        return torch.exp(-((xyz - centre.double()) ** 2).sum(-1) / (2 * sigma**2))
    small = fourier_crop_3d(gauss(n_in, apix), n_out)
    torch.testing.assert_close(small, gauss(n_out, apix * n_in / n_out), atol=2e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_shift_images_moves_content_by_plus_shift(device):
    img = torch.zeros(2, 16, 16, device=device)
    img[:, 8, 8] = 1.0
    out = shift_images(img, torch.tensor([[2.0, -3.0], [-5.0, 4.0]], device=device) * 1.5, apix=1.5)
    assert out[0, 8 - 3, 8 + 2].item() == pytest.approx(1.0, abs=1e-5)
    assert out[1, 8 + 4, 8 - 5].item() == pytest.approx(1.0, abs=1e-5)
    assert out.abs().sum().item() == pytest.approx(2.0, abs=1e-3)
    smooth = _band_limited((2, 16, 16), keep=7).float().to(device)
    s = torch.tensor([[0.3, -1.7], [2.2, 0.45]], device=device, requires_grad=True)
    there = shift_images(smooth, s, 1.0)
    torch.testing.assert_close(shift_images(there, -s, 1.0), smooth, atol=1e-5, rtol=0)
    there.pow(2).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_lowpass_3d_cuts_above_and_keeps_below():
    vol = torch.randn(32, 32, 32, dtype=torch.float64)
    apix = 2.0
    out = lowpass_3d(vol, resolution_a=8.0, apix=apix, soft_width_px=2.0)  # cutoff 0.25 cycles/voxel = shell 8
    f = torch.fft.fftfreq(32)
    k = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + torch.fft.rfftfreq(32)[None, None, :] ** 2) * 32
    ratio = torch.fft.rfftn(out).abs() / torch.fft.rfftn(vol).abs()
    assert torch.allclose(ratio[k <= 8], torch.ones(()).double(), atol=1e-9)
    assert ratio[k >= 10].max() < 1e-9
    assert ((ratio[(k > 8) & (k < 10)] > 0) & (ratio[(k > 8) & (k < 10)] < 1)).all()
