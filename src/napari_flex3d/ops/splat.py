"""The fused convect-project operator (docs/model.md): the hot loop of 3DFlex.

A room of ``ops``; it imports torch and :mod:`.fourier`.

Each canonical voxel ``y`` with value ``V(y)`` has already been moved to ``p = y + u(y)``
(xyz Å, centred as in docs/conventions.md). For particle ``i`` with pose ``A_i`` and shift
``s_i`` the point lands at pixel coordinates

    x = ((A_i p)_x - s_x) / apix + box // 2,    y = ((A_i p)_y - s_y) / apix + box // 2

and deposits ``V(y) k(q_x - x) k(q_y - y)`` into every pixel ``q`` of the image (indexed
``[row = y, col = x]``), with ``k`` a cubic B-spline (support 4) or, as the fast option, the
linear "hat" kernel (support 2). Integrating a separable 3D kernel along the view axis
leaves this 2D kernel, so convection and projection are one operator and the convected
volume ``W`` is never stored. The same splat in 3D (:func:`convect_volume`) gives ``W``.

Implementation (pure torch, CPU and GPU):

- Each point scatters rows of ``K`` weights (the ``K`` x-taps) into a ``(L, K)`` buffer
  with ``scatter_add_``, once per outer tap (``K`` y-taps in 2D, ``K**2`` (z, y)-taps in 3D);
  the outer taps are constant offsets of one flat index, realised as views of the buffer,
  so indices are computed once per point. A strided sum folds the ``K`` columns into the
  image.
- The image is padded by ``K`` pixels on each side and every point's first tap is clamped
  into the padded range: points (or taps) that fall outside the box land in the padding,
  which is cropped away, so they are **dropped** exactly (zero contribution, zero
  gradient) without a mask.
- Backward recomputes the kernel weights and their derivatives from the saved inputs
  (nothing per tap is stored) and gathers the padded gradient image; it returns
  gradients for the values, the points (hence the flow), the rotations and the shifts.
  Particles are processed in chunks, so the temporary memory is bounded: the operator
  needs ``O(b * box**2 + n)`` memory besides its inputs.
- Double backward is not supported (``once_differentiable``).

Optional ``deconvolve=True`` divides the result's Fourier transform by the kernel's
transfer function (``sinc(f)**4`` per axis for the cubic B-spline, ``sinc(f)**2`` for the
linear one, ``f`` in cycles per pixel), undoing the blur of the splat kernel; it is a
fixed linear filter, so gradients flow through it by ordinary autograd.

Accuracy with zero flow, against the reference projector ``ops.project.project``
(Fourier slice, pad 2) on a band-limited random 48³ volume, 5 random poses, Fourier ring
correlation at 0.8 Nyquist (``benchmarks/convect_project.py``): cubic 0.9986 (lowest
shell up to there 0.997), cubic deconvolved 0.9991, linear 0.991 (lowest 0.980).
Speed and memory against a materialise-rotate-sum path: see the benchmark.
"""

from __future__ import annotations

import itertools

import torch
from torch.autograd.function import once_differentiable

from .fourier import frequency_axes

__all__ = ["convect_project", "convect_volume", "kernel_transfer", "KERNELS"]

#: Kernel name -> number of taps per axis (support width in pixels).
KERNELS = {"cubic": 4, "linear": 2}

# Upper bound on (particles x points) handled at once; bounds the temporaries (about 30
# tensors of this many elements) whatever the batch: ~250 MB on the CPU, ~500 MB on a GPU.
# Each chunk costs about 125 operator calls (launches on a GPU), so larger chunks mean fewer:
# a 1,024-particle, 4,000-point cubic splat at box 32 took 29-31 s in chunks of 2**18 and
# 7-9 s in chunks of 2**21 on the 2 shared cores of the development machine (under load).
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 22}


# Float32 holds integers exactly below 2**24: flat indices below it are summed in float.
_FLOAT_INDEX_LIMIT = 1 << 24


