"""Exact images and volumes of Gaussian atoms, by separable Gaussians.

An atom of unit mass at ``p`` with width ``sigma`` has the density
``g(x) g(y) g(z)`` with ``g`` the normalised 1-D Gaussian (per voxel), so summing the
rendered volume along any grid axis gives exactly the rendered projection (per pixel):
both are sums of outer products of 1-D profiles, computed as matrix products.
Imports torch only.
"""

from __future__ import annotations

import math

import torch

__all__ = ["gaussian_profiles", "project_atoms", "render_volume"]


def gaussian_profiles(
    centre_px: torch.Tensor, n: int, sigma_px: float, radius_sigma: float = 4.5, workspace: dict | None = None
) -> torch.Tensor:
    """Normalised 1-D Gaussians sampled on pixels ``0..n-1``, cut at ``radius_sigma`` sigmas.

    ``centre_px (...)`` continuous pixel positions -> ``(..., n)``. Only a window of
    ``2 * ceil(radius_sigma * sigma_px) + 2`` pixels around each centre is evaluated (the
    exponentials are the cost) and scattered into a zero row; the tail left out is below
    ``exp(-radius_sigma**2 / 2)`` of the peak (4e-5 at the default). ``workspace``: a dict
    in which the padded rows are kept between calls of the same shape (fresh large
    allocations page-fault every time; reusing them is about twice as fast).
    """
    h = int(math.ceil(radius_sigma * sigma_px))
    width = 2 * h + 2
    base = torch.floor(centre_px)  # (...)
    m = torch.arange(width, device=centre_px.device, dtype=centre_px.dtype)  # (width,)
    d = (base - centre_px - h)[..., None] + m  # (..., width) pixel minus centre
    vals = d.square_().mul_(-0.5 / sigma_px**2).exp_().mul_(1.0 / (math.sqrt(2 * math.pi) * sigma_px))
    # scatter into a row padded by `width` on both sides; far-off windows clamp into the pads
    idx = (base.long() - h + width)[..., None] + m.long()  # (..., width)
    idx = idx.clamp_(0, n + 2 * width - 1)
    shape = centre_px.shape + (n + 2 * width,)
    row = None if workspace is None else workspace.get(shape)
    if row is None or row.device != centre_px.device or row.dtype != centre_px.dtype:
        row = torch.zeros(shape, device=centre_px.device, dtype=centre_px.dtype)
        if workspace is not None:
            workspace[shape] = row
    else:
        row.zero_()
    row.scatter_(-1, idx, vals)
    return row[..., width : width + n]


def project_atoms(
    xyz_a: torch.Tensor,
    rotations: torch.Tensor,
    shifts_a: torch.Tensor,
    box: int,
    apix: float,
    sigma_a: float,
    weights: torch.Tensor | None = None,
    workspace: dict | None = None,
) -> torch.Tensor:
    """Project Gaussian atoms exactly (axes, poses and shifts as in docs/conventions.md).

    Parameters
    ----------
    xyz_a : (b, a, 3) or (a, 3) atom positions in Å (xyz, origin at voxel ``box // 2``).
    rotations : (b, 3, 3) RELION ``A``; an atom at ``r`` lands at ``(A r)_xy - shift``.
    shifts_a : (b, 2) RELION origin ``(x, y)`` in Å.
    weights : (a,) atom masses (default 1).
    workspace : optional dict of scratch buffers reused across calls (see gaussian_profiles).

    Returns
    -------
    (b, box, box) images ``(b, h, w)``: the line integral of the density, per pixel.
    """
    if xyz_a.ndim == 2:
        xyz_a = xyz_a.expand(rotations.shape[0], -1, -1)
    q = xyz_a @ rotations.transpose(-1, -2)  # (b, a, 3): A r for each atom
    c = box // 2
    px = c + (q[..., 0] - shifts_a[:, None, 0]) / apix  # (b, a)
    py = c + (q[..., 1] - shifts_a[:, None, 1]) / apix  # (b, a)
    sigma_px = sigma_a / apix
    ws_x = None if workspace is None else workspace.setdefault("x", {})
    ws_y = None if workspace is None else workspace.setdefault("y", {})
    gx = gaussian_profiles(px, box, sigma_px, workspace=ws_x)  # (b, a, w)
    gy = gaussian_profiles(py, box, sigma_px, workspace=ws_y)  # (b, a, h)
    if weights is not None:
        gx = gx * weights[:, None]
    return gy.transpose(1, 2) @ gx  # (b, h, w)


def render_volume(
    xyz_a: torch.Tensor,
    box: int,
    apix: float,
    sigma_a: float,
    weights: torch.Tensor | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """Render Gaussian atoms ``(a, 3)`` (xyz Å) into a ``(d, h, w)`` density (per voxel).

    ``weights (a,)`` scales each atom (e.g. to average several states). Work is chunked
    over atoms to keep memory at ``chunk * box**2`` floats.
    """
    c = box // 2
    sigma_px = sigma_a / apix
    vol = torch.zeros(box * box, box, dtype=xyz_a.dtype, device=xyz_a.device)  # (d*h, w)
    ws: dict = {}  # one set of scratch rows for all full chunks
    for s in range(0, xyz_a.shape[0], chunk):
        p = xyz_a[s : s + chunk] / apix + c  # (a', 3) pixel positions, xyz
        gx = gaussian_profiles(p[:, 0], box, sigma_px, workspace=ws.setdefault("x", {}))  # (a', w)
        gy = gaussian_profiles(p[:, 1], box, sigma_px, workspace=ws.setdefault("y", {}))  # (a', h)
        gz = gaussian_profiles(p[:, 2], box, sigma_px, workspace=ws.setdefault("z", {}))  # (a', d)
        if weights is not None:
            gx = gx * weights[s : s + chunk, None]
        gzy = (gz[:, :, None] * gy[:, None, :]).reshape(p.shape[0], box * box)  # (a', d*h)
        vol += gzy.T @ gx
    return vol.reshape(box, box, box)  # (d, h, w)
