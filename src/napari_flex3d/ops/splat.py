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

- A chunk of particles is one scatter: every point adds the weights of all its (y, x) taps
  (``K**2`` numbers, the kernel's weights from one polynomial matmul) to the row of its
  first tap in a buffer of ``K**2`` planes; a strided sum over the planes folds them into
  the image (each pixel reads plane ``t`` at the row ``t`` taps before it). In 3D the z-taps
  loop (``K`` scatters), or, when a buffer of ``K**2`` planes of the volume would not fit
  the chunk's budget, the (z, y)-taps loop over planes of x-taps. Indices are computed
  once per point. The backward is the matching gather: one ``index_select`` of every tap
  of a chunk from a strided view of the padded gradient.
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

import functools
import itertools

import torch
from torch.autograd.function import once_differentiable

from .fourier import frequency_axes
from .triton_splat import triton_splat, use_triton

__all__ = ["convect_project", "convect_volume", "kernel_transfer", "KERNELS", "temporary_bytes"]

#: Kernel name -> number of taps per axis (support width in pixels).
KERNELS = {"cubic": 4, "linear": 2}

# The most temporaries (floats) one chunk of particles may hold: ~256 MB on the CPU, ~512 MB
# on a GPU, whatever the batch. A further chunk of a forward costs about 22 operator calls on the
# CPU (fewer kernel launches on a GPU: some are views) whatever its size, so larger chunks mean fewer.
_CHUNK_FLOATS = {"cpu": 1 << 26, "cuda": 1 << 27}

#: The kernels' weights of the taps at ``first + j`` and their derivatives, as polynomials in the
#: fractional part ``f`` of a point's coordinate: ``[1, f, f^2, f^3][:deg + 1] @ _POLY[kernel]``,
#: columns ``w_0 .. w_{K-1}`` then ``dw_0 .. dw_{K-1}``. Cubic: the taps at floor - 1 .. floor + 2
#: get ``beta3(f + 1), beta3(f), beta3(f - 1), beta3(f - 2)`` (their coefficients sum to 1, 0, 0, 0:
#: mass is conserved to rounding); linear: ``1 - f, f``.
_POLY = {
    "cubic": (
        (1 / 6, 2 / 3, 1 / 6, 0.0, -1 / 2, 0.0, 1 / 2, 0.0),
        (-1 / 2, 0.0, 1 / 2, 0.0, 1.0, -2.0, 1.0, 0.0),
        (1 / 2, -1.0, 1 / 2, 0.0, -1 / 2, 3 / 2, -3 / 2, 1 / 2),
        (-1 / 6, 1 / 2, -1 / 2, 1 / 6, 0.0, 0.0, 0.0, 0.0),
    ),
    "linear": ((1.0, 0.0, -1.0, 1.0), (-1.0, 1.0, 0.0, 0.0)),
}
#: Taps before the floor of a point's coordinate: its first tap is at ``floor - _BEFORE``.
_BEFORE = {"cubic": 1, "linear": 0}
_CONSTANTS: dict = {}


def _taps(kernel: str) -> int:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    return KERNELS[kernel]


def _constants(kernel: str, derivative: bool, reverse: bool, ndim: int, pad_box: int, device, dtype):
    """``(constant (K | 2K, 1), coefficients (K | 2K, deg), axis strides (D, 1) int64)``, made once per
    kernel, device and dtype: the weights' polynomial in ``f, f^2, ..`` (taps in reverse order if
    ``reverse``) and each axis's stride in a flat padded grid (x fastest)."""
    key = (kernel, derivative, reverse, ndim, pad_box, device, dtype)
    if key not in _CONSTANTS:
        k = KERNELS[kernel]
        poly = torch.tensor(_POLY[kernel], dtype=torch.float64)  # (deg + 1, 2K)
        w = poly[:, :k].flip(1) if reverse else poly[:, :k]
        coef = torch.cat([w, poly[:, k:]], 1) if derivative else w
        strides = torch.tensor([pad_box**a for a in range(ndim)], dtype=torch.long, device=device)[:, None]
        coef = coef.T.to(device, dtype)  # (K | 2K, deg + 1)
        _CONSTANTS[key] = (coef[:, :1].contiguous(), coef[:, 1:].contiguous(), strides)
    return _CONSTANTS[key]


def _chunk_plan(n: int, pad_box: int, k: int, ndim: int, device: torch.device, backward: bool = True) -> tuple[int, int]:
    """``(particles per chunk, inner axes)``: how many particles of ``n`` points to splat (or, with
    ``backward``, to gather) at once, and over how many of the fastest axes (x; x and y) one scatter
    spreads all taps (the rest loop)."""
    budget = _CHUNK_FLOATS.get(device.type, 1 << 24)
    grid = pad_box**ndim
    inner = 2 if grid * k * k <= budget // 4 else 1  # a buffer of k**inner floats per grid pixel
    # the taps' values (twice in the backward), the buffer, the weights
    per_particle = k**inner * ((2 if backward else 1) * n + grid) + 8 * ndim * n
    return max(1, budget // per_particle), inner


def temporary_bytes(particles: int, n_points: int, box: int, kernel: str, device_type: str, backward: bool = False,
                    ndim: int = 2, itemsize: int = 4) -> int:
    """Bytes of the temporaries a splat of ``particles`` particles of ``n_points`` points each holds
    at once (a chunk of them at most, by :func:`_chunk_plan`'s own count): for memory estimates."""
    k = _taps(kernel)
    pad_box = box + 2 * k
    budget = _CHUNK_FLOATS.get(device_type, 1 << 24)
    inner = 2 if pad_box**ndim * k * k <= budget // 4 else 1
    per_particle = k**inner * ((2 if backward else 1) * n_points + pad_box**ndim) + 8 * ndim * n_points
    chunk = max(1, budget // per_particle)
    return int(min(particles, chunk) * per_particle * itemsize)


def _pixel_frame(matrix: torch.Tensor, offset: torch.Tensor, apix: float, box: int, kernel: str):
    """``(rows (b, D, 3), bias (b, D, 1))``: a point ``p`` (Å) has padded-grid coordinate
    ``rows @ p + bias`` along each axis, shifted so that its first tap is at the coordinate's floor
    (``(matrix @ p - offset) / apix + box // 2``, plus the padding ``K``, minus :data:`_BEFORE`).
    """
    divisor, negative, shift = _scalars(apix, box, kernel, matrix.device, matrix.dtype)
    return matrix / divisor, (offset / negative).add_(shift)[:, :, None]


def _scalars(apix: float, box: int, kernel: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``apix``, ``-apix`` and the first tap's shift as 0-d tensors, made once per key: the same numbers as
    the Python scalars, whose wrapping costs the CPU 4 operator calls an operation."""
    key = ("scalars", apix, box, kernel, device, dtype)
    if key not in _CONSTANTS:
        shift = box // 2 + KERNELS[kernel] - _BEFORE[kernel]
        _CONSTANTS[key] = tuple(torch.tensor(x, dtype=torch.float64).to(device, dtype) for x in (apix, -apix, shift))
    return _CONSTANTS[key]


def _chunk_taps(points, rows, bias, box: int, kernel: str, derivative: bool, reverse: bool, lead: int = 0):
    """Each point's first tap, as a flat index into ``c`` stacked padded grids, and its kernel weights.

    points ``(1|c, n, 3)`` xyz Å (any strides); rows ``(c, D, 3)``, bias ``(c, D, 1)`` from :func:`_pixel_frame`.
    Returns ``base (c, n)`` int64 (plus ``lead``) and ``weights (1|2, K, c, D, n)``: along
    every axis (x first) the ``K`` taps' weights (in reverse order if ``reverse``) and, with
    ``derivative``, their derivatives d w / d coordinate (natural order). A point whose first tap
    is outside ``[0, box + K]`` is clamped there: all its taps land in the padding, which is
    cropped, so dropping is exact.
    """
    c, ndim = rows.shape[0], rows.shape[1]
    k = KERNELS[kernel]
    pad_box = box + 2 * k
    constant, coef, strides = _constants(kernel, derivative, reverse, ndim, pad_box, rows.device, rows.dtype)
    # (c*D, 3) @ (3, n): BLAS reads the transposed points in place; the other order, (n, 3) @ (3, D),
    # is a slow matrix-vector path (~10x on the CPU)
    if points.shape[0] == 1:
        coord = torch.mm(rows.reshape(c * ndim, 3), points[0].T).view(c, ndim, -1)  # (c, D, n)
    else:
        coord = torch.bmm(rows, points.transpose(1, 2))  # (c, D, n)
    coord.add_(bias)
    first = torch.floor(coord)
    frac = coord.sub_(first)  # (c, D, n) in [0, 1)
    if kernel == "cubic":
        square = frac * frac
        powers = torch.stack([frac, square, square * frac])  # (3, c, D, n)
    else:
        powers = frac[None]  # (1, c, D, n)
    weights = torch.addmm(constant, coef, powers.view(powers.shape[0], -1))  # (K | 2K, c*D*n)
    first = first.clamp_(0, box + k).long()  # (c, D, n) padded pixel of the first tap
    base = (first * strides).sum(1)  # (c, n) flat index in a particle's padded grid
    grid = pad_box**ndim
    base += _grid_starts(c, grid, lead, base.device)
    return base, weights.view((-1, k) + coord.shape)


@functools.lru_cache(maxsize=64)
def _grid_starts(c: int, grid: int, lead: int, device: torch.device) -> torch.Tensor:
    """``(c, 1)`` int64: where each of ``c`` stacked grids of ``grid`` floats starts after ``lead``; made
    once per chunk size (every chunk of a splat but the last has the same). Read only."""
    return torch.arange(lead, lead + c * grid, grid, device=device)[:, None]


def _outer_taps(ndim: int, inner: int, pad_box: int, k: int):
    """Yield ``(flat offset, taps)`` over all taps of the axes after the ``inner`` fastest."""
    for taps in itertools.product(range(k), repeat=ndim - inner):
        yield sum(t * pad_box ** (inner + a) for a, t in enumerate(taps)), taps


def _lead(pad_box: int, k: int, inner: int) -> int:
    """Rows of a splat buffer before the first grid's: the taps of the ``inner`` axes reach back that far."""
    return (k - 1) * sum(pad_box**a for a in range(inner))


def _splat_chunk(base, weights, vals, pad_box: int, k: int, inner: int) -> torch.Tensor:
    """``(c * pad_box**D,)``: ``c`` particles' padded grids, each point's taps weighted by ``vals (1|c, n)``.

    ``base (c, n)``: each point's first tap plus :func:`_lead`; ``weights (1, K, c, D, n)`` in
    reverse tap order (:func:`_chunk_taps`). Every point adds the
    weights of all its taps along the ``inner`` fastest axes to one row (its first tap) of a
    buffer with ``K**inner`` planes, in one scatter per tap of the other axes; a strided sum
    reads each pixel's taps back from the rows ``t`` pixels before it, plane ``t``.
    """
    c, ndim, n = weights.shape[2], weights.shape[3], weights.shape[4]
    grid = pad_box**ndim
    w = weights[0]  # (K, c, D, n)
    lead = _lead(pad_box, k, inner)
    src = w[:, :, inner - 1] * vals  # (K, c, n): the values folded in once
    if inner == 2:
        src = src[:, None] * w[None, :, :, 0]  # (K, K, c, n): (y, x) taps
    planes = (k,) * inner
    length = c * grid + lead
    buf = torch.zeros(planes + (length,), dtype=w.dtype, device=w.device)
    rows = base.view(-1)  # (c*n,)
    for offset, taps in _outer_taps(ndim, inner, pad_box, k):
        scale = _prod([w[k - 1 - t, :, inner + a] for a, t in enumerate(taps)])  # (c, n): the outer taps' weight
        part = src if scale is None else src * scale
        index = (rows if offset == 0 else rows + offset).expand(planes + (-1,))
        buf.scatter_add_(inner, index, part.view(planes + (-1,)))
    strides = (1,) + tuple(k**a * length + pad_box**a for a in reversed(range(inner)))
    return buf.as_strided((c * grid,) + planes, strides).sum(tuple(range(1, inner + 1)))


def _gather_chunk(padded, start: int, base, weights, pad_box: int, k: int, inner: int):
    """The adjoint of :func:`_splat_chunk`: per point, ``sum_taps g * w`` and, with derivatives in
    ``weights (2, K, c, D, n)`` (natural tap order), ``sum_taps g * dw/dcoord`` along each axis.

    ``padded``: the flat padded gradient of all particles (the chunk's first grid at ``start``),
    long enough that every tap of the last pixel is in it. Returns ``g_w (c, n)`` and a list of
    ``D`` tensors ``(c, n)`` (or ``None`` without derivatives).
    """
    cols, c, ndim, n = weights.shape[0], weights.shape[2], weights.shape[3], weights.shape[4]
    grid = pad_box**ndim
    w = weights[0]  # (K, c, D, n)
    x_taps = weights[:, :, :, 0]  # (1|2, K, c, n)
    if inner == 2:
        x_taps = x_taps[:, None]  # (1|2, 1, K, c, n)
    g_w, g_c = None, [None] * ndim
    index = base.view(-1)
    for offset, taps in _outer_taps(ndim, inner, pad_box, k):
        # the gradient at every tap of the inner axes, from each point's first tap: (K[, K], c, n) (y, x)
        unfolded = padded.as_strided(
            (k,) * inner + (c * grid,), tuple(pad_box**a for a in reversed(range(inner))) + (1,), start + offset
        )
        g_taps = unfolded.index_select(inner, index).view((k,) * inner + (c, n))
        if inner == 2:
            along_x = (g_taps * x_taps).sum(2)  # (1|2, K, c, n): [w_x, dw_x] summed over the x-taps
            sums = (weights[:, None, :, :, 1] * along_x).sum(2)  # (1|2, 1|2, c, n): [w_y, dw_y] x [w_x, dw_x]
            s, ds = sums[0, 0], ([sums[0, 1], sums[1, 0]] if cols == 2 else None)
        else:
            sums = (g_taps * x_taps).sum(1)  # (1|2, c, n)
            s, ds = sums[0], ([sums[1]] if cols == 2 else None)
        outer = [w[t, :, inner + a] for a, t in enumerate(taps)]  # (c, n) each
        prod = _prod(outer)
        g_w = _accumulate(g_w, s, prod)
        if ds is not None:
            for a in range(inner):
                g_c[a] = _accumulate(g_c[a], ds[a], prod)
            for i, t in enumerate(taps):
                factor = _prod([weights[1, t, :, inner + i]] + [o for j, o in enumerate(outer) if j != i])
                g_c[inner + i] = _accumulate(g_c[inner + i], s, factor)
    return g_w, (g_c if cols == 2 else None)


def _accumulate(total, term, factor):
    """``total + term * factor`` (``factor`` None: 1; ``total`` None: 0)."""
    term = term if factor is None else term * factor
    return term if total is None else total.add_(term)


def _inside(padded: torch.Tensor, b: int, box: int, pad_box: int, k: int, ndim: int) -> torch.Tensor:
    """``(b, box, ..)``: the boxes inside the padding of ``b`` flat padded grids (``(b * pad_box**D + ..,)``),
    one strided view (one operator call, against two per axis for slices)."""
    strides = (pad_box**ndim,) + tuple(pad_box**a for a in reversed(range(ndim)))
    return padded.as_strided((b,) + (box,) * ndim, strides, padded.storage_offset() + k * sum(pad_box**a for a in range(ndim)))


class _ConvectSplat(torch.autograd.Function):
    """Splat ``values`` at ``(matrix @ points - offset) / apix + box // 2`` into a D-dim grid."""

    @staticmethod
    def forward(ctx, values, points, matrix, offset, box: int, apix: float, kernel: str):
        # values (1|b, n); points (1|b, n, 3); matrix (b, D, 3); offset (b, D)
        b, ndim = matrix.shape[0], matrix.shape[1]
        n = values.shape[-1]
        k = KERNELS[kernel]
        pad_box = box + 2 * k
        rows, bias = _pixel_frame(matrix, offset, apix, box, kernel)  # (b, D, 3), (b, D, 1)
        chunk, inner = _chunk_plan(n, pad_box, k, ndim, values.device, backward=False)
        lead = _lead(pad_box, k, inner)
        grids = []
        for start in range(0, b, chunk):
            stop = min(b, start + chunk)
            whole = stop - start == b  # one chunk: no slicing
            pts = points if whole or points.shape[0] == 1 else points[start:stop]  # (1|c, n, 3), any strides
            vals = values if whole or values.shape[0] == 1 else values[start:stop]  # (1|c, n)
            frame = (rows, bias) if whole else (rows[start:stop], bias[start:stop])
            base, weights = _chunk_taps(pts, *frame, box, kernel, False, True, lead)
            grids.append(_splat_chunk(base, weights, vals, pad_box, k, inner))
        ctx.save_for_backward(values, points, matrix, offset)
        ctx.box, ctx.apix, ctx.kernel = box, apix, kernel
        return _inside(torch.cat(grids) if len(grids) > 1 else grids[0], b, box, pad_box, k, ndim)

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
        # the padded gradient, with room for every tap of the last grid's last pixel
        padded = torch.zeros(b * grid_size + (k - 1) * sum(pad_box**a for a in range(ndim)), dtype=grad_out.dtype,
                             device=grad_out.device)
        _inside(padded, b, box, pad_box, k, ndim).copy_(grad_out)

        rows, bias = _pixel_frame(matrix, offset, apix, box, kernel)  # (b, D, 3), (b, D, 1)
        chunk, inner = _chunk_plan(n, pad_box, k, ndim, values.device)
        shared_p = points.shape[0] == 1
        g_values = torch.zeros_like(values) if need_v and values.shape[0] == 1 and chunk < b else None
        g_points = torch.zeros_like(points) if need_p and (shared_p or chunk < b) else None
        g_values_rows, g_matrix, g_offset = [], [], []
        scaled = values / _scalars(apix, box, kernel, values.device, values.dtype)[0] if need_coords else None  # (1|b, n)
        for start in range(0, b, chunk):
            stop = min(b, start + chunk)
            c = stop - start
            whole = c == b  # one chunk: no slicing
            pts = points if whole or points.shape[0] == 1 else points[start:stop]  # (1|c, n, 3), any strides
            mat = matrix if whole else matrix[start:stop]
            frame = (rows, bias) if whole else (rows[start:stop], bias[start:stop])
            base, weights = _chunk_taps(pts, *frame, box, kernel, need_coords, False)
            g_w, g_c = _gather_chunk(padded, start * grid_size, base, weights, pad_box, k, inner)
            if need_v:
                if values.shape[0] == 1 and whole:
                    g_values = g_w.sum(0, keepdim=True)  # (1, n)
                elif values.shape[0] == 1:
                    g_values += g_w.sum(0, keepdim=True)
                else:
                    g_values_rows.append(g_w)  # (c, n)
            if need_coords:
                vals = scaled if whole or scaled.shape[0] == 1 else scaled[start:stop]  # (1|c, n)
                g_q = torch.stack(g_c, dim=1) * vals[:, None, :]  # (c, D, n) d/d (A p)
                if need_p:
                    if shared_p:
                        g_points[0] += torch.mm(g_q.reshape(c * ndim, n).T, mat.reshape(c * ndim, 3))  # (n, 3)
                    elif whole:
                        g_points = torch.bmm(mat.transpose(1, 2), g_q).transpose(1, 2)  # (b, n, 3)
                    else:
                        g_points[start:stop] = torch.bmm(mat.transpose(1, 2), g_q).transpose(1, 2)  # (c, n, 3)
                if need_m:
                    g_matrix.append(torch.bmm(g_q, pts.expand(c, n, 3)))  # (c, D, 3)
                if need_o:
                    g_offset.append(-g_q.sum(2))  # (c, D)
        if need_v and g_values is None:
            g_values = torch.cat(g_values_rows) if len(g_values_rows) > 1 else g_values_rows[0]
        g_matrix = (torch.cat(g_matrix) if len(g_matrix) > 1 else g_matrix[0]) if need_m else None
        g_offset = (torch.cat(g_offset) if len(g_offset) > 1 else g_offset[0]) if need_o else None
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
    splat = triton_splat if use_triton(v, _ConvectSplat.apply) else _ConvectSplat.apply  # CUDA: ops/triton_splat.py
    images = splat(v, p, matrix, offset, int(box), float(apix), kernel)  # (b, box, box)
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