def _chunk_particles(n: int, device: torch.device) -> int:
    """How many particles of ``n`` points each to splat at once."""
    return max(1, _CHUNK_ELEMENTS.get(device.type, 1 << 18) // max(n, 1))


def _taps(kernel: str) -> int:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    return KERNELS[kernel]


def _axis_weights(coord: torch.Tensor, kernel: str, box: int, derivative: bool):
    """Kernel weights along one axis, recomputed in forward and backward.

    coord: ``(m,)`` continuous pixel coordinates (consumed: modified in place). Returns
    ``first (m,)`` (float; the first tap's pixel, clamped into the padded range
    ``[-K, box]``), ``w`` (list of ``K`` tensors ``(m,)``, tap ``j`` at pixel ``first + j``)
    and ``dw`` (their derivatives d w / d coord, or None).
    """
    k = KERNELS[kernel]
    first = torch.floor(coord)
    f = coord.sub_(first)  # (m,) fractional part in [0, 1)
    if kernel == "cubic":
        # Taps at floor-1 .. floor+2 get beta3(f + 1), beta3(f), beta3(f - 1), beta3(f - 2).
        f2 = f * f
        g = 1.0 - f
        w0 = g * g  # (1 - f)^2, finished below
        dw0 = w0 * -0.5 if derivative else None
        w0.mul_(g).mul_(1.0 / 6.0)  # (1 - f)^3 / 6
        w3 = (f2 * f).mul_(1.0 / 6.0)  # f^3 / 6
        w1 = (f * 0.5).sub_(1.0).mul_(f2).add_(2.0 / 3.0)  # 2/3 - f^2 + f^3 / 2
        w2 = 1.0 - w0 - w1 - w3  # partition of unity
        w = [w0, w1, w2, w3]
        if derivative:
            dw3 = f2 * 0.5
            dw1 = (f * 1.5).sub_(2.0).mul_(f)  # 3 f^2 / 2 - 2 f
            dw2 = -(dw0 + dw1 + dw3)
            dw = [dw0, dw1, dw2, dw3]
        else:
            dw = None
        first.sub_(1.0)
    else:
        w = [1.0 - f, f]
        dw = [torch.full_like(f, -1.0), torch.ones_like(f)] if derivative else None
    # A point whose first tap is below -K or above box is entirely outside the image;
    # clamped, all its taps land in the padding, which is cropped: dropping is exact.
    first.clamp_(-k, box)
    return first, w, dw


def _axis_coords(points: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, apix: float, box: int, axis: int):
    """Continuous pixel coordinate along one axis, ``(c * n,)``.

    points ``(1|c, n, 3)`` xyz Å; matrix ``(c, D, 3)``; offset ``(c, D)`` Å.
    ``coord = (matrix[:, axis] . p - offset[:, axis]) / apix + box // 2``.
    """
    row = matrix[:, axis : axis + 1, :] / apix  # (c, 1, 3)
    bias = (box // 2) - offset[:, axis, None] / apix  # (c, 1)
    # (c, 1, 3) @ (c, 3, n): BLAS reads the transposed points in place; the other order,
    # (c, n, 3) @ (c, 3, 1), is a slow matrix-vector path (~10x on CPU).
    if points.shape[0] == 1:
        coord = torch.mm(row[:, 0, :], points[0].T)  # (c, n)
    else:
        coord = torch.bmm(row, points.transpose(1, 2))[:, 0, :]  # (c, n)
    return coord.add_(bias).reshape(-1)


def _chunk_weights(points, matrix, offset, apix: float, box: int, kernel: str, derivative: bool):
    """Flat first-tap index into ``c`` stacked padded grids, and per-axis weights.

    Returns ``base (c*n,) int64`` and lists over axes (x, y[, z]) of weights and
    derivatives (each a list of ``K`` tensors ``(c*n,)``).
    """
    c, ndim = matrix.shape[0], matrix.shape[1]
    k = KERNELS[kernel]
    pad_box = box + 2 * k
    grid_size = pad_box**ndim
    base = None
    weights, dweights = [], []
    for axis in range(ndim):  # x is the fastest axis of the flat grid
        coord = _axis_coords(points, matrix, offset, apix, box, axis)
        first, w, dw = _axis_weights(coord, kernel, box, derivative)
        weights.append(w)
        dweights.append(dw)
        base = first if base is None else base.add_(first, alpha=float(pad_box**axis))
    # Float32 holds integers exactly up to 2**24; beyond, do the index sum in int64.
    n = base.shape[0] // c
    shift = k * sum(pad_box**a for a in range(ndim))  # padding offset of pixel (0, 0[, 0])
    if c * grid_size < _FLOAT_INDEX_LIMIT or base.dtype == torch.float64:
        base = base.view(c, n).add_(torch.arange(c, device=base.device, dtype=base.dtype)[:, None], alpha=grid_size)
        base = base.reshape(-1).add_(shift).long()
    else:
        batch = torch.arange(c, device=base.device)[:, None] * grid_size + shift  # (c, 1)
        base = (base.long().view(c, n) + batch).reshape(-1)
    return base, weights, dweights


def _outer_taps(ndim: int, pad_box: int, k: int):
    """Yield ``(flat offset, taps)`` over all taps of the axes after x (taps[0] is y, taps[1] z)."""
    for taps in itertools.product(range(k), repeat=ndim - 1):
        yield sum(t * pad_box ** (a + 1) for a, t in enumerate(taps)), taps


class _ConvectSplat(torch.autograd.Function):
    """Splat ``values`` at ``(matrix @ points - offset) / apix + box // 2`` into a D-dim grid."""

    @staticmethod
    def forward(ctx, values, points, matrix, offset, box: int, apix: float, kernel: str):
        # values (1|b, n); points (1|b, n, 3); matrix (b, D, 3); offset (b, D)
        b, ndim = matrix.shape[0], matrix.shape[1]
        n = values.shape[-1]
        k = KERNELS[kernel]
        pad_box = box + 2 * k
        grid_size = pad_box**ndim
        # One flat padded grid per particle; the K - 1 trailing zeros keep every x-tap in range.
        out = values.new_zeros(b * grid_size + k)
        chunk = _chunk_particles(n, values.device)
        for start in range(0, b, chunk):
            stop = min(b, start + chunk)
            c = stop - start
            pts = points if points.shape[0] == 1 else points[start:stop]  # (1|c, n, 3), any strides
            vals = values if values.shape[0] == 1 else values[start:stop]  # (1|c, n)
            base, weights, _ = _chunk_weights(pts, matrix[start:stop], offset[start:stop], apix, box, kernel, False)
            weights[-1] = [(w.view(c, n) * vals).view(-1) for w in weights[-1]]  # fold the values in once
            grid = out[start * grid_size :]
            for offset_outer, taps in _outer_taps(ndim, pad_box, k):
                scale = _prod([weights[axis + 1][t] for axis, t in enumerate(taps)])  # (c*n,)
                for j in range(k):  # x-taps: consecutive pixels
                    src = weights[0][j] if scale is None else scale * weights[0][j]
                    grid[offset_outer + j :].scatter_add_(0, base, src)
        ctx.save_for_backward(values, points, matrix, offset)
        ctx.box, ctx.apix, ctx.kernel = box, apix, kernel
        out = out[: b * grid_size].view((b,) + (pad_box,) * ndim)
        return out[(slice(None),) + (slice(k, k + box),) * ndim]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        values, points, matrix, offset = ctx.saved_tensors
        box, apix, kernel = ctx.box, ctx.apix, ctx.kernel
        b, ndim = matrix.shape[0], matrix.shape[1]
        n = values.shape[-1]
        k = KERNELS[kernel]
        pad_box = box + 2 * k
        grid_size = pad_box**ndim
        need_v, need_p, need_m, need_o = ctx.needs_input_grad[:4]
        need_coords = need_p or need_m or need_o
        padded = grad_out.new_zeros(b * grid_size + k)
        padded[: b * grid_size].view((b,) + (pad_box,) * ndim)[(slice(None),) + (slice(k, k + box),) * ndim] = grad_out

        g_values = torch.zeros_like(values) if need_v else None
        g_points = torch.zeros_like(points) if need_p else None
        g_matrix = torch.zeros_like(matrix) if need_m else None
        g_offset = torch.zeros_like(offset) if need_o else None
        chunk = _chunk_particles(n, values.device)
        for start in range(0, b, chunk):
            stop = min(b, start + chunk)
            c = stop - start
            pts = points if points.shape[0] == 1 else points[start:stop]  # (1|c, n, 3), any strides
            mat = matrix[start:stop]
            base, weights, dweights = _chunk_weights(pts, mat, offset[start:stop], apix, box, kernel, need_coords)
            grid = padded[start * grid_size :]
            g_w = torch.zeros_like(weights[0][0])  # (c*n,) sum over taps of g * w
            g_c = [torch.zeros_like(g_w) for _ in range(ndim)] if need_coords else None  # d/d coord per axis
            for offset_outer, taps in _outer_taps(ndim, pad_box, k):
                s = ds = None  # sums over the x-taps of g * wx and g * dwx
                for j in range(k):
                    patch = grid[offset_outer + j :].index_select(0, base)  # (c*n,) gradient at this tap
                    s = patch * weights[0][j] if s is None else s.addcmul_(patch, weights[0][j])
                    if need_coords:
                        ds = patch * dweights[0][j] if ds is None else ds.addcmul_(patch, dweights[0][j])
                outer = [weights[a + 1][t] for a, t in enumerate(taps)]
                prod = _prod(outer)
                g_w.add_(s if prod is None else s * prod)
                if need_coords:
                    g_c[0].add_(ds if prod is None else ds * prod)
                    for a, t in enumerate(taps):
                        factor = _prod([dweights[a + 1][t]] + [o for i, o in enumerate(outer) if i != a])
                        g_c[a + 1].addcmul_(s, factor)
            if need_v:
                if values.shape[0] == 1:
                    g_values += g_w.view(c, n).sum(0, keepdim=True)
                else:
                    g_values[start:stop] = g_w.view(c, n)
            if need_coords:
                vals = values if values.shape[0] == 1 else values[start:stop]
                scale = vals.expand(c, n) / apix  # (c, n) d coord / d (A p) times the value
                g_q = torch.stack([gc.view(c, n) * scale for gc in g_c], dim=1)  # (c, D, n) d/d (A p)
                if need_p:
                    if points.shape[0] == 1:
                        g_points[0] += torch.mm(g_q.reshape(c * ndim, n).T, mat.reshape(c * ndim, 3))  # (n, 3)
                    else:
                        g_points[start:stop] = torch.bmm(mat.transpose(1, 2), g_q).transpose(1, 2)  # (c, n, 3)
                if need_m:
                    g_matrix[start:stop] = torch.bmm(g_q, pts.expand(c, n, 3))  # (c, D, 3)
                if need_o:
                    g_offset[start:stop] = -g_q.sum(2)
        return g_values, g_points, g_matrix, g_offset, None, None, None


def _prod(tensors):
    """Elementwise product of a list of tensors (None for an empty list)."""
    if not tensors:
        return None
    out = tensors[0]
    for t in tensors[1:]:
        out = out * t
    return out


def kernel_transfer(box: int, kernel: str, rfft: bool = False, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fourier transfer function of the splat kernel along one axis, ``(box,)`` (or ``(box//2+1,)``).

    ``sinc(f)**4`` for the cubic B-spline, ``sinc(f)**2`` for the linear kernel, ``f`` in
    cycles per pixel (FFT order, DC first).
    """
    power = _taps(kernel)  # the B-spline of order K - 1 is the K-fold box: sinc**K
    (f,) = frequency_axes((box,), rfft=rfft, device=device)  # (box,) or (box//2+1,) cycles/pixel
    return torch.sinc(f).pow(power).to(dtype)


def _deconvolve(grid: torch.Tensor, ndim: int, kernel: str) -> torch.Tensor:
    """Divide the last ``ndim`` axes' spectrum by the kernel's separable transfer function."""
    box = grid.shape[-1]
    dims = tuple(range(-ndim, 0))
    spectrum = torch.fft.rfftn(grid, dim=dims)
    transfer = kernel_transfer(box, kernel, rfft=True, device=grid.device, dtype=grid.dtype)  # (box//2+1,)
    full = kernel_transfer(box, kernel, rfft=False, device=grid.device, dtype=grid.dtype)  # (box,)
    h = transfer
    for _ in range(ndim - 1):
        h = full[:, None] * h[None] if h.ndim == 1 else full.view((-1,) + (1,) * h.ndim) * h[None]
    return torch.fft.irfftn(spectrum / h, s=(box,) * ndim, dim=dims)


def _check_values_points(values: torch.Tensor, points_xyz_a: torch.Tensor, name: str):
    if values.ndim not in (1, 2):
        raise ValueError(f"{name}: values must be (n,) or (b, n), got shape {tuple(values.shape)}")
    if points_xyz_a.ndim not in (2, 3) or points_xyz_a.shape[-1] != 3:
        raise ValueError(f"{name}: points_xyz_a must be (n, 3) or (b, n, 3), got shape {tuple(points_xyz_a.shape)}")
    if points_xyz_a.shape[-2] != values.shape[-1]:
        raise ValueError(
            f"{name}: values has {values.shape[-1]} points but points_xyz_a has {points_xyz_a.shape[-2]}"
        )
    if not values.is_floating_point() or values.dtype != points_xyz_a.dtype:
        raise ValueError(f"{name}: values and points_xyz_a must share one float dtype, got {values.dtype}, {points_xyz_a.dtype}")


def convect_project(
    values: torch.Tensor,
    points_xyz_a: torch.Tensor,
    rotations: torch.Tensor,
    shifts_a: torch.Tensor | None,
    box: int,
    apix: float,
    kernel: str = "cubic",
    deconvolve: bool = False,
) -> torch.Tensor:
    """Project moved voxels into particle images in one fused splat.

    Parameters
    ----------
    values: ``(n,)`` canonical map values ``V(y)`` (shared by all particles) or ``(b, n)``.
    points_xyz_a: ``(n, 3)`` or ``(b, n, 3)`` moved voxel centres ``y + u(y)``, xyz Å, centred
        (voxel ``i`` at ``(i - box//2) * apix``).
    rotations: ``(b, 3, 3)`` poses ``A`` (docs/conventions.md); cast to the values' dtype.
    shifts_a: ``(b, 2)`` (x, y) origin shifts in Å (a point lands at ``(A p)_xy - shift``), or None.
    box, apix: output image size (pixels) and pixel size (Å).
    kernel: ``"cubic"`` (cubic B-spline, support 4) or ``"linear"`` (support 2, faster).
    deconvolve: divide by the kernel's transfer function (see :func:`kernel_transfer`).

    Returns
    -------
    ``(b, box, box)`` images indexed ``[row = y, col = x]``. Points whose kernel footprint
    falls (partly) outside the image lose those taps: they are dropped, not wrapped.
    Differentiable with respect to values, points, rotations and shifts.
    """
    _taps(kernel)
    _check_values_points(values, points_xyz_a, "convect_project")
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"convect_project: rotations must be (b, 3, 3), got shape {tuple(rotations.shape)}")
    b = rotations.shape[0]
    for t, name in ((values, "values"), (points_xyz_a, "points_xyz_a")):
        if t.ndim == (2 if name == "values" else 3) and t.shape[0] not in (1, b):
            raise ValueError(f"convect_project: {name} has batch {t.shape[0]} but rotations has {b}")
    dtype = values.dtype
    matrix = rotations.to(dtype)[:, :2, :]  # (b, 2, 3): only the image-plane rows matter
    if shifts_a is None:
        offset = values.new_zeros((b, 2))
    else:
        if shifts_a.shape != (b, 2):
            raise ValueError(f"convect_project: shifts_a must be ({b}, 2), got shape {tuple(shifts_a.shape)}")
        offset = shifts_a.to(dtype)
    v = values if values.ndim == 2 else values[None]  # (1|b, n)
    p = points_xyz_a if points_xyz_a.ndim == 3 else points_xyz_a[None]  # (1|b, n, 3)
    images = _ConvectSplat.apply(v, p, matrix, offset, int(box), float(apix), kernel)  # (b, box, box)
    return _deconvolve(images, 2, kernel) if deconvolve else images


def convect_volume(
    values: torch.Tensor,
    points_xyz_a: torch.Tensor,
    box: int,
    apix: float,
    kernel: str = "cubic",
    deconvolve: bool = False,
) -> torch.Tensor:
    """Convected volume ``W(x) = sum_y k(x - p(y)) V(y)``: the same splat in 3D.

    values ``(n,)`` or ``(b, n)``; points_xyz_a ``(n, 3)`` or ``(b, n, 3)`` xyz Å, centred.
    Returns ``(box, box, box)`` indexed ``(z, y, x)``, or ``(b, box, box, box)`` if either
    input is batched. Points outside the box are dropped. Differentiable in values and points.
    """
    _taps(kernel)
    _check_values_points(values, points_xyz_a, "convect_volume")
    batched = values.ndim == 2 or points_xyz_a.ndim == 3
    bv = values.shape[0] if values.ndim == 2 else 1
    bp = points_xyz_a.shape[0] if points_xyz_a.ndim == 3 else 1
    if bv != bp and 1 not in (bv, bp):
        raise ValueError(f"convect_volume: values batch {bv} and points batch {bp} differ")
    b = max(bv, bp)
    v = values if values.ndim == 2 else values[None]
    p = points_xyz_a if points_xyz_a.ndim == 3 else points_xyz_a[None]
    matrix = torch.eye(3, dtype=values.dtype, device=values.device).expand(b, 3, 3)
    offset = values.new_zeros((b, 3))
    volume = _ConvectSplat.apply(v, p, matrix, offset, int(box), float(apix), kernel)  # (b, box, box, box)
    if deconvolve:
        volume = _deconvolve(volume, 3, kernel)
    return volume if batched else volume[0]
