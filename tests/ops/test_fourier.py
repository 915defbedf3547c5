"""Fourier cropping/padding, sub-pixel shifts, the frequency grid, the raised cosine and the low-pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_flex3d.conventions import voxel_grid_xyz_a
from napari_flex3d.ops.fourier import (
    fourier_crop_2d,
    fourier_crop_3d,
    frequency_axes,
    frequency_radius_grid,
    lowpass,
    raised_cosine,
    shift_images,
)

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


def test_lowpass_cuts_above_and_keeps_below():
    vol = torch.randn(32, 32, 32, dtype=torch.float64)
    apix = 2.0
    out = lowpass(vol, apix / 8.0, 2.0 / 32)  # 8 Å: cutoff 0.25 cycles/voxel = shell 8, edge 2 shells
    f = torch.fft.fftfreq(32)
    k = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + torch.fft.rfftfreq(32)[None, None, :] ** 2) * 32
    ratio = torch.fft.rfftn(out).abs() / torch.fft.rfftn(vol).abs()
    assert torch.allclose(ratio[k <= 8], torch.ones(()).double(), atol=1e-9)
    assert ratio[k >= 10].max() < 1e-9
    assert ((ratio[(k > 8) & (k < 10)] > 0) & (ratio[(k > 8) & (k < 10)] < 1)).all()


# ----------------------------------------------------------------------------- the shared grid, edge and low-pass
# Each replaced a copy elsewhere (model.canonical, model.loss, mesh.masks, reconstruct.rigid,
# reconstruct.validation, ops.ctf, the old ops.fourier.lowpass_3d); these tests pin them to the
# formulas of those copies, bit for bit where the arithmetic is the same.


@pytest.mark.parametrize("shape", [(32, 32, 32), (27, 27, 27), (20, 24, 28), (9, 16)])
@pytest.mark.parametrize("d", [1.0, 1.37, "1/N"])
def test_frequency_radius_grid_equals_the_explicit_formula(shape, d):
    d = 1.0 / shape[-1] if d == "1/N" else d
    f = [torch.fft.fftfreq(n, d=d) for n in shape[:-1]] + [torch.fft.rfftfreq(shape[-1], d=d)]
    if len(shape) == 3:
        expect = torch.sqrt(f[0][:, None, None] ** 2 + f[1][None, :, None] ** 2 + f[2][None, None, :] ** 2)
    else:
        expect = torch.sqrt(f[0][:, None] ** 2 + f[1][None, :] ** 2)
    assert torch.equal(frequency_radius_grid(shape, d=d), expect)
    full = frequency_radius_grid(shape, d=d, rfft=False)
    assert full.shape == shape and torch.equal(full[..., : shape[-1] // 2 + 1], expect)
    ky, kx = torch.broadcast_tensors(*frequency_axes(shape[-2:], d=d, dtype=torch.float64))
    ey, ex = torch.meshgrid(torch.fft.fftfreq(shape[-2], d=d, dtype=torch.float64),
                            torch.fft.rfftfreq(shape[-1], d=d, dtype=torch.float64), indexing="ij")
    assert torch.equal(ky, ey) and torch.equal(kx, ex)


def test_raised_cosine_equals_the_old_formula_for_torch_and_numpy():
    t = np.linspace(-0.5, 1.5, 2001)
    expect = 0.5 * (1.0 + np.cos(np.pi * np.clip(t, 0.0, 1.0)))
    out = raised_cosine(t)
    assert isinstance(out, np.ndarray) and np.array_equal(out, expect)
    tt = torch.as_tensor(t, dtype=torch.float32)
    out_t = raised_cosine(tt)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, 0.5 * (1 + torch.cos(math.pi * tt.clamp(0, 1))))
    assert out[t <= 0].min() == 1.0 and out[t >= 1].max() == 0.0
    assert np.all(np.diff(out) <= 0)  # falls monotonically across the edge


def _old_lowpass_3d(volume, resolution_a, apix, soft_width_px):
    """ops.fourier.lowpass_3d as it was, the oracle of the shared low-pass."""
    n = volume.shape[-1]
    fz = torch.fft.fftfreq(volume.shape[-3], dtype=volume.dtype)
    fy = torch.fft.fftfreq(volume.shape[-2], dtype=volume.dtype)
    fx = torch.fft.rfftfreq(n, dtype=volume.dtype)
    k = torch.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)
    cutoff, width = apix / resolution_a, soft_width_px / n
    if width <= 0:
        filt = (k <= cutoff).to(k.dtype)
    else:
        filt = 0.5 * (1 + torch.cos(math.pi * ((k - cutoff) / width).clamp(0, 1)))
    ft = torch.fft.rfftn(volume, dim=(-3, -2, -1))
    return torch.fft.irfftn(ft * filt, s=volume.shape[-3:], dim=(-3, -2, -1))


def _old_bandlimit(volume, max_freq_px, edge_px):
    """model.canonical.bandlimit as it was (k in Fourier pixels)."""
    box = volume.shape[-1]
    kz = torch.fft.fftfreq(box, d=1.0 / box)
    kx = torch.fft.rfftfreq(box, d=1.0 / box)
    k = torch.sqrt(kz[:, None, None] ** 2 + kz[None, :, None] ** 2 + kx[None, None, :] ** 2)
    if edge_px > 0:
        filt = 0.5 * (1.0 + torch.cos(math.pi * ((k - max_freq_px) / edge_px).clamp(0.0, 1.0)))
    else:
        filt = (k <= max_freq_px).to(volume.dtype)
    spec = torch.fft.rfftn(volume, dim=(-3, -2, -1))
    return torch.fft.irfftn(spec * filt, s=(box, box, box), dim=(-3, -2, -1))


@pytest.mark.parametrize("shape", [(32, 32, 32), (27, 27, 27), (2, 20, 24, 28)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("soft_px", [0.0, 1.0, 2.5])
def test_lowpass_equals_the_old_lowpass_3d(shape, dtype, soft_px):
    vol = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    out = lowpass(vol, 2.0 / 8.0, soft_px / shape[-1])
    assert torch.equal(out, _old_lowpass_3d(vol, 8.0, 2.0, soft_px))


@pytest.mark.parametrize("box", [24, 27, 32])
@pytest.mark.parametrize("edge_px", [0.0, 3.0])
def test_bandlimit_equals_the_old_formula(box, edge_px):
    from napari_flex3d.model.canonical import bandlimit

    vol = torch.randn(box, box, box, generator=torch.Generator().manual_seed(box))
    assert torch.equal(bandlimit(vol, 6.3, edge_px=edge_px), _old_bandlimit(vol, 6.3, edge_px))


def test_lowpass_map_equals_the_old_numpy_formula():
    """mesh.masks.lowpass_map now filters with the shared torch low-pass; the old numpy code
    (a float32 forward FFT) and the new (float64 throughout) agree to float32 round-off."""
    from napari_flex3d.mesh.masks import lowpass_map

    vol = np.random.default_rng(0).normal(size=(30, 36, 40)).astype(np.float32)
    apix, resolution_a, edge_shells = 1.5, 8.0, 2.0
    freqs = [np.fft.fftfreq(n, d=apix) for n in vol.shape[:2]] + [np.fft.rfftfreq(vol.shape[2], d=apix)]
    kz, ky, kx = np.meshgrid(*freqs, indexing="ij", sparse=True)
    k = np.sqrt(kz**2 + ky**2 + kx**2)
    width = edge_shells / (max(vol.shape) * apix)
    filt = 0.5 * (1.0 + np.cos(np.pi * np.clip((k - (1.0 / resolution_a - width / 2)) / width, 0.0, 1.0)))
    expect = np.fft.irfftn(np.fft.rfftn(vol) * filt, s=vol.shape, axes=(0, 1, 2)).astype(np.float32)
    np.testing.assert_allclose(lowpass_map(vol, apix, resolution_a, edge_shells), expect, rtol=0, atol=1e-6)

