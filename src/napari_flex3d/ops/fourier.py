"""Fourier-space tools: the frequency grid, the raised-cosine edge and the low-pass that every
module uses, cropping/padding to another box, sub-pixel shifts.

A room of ``ops``; it imports torch and numpy only.

Every function keeps the centre pixel/voxel ``N // 2`` where it is (docs/conventions.md),
works on leading batch dimensions and is differentiable. Spectra are unshifted (DC first,
``torch.fft`` order); frequencies are in cycles per unit of the sample spacing ``d``:
``d=1`` cycles per pixel, ``d=apix`` 1/Å, ``d=1/N`` Fourier pixels of an ``N`` box.

Fourier cropping preserves real-space *values* (a map's density, an image's grey
levels): a band-limited function resampled on a coarser grid. Cropping ``N -> n``
multiplies the pixel size by ``N / n``. Note that a projection (a sum over ``n`` voxels
along z) of a cropped map is then ``n / N`` times the cropped image of the full-box
projection; callers that compare the two fit a scale or multiply by ``N / n``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "frequency_axes",
    "frequency_radius_grid",
    "raised_cosine",
    "lowpass",
    "crop_rfft_2d",
    "fourier_crop_2d",
    "fourier_crop_3d",
    "fourier_resize",
    "resample_volume",
    "shift_images",
]


def frequency_axes(shape, d: float = 1.0, rfft: bool = True, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
    """The frequencies along each axis of an FFT of ``shape``, unshifted, in cycles per unit of ``d``.

    One tensor per axis, shaped to broadcast against the others: axis ``i`` of ``(n_0, .., n_k)``
    is ``(1, .., n_i, .., 1)``; with ``rfft`` the last axis has ``n_k // 2 + 1`` entries (the
    half spectrum of ``rfftn``). ``dtype=None`` is torch's default.
    """
    nd = len(shape)
    axes = []
    for i, n in enumerate(shape):
        freq = torch.fft.rfftfreq if rfft and i == nd - 1 else torch.fft.fftfreq
        f = freq(int(n), d=d, device=device, dtype=dtype)  # (n_i,)
        axes.append(f.reshape((1,) * i + (-1,) + (1,) * (nd - 1 - i)))
    return tuple(axes)


def frequency_radius_grid(shape, d: float = 1.0, rfft: bool = True, device=None, dtype=None) -> torch.Tensor:
    """``|k|`` of each coefficient of an FFT of ``shape`` (see :func:`frequency_axes` for units
    and layout): ``(n_0, .., n_k // 2 + 1)`` with ``rfft``, else ``shape``."""
    axes = frequency_axes(shape, d=d, rfft=rfft, device=device, dtype=dtype)
    k2 = axes[0] ** 2
    for f in axes[1:]:
        k2 = k2 + f**2
    return torch.sqrt(k2)


@functools.lru_cache(maxsize=16)
def _radius_grid(shape: tuple, d: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`frequency_radius_grid` (rfft), made once per shape, unit, device and dtype (a filter
    applied every step at a moving cutoff). Read only."""
    return frequency_radius_grid(shape, d=d, device=device, dtype=dtype)


def raised_cosine(t):
    """The soft edge of every filter and mask: 1 at ``t <= 0``, ``(1 + cos(pi t)) / 2`` between,
    0 at ``t >= 1``. ``t`` a torch tensor or a numpy array (the result is of the same kind)."""
    if isinstance(t, torch.Tensor):
        return 0.5 * (1.0 + torch.cos(math.pi * t.clamp(0.0, 1.0)))
    return 0.5 * (1.0 + np.cos(np.pi * np.clip(t, 0.0, 1.0)))


def lowpass(x: torch.Tensor, cutoff: float, edge_width: float = 0.0, ndim: int = 3, d: float = 1.0) -> torch.Tensor:
    """Low-pass the last ``ndim`` axes of ``x (..., *shape)``.

    Frequencies ``|k| <= cutoff`` pass unchanged; with ``edge_width > 0`` a raised cosine falls
    from 1 to 0 over ``(cutoff, cutoff + edge_width]``, else the cut is hard. ``cutoff`` and
    ``edge_width`` are in cycles per unit of ``d`` (``d=1/N``: Fourier pixels of an ``N`` box;
    ``d=apix``: 1/Å). Linear and self-adjoint, so differentiable.
    """
    shape = tuple(x.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    filt = _lowpass_filter(shape, float(d), float(cutoff), float(edge_width), x.device, x.dtype)  # (*shape[:-1], n//2+1)
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * filt, s=shape, dim=dims)


@functools.lru_cache(maxsize=2)  # the band of the step at hand (and one before): two maps' worth at most
def _lowpass_filter(shape: tuple, d: float, cutoff: float, edge_width: float, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """:func:`lowpass`'s filter on the rfft grid, made once per cutoff (a training step band-limits
    the map several times at its band). Read only."""
    k = _radius_grid(shape, d, device, dtype)
    return raised_cosine((k - cutoff) / edge_width) if edge_width > 0 else (k <= cutoff).to(k.dtype)


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


def _centre_crop_pad_3d(x: torch.Tensor, box_out: int) -> torch.Tensor:
    """``x (..., N, N, N)`` cut or zero-padded in real space to ``box_out``, voxel ``N // 2`` kept at ``box_out // 2``."""
    n_in = x.shape[-1]
    if n_in == box_out:
        return x
    out = x.new_zeros(x.shape[:-3] + (box_out,) * 3)
    shift = box_out // 2 - n_in // 2  # output index of input voxel 0
    lo_in, hi_in = max(0, -shift), min(n_in, box_out - shift)
    src = slice(lo_in, hi_in)
    dst = slice(lo_in + shift, hi_in + shift)
    out[..., dst, dst, dst] = x[..., src, src, src]
    return out


def _padded_box(n_in: int, ratio: float, max_grow: float = 0.5) -> int:
    """The box ``M >= n_in`` (up to ``(1 + max_grow) n_in``) for which ``M * ratio`` is nearest a
    whole number, relatively: padding to it makes a Fourier resize hit the wanted pixel size."""
    best, best_err = n_in, float("inf")
    for m in range(n_in, int(n_in * (1 + max_grow)) + 1):
        err = abs(m * ratio - round(m * ratio)) / (m * ratio)
        if err < best_err - 1e-12:
            best, best_err = m, err
        if best_err < 1e-6:
            break
    return best


def resample_volume(volume: torch.Tensor, apix_in: float, box_out: int, apix_out: float) -> tuple[torch.Tensor, float]:
    """A map ``volume (..., N, N, N)`` at ``apix_in`` Å resampled to ``(..., box_out, box_out, box_out)`` at
    ``apix_out`` Å, the centre voxel (``N // 2``) staying at the centre. Returns ``(volume, apix)``:
    ``apix`` is the pixel size reached: ``apix_out`` within a relative ``1 / (2 n)`` (``n`` the resized
    box below), usually far closer; callers compare it with the size they need.

    Fourier resampling (no interpolation blur): zero-padded in real space to a box ``M`` for which
    ``M * apix_in / apix_out`` is a whole number ``n``, Fourier-cropped or padded ``M -> n`` (the same
    extent in Å at the new pixel size; a coarser one loses only frequencies it cannot hold), then
    cut or zero-padded in real space to ``box_out``. Values are preserved, as in :func:`fourier_resize`.
    """
    if not (apix_in > 0 and apix_out > 0 and math.isfinite(apix_in) and math.isfinite(apix_out)):
        raise ValueError(f"resample_volume: pixel sizes must be positive, got {apix_in} and {apix_out} Å")
    if box_out < 2:
        raise ValueError(f"resample_volume: box_out must be >= 2, got {box_out}")
    n_in = volume.shape[-1]
    ratio = apix_in / apix_out
    if abs(ratio - 1.0) < 1e-9:
        return _centre_crop_pad_3d(volume, box_out), float(apix_in)
    m = _padded_box(n_in, ratio)
    n = max(2, round(m * ratio))
    resized = fourier_resize(_centre_crop_pad_3d(volume, m), n, 3)  # (..., n, n, n) at m * apix_in / n Å
    return _centre_crop_pad_3d(resized, box_out), m * apix_in / n


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
    ky, kx = frequency_axes((h, w), device=images.device, dtype=rdtype)  # (h, 1), (1, w//2+1) cycles/pixel
    phase = -2 * math.pi * (kx * s[..., 0, None, None] + ky * s[..., 1, None, None])  # (b, h, w//2+1)
    ft = torch.fft.rfftn(images, dim=(-2, -1))
    return torch.fft.irfftn(ft * torch.polar(torch.ones_like(phase), phase), s=(h, w), dim=(-2, -1))
