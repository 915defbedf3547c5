"""Rigid reconstruction: Fourier back-projection of CTF-weighted images, Wiener filter.

A room of ``reconstruct``; it may import ``ops``.

For each particle ``i`` with pose ``A_i``, shift ``s_i`` and CTF ``C_i``:

    values(k)  += sum_i  C_i(k) F_i(k)      (F_i: the re-centred image's transform)
    weights(k) += sum_i  C_i(k)^2
    V(k) = values(k) / (weights(k) + tau)

with the central slices placed by trilinear gridding in a ``pad_factor``-oversampled
3D transform. ``(values, weights)`` pairs from chunks add up, so
the caller streams particles and normalises once. The gridding is
our own (``index_add_`` of the 8 trilinear corners; several times faster on the CPU than
torch-fourier-slice's insertion, which it matches) in an unshifted rfft layout.

The CTF lives on the particle's ``N``-grid; to bring it onto the padded grid exactly as
the image data is brought there, ``C^2`` goes through the same real-space
pad-and-transform path as ``irfft(C F)``: its point-spread function is padded and
transformed (a second channel of the same insertion).

The output obeys docs/conventions.md: a voxel ``r`` projects to ``(A r)_xy - shift``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_flex3d.ops.ctf import particle_ctf
from napari_flex3d.ops.fourier import fourier_crop_2d, frequency_axes, frequency_radius_grid, shift_images
from napari_flex3d.ops.project import as_rotations

__all__ = [
    "reconstruct_from_images",
    "finalize_reconstruction",
    "reconstruct_rigid",
    "reconstruct_half_maps",
    "half_set_indices",
]


_MAX_POINTS = 4_000_000  # slice samples gridded at once (about 0.5 GB of temporaries)


def _padded_box(box: int, pad_factor: float) -> tuple[int, int]:
    p = int((box * (pad_factor - 1.0)) // 2)
    return p, box + 2 * p


def insert_slices(slices: torch.Tensor, rotations: torch.Tensor, m: int) -> torch.Tensor:
    """Trilinear insertion of central slices into a 3D rfft.

    ``slices (b, c, m, m // 2 + 1)`` unshifted 2D rffts, ``rotations (b, 3, 3)`` our ``A``
    -> ``(c, m, m, m // 2 + 1)`` unshifted 3D rfft (sum over ``b``). The 2D frequency
    ``(kx, ky)`` of image ``i`` is the 3D frequency ``A_i^T (kx, ky, 0)`` (Fourier slice
    theorem for ``image(p) = integral of V at A^T (p, z)``). Points with negative 3D x
    frequency go in as their complex conjugate at ``-k``; only ``|k| <= 1/2`` is used.
    """
    b, c = slices.shape[:2]
    per_image = int(m * (m // 2 + 1) * 0.8)  # points kept per image (the disc |k| <= m/2)
    step = max(1, _MAX_POINTS // per_image)
    if b > step:  # bound the (b*p, ...) temporaries: insert in sub-batches and sum
        return sum(insert_slices(slices[i : i + step], rotations[i : i + step], m) for i in range(0, b, step))
    dev = slices.device
    rdtype = slices.real.dtype
    ky, kx = (f * m for f in frequency_axes((m, m), device=dev, dtype=rdtype))  # grid units
    ky, kx = torch.broadcast_tensors(ky, kx)  # (m, m//2+1) each
    keep = (kx**2 + ky**2) <= (m / 2) ** 2  # (m, m//2+1)
    kx, ky = kx[keep], ky[keep]  # (p,)
    vals = slices[:, :, keep]  # (b, c, p)
    rot = rotations.to(rdtype)
    # 3D xyz = A^T (kx, ky, 0) = kx * A[0, :] + ky * A[1, :]
    k3 = kx[None, :, None] * rot[:, None, 0, :] + ky[None, :, None] * rot[:, None, 1, :]  # (b, p, 3) xyz
    neg = k3[..., 0] < 0  # (b, p)
    k3 = torch.where(neg[..., None], -k3, k3)
    vals = torch.where(neg[:, None, :], vals.conj(), vals)  # (b, c, p)
    vals = vals.permute(0, 2, 1).reshape(-1, c)  # (b*p, c)
    k3 = k3.reshape(-1, 3)  # (b*p, 3) xyz grid units
    base = torch.floor(k3)
    frac = k3 - base  # (b*p, 3)
    base = base.long()
    w_half = m // 2 + 1
    vals = torch.view_as_real(vals).reshape(-1, 2 * c)  # (b*p, c*2) real: index_add_ of reals works everywhere
    out = torch.zeros(m * m * w_half, 2 * c, dtype=rdtype, device=dev)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix = base[:, 0] + dx
                iy = (base[:, 1] + dy) % m
                iz = (base[:, 2] + dz) % m
                wgt = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                wgt = wgt * (frac[:, 2] if dz else 1 - frac[:, 2])
                wgt = torch.where(ix < w_half, wgt, torch.zeros_like(wgt))
                flat = (iz * m + iy) * w_half + ix.clamp(max=w_half - 1)  # (b*p,)
                out.index_add_(0, flat, vals * wgt[:, None])
    out = torch.view_as_complex(out.reshape(-1, c, 2).contiguous())  # (m*m*w_half, c)
    return out.T.reshape(c, m, m, w_half)


def reconstruct_from_images(
    images: torch.Tensor,
    rotations,
    shifts_a=None,
    ctf: torch.Tensor | None = None,
    apix: float = 1.0,
    pad_factor: float = 2.0,
    ctf_premultiplied: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-project a chunk of particle images into ``(values, weights)``.

    Parameters
    ----------
    images
        ``(b, N, N)`` raw particle images (contrast as stored).
    rotations
        ``(b, 3, 3)`` poses ``A`` (numpy or torch).
    shifts_a
        ``(b, 2)`` RELION origins (x, y) in Å, or None.
    ctf
        ``(b, N, N // 2 + 1)`` CTFs (unshifted rfft layout, :func:`ops.ctf.ctf_2d`), or
        None (no CTF: weights count the slices).
    apix
        Pixel size in Å of ``images``.
    pad_factor
        Oversampling of the 3D transform (2 is accurate).
    ctf_premultiplied
        True if the images already carry one factor of the CTF (RELION's
        ``rlnCtfDataAreCtfPremultiplied``): then the data are not multiplied again.

    Returns
    -------
    values
        ``(M, M, M // 2 + 1)`` complex, ``M = N + 2 * int(N * (pad_factor - 1) // 2)``,
        unshifted rfft layout (DC at ``[0, 0, 0]``) of a map centred at ``M // 2``.
    weights
        ``(M, M, M // 2 + 1)`` real, summed ``C^2`` (gridded like the values).
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (b, N, N), got {tuple(images.shape)}")
    b, n, _ = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    images = images.to(dtype)
    rot = as_rotations(rotations, images)  # (b, 3, 3)
    if shifts_a is not None:
        images = shift_images(images, torch.as_tensor(shifts_a, device=images.device).to(dtype), apix)  # re-centred
    if ctf is None:
        ctf = torch.ones(b, n, n // 2 + 1, device=images.device, dtype=dtype)
    if ctf.shape != (b, n, n // 2 + 1):
        raise ValueError(f"ctf must be {(b, n, n // 2 + 1)}, got {tuple(ctf.shape)}")
    ctf = ctf.to(images.device, dtype)
    ft = torch.fft.rfftn(images, dim=(-2, -1))  # (b, n, n//2+1)
    data = ft if ctf_premultiplied else ft * ctf
    data = torch.fft.irfftn(data, s=(n, n), dim=(-2, -1))  # (b, n, n) CTF-weighted image
    psf = torch.fft.fftshift(torch.fft.irfftn(ctf**2, s=(n, n), dim=(-2, -1)), dim=(-2, -1))  # (b, n, n) centred
    both = torch.stack([data, psf], dim=1)  # (b, c=2, n, n)
    p, m = _padded_box(n, pad_factor)
    if p > 0:
        both = F.pad(both, [p] * 4)  # (b, 2, m, m)
    both = torch.fft.ifftshift(both, dim=(-2, -1))  # centre to array origin
    both = torch.fft.rfftn(both, dim=(-2, -1))  # (b, 2, m, m//2+1) unshifted
    dft = insert_slices(both, rot, m)  # (2, m, m, m//2+1)
    return dft[0], dft[1].real


def finalize_reconstruction(
    values: torch.Tensor,
    weights: torch.Tensor,
    box: int,
    wiener_constant: float | None = None,
    wiener_fraction: float = 0.02,
) -> torch.Tensor:
    """Normalise accumulated ``(values, weights)`` into a real-space ``(box, box, box)`` map.

    ``V = values / (weights + tau)``; ``tau = wiener_constant`` (a constant 1/SNR, in units
    of summed ``C^2``) if given, else ``wiener_fraction`` times the mean weight inside
    the sphere of the padded transform that the original box's Nyquist reaches.
    """
    m = values.shape[-3]
    p = (m - box) // 2
    w = weights.clamp(min=0)
    if wiener_constant is None:
        inside = frequency_radius_grid((m, m, m), device=w.device) <= 0.5 * box / m  # cycles/voxel
        tau = wiener_fraction * float(w[inside].mean()) if bool(inside.any()) else 1.0
        tau = max(tau, 1e-12)
    else:
        tau = float(wiener_constant)
    dft = values / (w + tau)
    vol = torch.fft.irfftn(dft, s=(m, m, m), dim=(-3, -2, -1))
    vol = torch.fft.fftshift(vol, dim=(-3, -2, -1))  # centre at m // 2
    sinc = torch.sinc(torch.fft.fftshift(torch.fft.fftfreq(m, device=vol.device, dtype=vol.dtype))) ** 2  # (m,)
    vol = vol / (sinc[:, None, None] * sinc[None, :, None] * sinc[None, None, :])  # trilinear gridding correction
    if p > 0:
        vol = vol[p : p + box, p : p + box, p : p + box]
    return vol


def _premultiplied(ps, idx) -> bool:
    flags = {bool(getattr(ps.optics[int(g)], "ctf_premultiplied", False)) for g in np.asarray(ps.optics_group)[idx]}
    if len(flags) > 1:
        raise ValueError("optics groups disagree on rlnCtfDataAreCtfPremultiplied; reconstruct them separately")
    return flags.pop() if flags else False


def reconstruct_rigid(
    ps,
    idx=None,
    box: int | None = None,
    apix: float | None = None,
    chunk_size: int = 256,
    pad_factor: float = 2.0,
    wiener_constant: float | None = None,
    wiener_fraction: float = 0.02,
    use_ctf: bool = True,
    device=None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Rigid reconstruction from a ``ParticleSet`` with known poses and CTF.

    Parameters
    ----------
    ps
        ``ParticleSet`` (``images``, ``rotations``, ``shifts_a``, CTF fields, ``optics``).
    idx
        Particles to use (default all).
    box
        Output box; images are Fourier-cropped from ``ps.box`` to it (default ``ps.box``).
    apix
        Pixel size of the output; must equal ``ps.apix * ps.box / box`` if given.
    chunk_size
        Particles read and back-projected at a time.
    pad_factor, wiener_constant, wiener_fraction
        See :func:`reconstruct_from_images` and :func:`finalize_reconstruction`.
    use_ctf
        False to ignore the CTF (e.g. images already phase-flipped).

    Returns
    -------
    ``(box, box, box)`` real-space map (z, y, x), voxel size ``ps.apix * ps.box / box``.
    """
    values, weights, box = _accumulate(ps, idx, box, apix, chunk_size, pad_factor, use_ctf, device, dtype)
    return finalize_reconstruction(values, weights, box, wiener_constant, wiener_fraction)


def _accumulate(ps, idx, box, apix, chunk_size, pad_factor, use_ctf, device, dtype):
    idx = np.arange(len(ps)) if idx is None else np.asarray(idx)
    if idx.size == 0:
        raise ValueError("no particles to reconstruct from")
    box_in = int(ps.box)
    box = box_in if box is None else int(box)
    apix_out = float(ps.apix) * box_in / box
    if apix is not None and abs(float(apix) - apix_out) > 1e-4 * apix_out:
        raise ValueError(f"apix {apix} does not match a Fourier crop of {ps.apix} Å x {box_in} px to {box} px")
    device = torch.device("cpu") if device is None else torch.device(device)
    rotations = np.asarray(ps.rotations)
    shifts = np.asarray(ps.shifts_a)
    premult = _premultiplied(ps, idx)
    values = weights = None
    for start in range(0, idx.size, chunk_size):
        chunk = idx[start : start + chunk_size]
        images = torch.as_tensor(np.array(ps.images(chunk), dtype=np.float32), device=device).to(dtype)
        if box != box_in:
            images = fourier_crop_2d(images, box)
        ctf = particle_ctf(ps, chunk, box=box, apix=apix_out, device=device, dtype=dtype) if use_ctf else None
        v, w = reconstruct_from_images(
            images,
            torch.as_tensor(rotations[chunk], device=device).to(dtype),
            torch.as_tensor(shifts[chunk], device=device).to(dtype),
            ctf,
            apix_out,
            pad_factor=pad_factor,
            ctf_premultiplied=premult and use_ctf,
        )
        values = v if values is None else values + v
        weights = w if weights is None else weights + w
    return values, weights, box


def half_set_indices(ps, idx=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split particles into the two gold-standard halves.

    Uses ``ps.half_set`` (0/1) where known; particles with -1 are split at random
    (``seed``) into halves of equal size.
    """
    idx = np.arange(len(ps)) if idx is None else np.asarray(idx)
    half = getattr(ps, "half_set", None)
    half = np.full(len(ps), -1) if half is None else half  # (n,): only sized when it is missing
    half = np.asarray(half, dtype=np.int64)[idx]
    unknown = np.nonzero(half < 0)[0]
    if unknown.size:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(unknown)
        half = half.copy()
        half[perm[: perm.size // 2]] = 0
        half[perm[perm.size // 2 :]] = 1
    return idx[half == 0], idx[half == 1]


def reconstruct_half_maps(ps, idx=None, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent rigid reconstructions from the half sets of :func:`half_set_indices`.

    Keyword arguments go to :func:`reconstruct_rigid`. Returns ``(half_a, half_b)``.
    """
    a, b = half_set_indices(ps, idx, seed)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"a half set is empty ({a.size} / {b.size} particles)")
    return reconstruct_rigid(ps, a, **kwargs), reconstruct_rigid(ps, b, **kwargs)
