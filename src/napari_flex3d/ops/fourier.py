"""Fourier-space tools: cropping/padding to another box, sub-pixel shifts, low-pass.

Every function keeps the centre pixel/voxel ``N // 2`` where it is (DESIGN.md section 1),
works on leading batch dimensions and is differentiable.

Fourier cropping preserves real-space *values* (a map's density, an image's grey
levels): a band-limited function resampled on a coarser grid. Cropping ``N -> n``
multiplies the pixel size by ``N / n``. Note that a projection (a sum over ``n`` voxels
along z) of a cropped map is then ``n / N`` times the cropped image of the full-box
projection; callers that compare the two fit a scale or multiply by ``N / n``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["crop_rfft_2d", "fourier_crop_2d", "fourier_crop_3d", "fourier_resize", "shift_images", "lowpass_3d", "lowpass_2d"]


def _freq_index_map(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a full (non-rfft) axis: output indices and the input indices they read.

    Frequencies ``f`` in ``[-n_out // 2, n_out - n_out // 2)`` that also exist in the input
    (``[-n_in // 2, n_in - n_in // 2)``) are copied; the rest stay zero.
    """
    lo = max(-(n_out // 2), -(n_in // 2))
    hi = min(n_out - n_out // 2, n_in - n_in // 2)
    f = torch.arange(lo, hi, device=device)
    return f % n_out, f % n_in


def fourier_resize(x: torch.Tensor, box_out: int, ndim: int) -> torch.Tensor:
    """Crop (``box_out < N``) or zero-pad (``box_out > N``) the spectrum of the last
    ``ndim`` (cubic/square) axes of ``x (..., N, ..., N)``; real-space values are preserved.
    """
    n_in = x.shape[-1]
    if any(s != n_in for s in x.shape[-ndim:]):
        raise ValueError(f"fourier_resize needs square/cubic data, got shape {tuple(x.shape)}")
    if box_out == n_in:
        return x
    if box_out < 2:
        raise ValueError(f"box_out must be >= 2, got {box_out}")
    dims = tuple(range(-ndim, 0))
    # centre N//2 -> index 0, so the crop keeps the centre (undone by fftshift below)
    ft = torch.fft.rfftn(torch.fft.ifftshift(x, dim=dims), dim=dims, norm="forward")
    # last axis (rfft): frequencies 0..min(N, n)//2
    m = min(n_in, box_out) // 2 + 1
    ft = ft[..., :m]
    if ft.shape[-1] < box_out // 2 + 1:
        ft = torch.nn.functional.pad(ft, (0, box_out // 2 + 1 - ft.shape[-1]))
    # the other axes: full frequency ranges
    for d in dims[:-1]:
        out_i, in_i = _freq_index_map(n_in, box_out, x.device)
        shape = list(ft.shape)
        shape[d] = box_out
        out = ft.new_zeros(shape)
        out = out.index_copy(d % ft.ndim, out_i, ft.index_select(d % ft.ndim, in_i))
        ft = out
    y = torch.fft.irfftn(ft, s=(box_out,) * ndim, dim=dims, norm="forward")
    return torch.fft.fftshift(y, dim=dims)


def fourier_crop_2d(images: torch.Tensor, box_out: int) -> torch.Tensor:
    """``images (..., h, w)`` -> ``(..., box_out, box_out)`` by Fourier cropping (or padding)."""
    return fourier_resize(images, box_out, 2)


def fourier_crop_3d(volume: torch.Tensor, box_out: int) -> torch.Tensor:
    """``volume (..., d, h, w)`` -> ``(..., box_out, box_out, box_out)`` by Fourier cropping (or padding)."""
    return fourier_resize(volume, box_out, 3)


def crop_rfft_2d(spec: torch.Tensor, box_out: int) -> torch.Tensor:
    """The ``rfft2``-layout array ``spec (..., N, N//2+1)`` (no fftshift: DC at ``[0, 0]``)
    at a smaller box: ``(..., box_out, box_out//2+1)``, each output frequency read from
    the same frequency of the input (a CTF at a Fourier-cropped box, for instance)."""
    n_in = spec.shape[-2]
    if spec.shape[-1] != n_in // 2 + 1 or not 2 <= box_out <= n_in:
        raise ValueError(f"crop_rfft_2d needs (..., N, N//2+1) and box_out <= N, got {tuple(spec.shape)}, {box_out}")
    out_i, in_i = _freq_index_map(n_in, box_out, spec.device)
    order = torch.argsort(out_i)
    return spec[..., in_i[order], : box_out // 2 + 1]


def shift_images(images: torch.Tensor, shifts_a: torch.Tensor, apix: float) -> torch.Tensor:
    """Move the content of ``images (b, h, w)`` by ``+shifts_a (b, 2)`` (x, y in Å).

    ``out(x) = in(x - s)``: a feature at pixel ``p`` ends up at ``p + s / apix``.
    Implemented as a Fourier phase ramp (periodic boundary).
    """
    h, w = images.shape[-2:]
    shifts_a = torch.as_tensor(shifts_a, device=images.device)
    rdtype = images.dtype if images.is_floating_point() else torch.float32
    s = shifts_a.to(rdtype) / apix  # (b, 2) pixels
    ky = torch.fft.fftfreq(h, device=images.device, dtype=rdtype)  # (h,) cycles/pixel
    kx = torch.fft.rfftfreq(w, device=images.device, dtype=rdtype)  # (w//2+1,)
    phase = -2 * math.pi * (kx * s[..., 0, None, None] + ky[:, None] * s[..., 1, None, None])  # (b, h, w//2+1)
    ft = torch.fft.rfftn(images, dim=(-2, -1))
    return torch.fft.irfftn(ft * torch.polar(torch.ones_like(phase), phase), s=(h, w), dim=(-2, -1))


def _soft_lowpass_filter(k: torch.Tensor, cutoff: float, soft_width: float) -> torch.Tensor:
    """1 below ``cutoff``, raised-cosine to 0 over ``soft_width`` (same units as ``k``)."""
    if soft_width <= 0:
        return (k <= cutoff).to(k.dtype)
    t = ((k - cutoff) / soft_width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def lowpass_3d(volume: torch.Tensor, resolution_a: float, apix: float, soft_width_px: float = 2.0) -> torch.Tensor:
    """Low-pass ``volume (..., d, h, w)`` to ``resolution_a`` (Å) with a raised-cosine edge
    ``soft_width_px`` Fourier pixels wide starting at the cutoff."""
    n = volume.shape[-1]
    dims = (-3, -2, -1)
    rdtype = volume.dtype
    fz = torch.fft.fftfreq(volume.shape[-3], device=volume.device, dtype=rdtype)
    fy = torch.fft.fftfreq(volume.shape[-2], device=volume.device, dtype=rdtype)
    fx = torch.fft.rfftfreq(n, device=volume.device, dtype=rdtype)
    k = torch.sqrt(fz[:, None, None] ** 2 + fy[None, :, None] ** 2 + fx[None, None, :] ** 2)  # cycles/voxel
    filt = _soft_lowpass_filter(k, apix / resolution_a, soft_width_px / n)
    ft = torch.fft.rfftn(volume, dim=dims)
    return torch.fft.irfftn(ft * filt, s=volume.shape[-3:], dim=dims)


def lowpass_2d(images: torch.Tensor, resolution_a: float, apix: float, soft_width_px: float = 2.0) -> torch.Tensor:
    """As :func:`lowpass_3d` for ``images (..., h, w)``."""
    n = images.shape[-1]
    fy = torch.fft.fftfreq(images.shape[-2], device=images.device, dtype=images.dtype)
    fx = torch.fft.rfftfreq(n, device=images.device, dtype=images.dtype)
    k = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    filt = _soft_lowpass_filter(k, apix / resolution_a, soft_width_px / n)
    ft = torch.fft.rfftn(images, dim=(-2, -1))
    return torch.fft.irfftn(ft * filt, s=images.shape[-2:], dim=(-2, -1))
