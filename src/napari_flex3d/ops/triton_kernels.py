"""The Triton kernels of the 2D convect-project splat; :mod:`.triton_splat` launches them.

A room of ``ops``; it imports triton, and nothing of the project. Only :mod:`.triton_splat`
imports it, on first use. Without triton it still imports (every module of the package
does, tests/test_no_qt_imports.py), its kernels then plain functions that nothing calls.
Whether the kernels run compiled or interpreted (``TRITON_INTERPRET=1``, on the CPU) is
fixed when this module is imported.

Both kernels give each point of one particle a lane: program ``(block, particle)``.
The taps' weights are the polynomials of ``ops.splat`` (cubic B-spline, or linear), written
with integer and dyadic constants so that float64 keeps its precision.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except ImportError:  # pragma: no cover - the launcher checks for triton before it gets here
    triton = tl = None

    def jit(fn):
        return fn


__all__ = ["forward", "backward"]


@jit
def _add(a, b):
    return a + b


@jit
def _total(x):
    """Sum of a block (``tl.sum`` is itself jitted when triton is imported, so under the interpreter it
    must have been imported with ``TRITON_INTERPRET`` set; this one follows this module)."""
    return tl.reduce(x, 0, _add)


@jit
def _tap(f, t: tl.constexpr, K: tl.constexpr):
    """Weight and d weight / d coordinate of tap ``t`` (from the first) at fraction ``f``."""
    if K == 4:
        if t == 0:
            g = 1 - f
            w = g * g * g / 6
            dw = -0.5 * g * g
        elif t == 1:
            w = (4 - 6 * f * f + 3 * f * f * f) / 6
            dw = f * (1.5 * f - 2)
        elif t == 2:
            w = (1 + 3 * f + 3 * f * f - 3 * f * f * f) / 6
            dw = 0.5 + f - 1.5 * f * f
        else:
            w = f * f * f / 6
            dw = 0.5 * f * f
    else:
        if t == 0:
            w = 1 - f
            dw = f * 0 - 1
        else:
            w = f
            dw = f * 0 + 1
    return w, dw

@jit
def _frame(points_ptr, rows_ptr, bias_ptr, i, j, live, p_sb, p_sn, p_sc, box, K: tl.constexpr,
          BEFORE: tl.constexpr):
    """A block's points, pixel coordinates' fractions and first taps, and whether each lands near the image."""
    p = points_ptr + i * p_sb + j * p_sn
    px = tl.load(p, mask=live, other=0)
    py = tl.load(p + p_sc, mask=live, other=0)
    pz = tl.load(p + 2 * p_sc, mask=live, other=0)
    r = rows_ptr + i * 6
    x = tl.load(r) * px + tl.load(r + 1) * py + tl.load(r + 2) * pz + tl.load(bias_ptr + i * 2)
    y = tl.load(r + 3) * px + tl.load(r + 4) * py + tl.load(r + 5) * pz + tl.load(bias_ptr + i * 2 + 1)
    near = live & (x > -K) & (x < box + K) & (y > -K) & (y < box + K)  # also False for NaN
    x = tl.where(near, x, 0)
    y = tl.where(near, y, 0)
    x0 = tl.floor(x)
    y0 = tl.floor(y)
    return px, py, pz, x - x0, y - y0, x0.to(tl.int32) - BEFORE, y0.to(tl.int32) - BEFORE, near

@jit
def forward(out_ptr, values_ptr, points_ptr, rows_ptr, bias_ptr, n, box, v_sb, v_sn, p_sb, p_sn, p_sc,
            K: tl.constexpr, BEFORE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(1).to(tl.int64)  # particle
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # its points
    live = j < n
    _, _, _, fx, fy, ix, iy, near = _frame(points_ptr, rows_ptr, bias_ptr, i, j, live, p_sb, p_sn, p_sc, box, K, BEFORE)
    v = tl.load(values_ptr + i * v_sb + j * v_sn, mask=live, other=0)
    image = out_ptr + i * box * box
    for ty in tl.static_range(K):
        wy, _ = _tap(fy, ty, K)
        row = iy + ty
        on_row = near & (row >= 0) & (row < box)
        vy = v * wy
        for tx in tl.static_range(K):
            wx, _ = _tap(fx, tx, K)
            col = ix + tx
            on = on_row & (col >= 0) & (col < box)
            tl.atomic_add(image + row * box + col, vy * wx, mask=on, sem="relaxed")

@jit
def backward(grad_ptr, g_sb, g_sr, g_sc, values_ptr, points_ptr, rows_ptr, bias_ptr,
             gv_ptr, gp_ptr, gr_ptr, gb_ptr, n, box, v_sb, v_sn, p_sb, p_sn, p_sc,
             K: tl.constexpr, BEFORE: tl.constexpr, BLOCK: tl.constexpr,
             NEED_V: tl.constexpr, NEED_P: tl.constexpr, NEED_R: tl.constexpr, NEED_B: tl.constexpr,
             V_SHARED: tl.constexpr, P_SHARED: tl.constexpr):
    i = tl.program_id(1).to(tl.int64)
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = j < n
    px, py, pz, fx, fy, ix, iy, near = _frame(points_ptr, rows_ptr, bias_ptr, i, j, live, p_sb, p_sn, p_sc, box, K,
                                             BEFORE)
    v = tl.load(values_ptr + i * v_sb + j * v_sn, mask=live, other=0)
    grad = grad_ptr + i * g_sb
    s = v * 0  # sum_taps g w_y w_x
    sx = v * 0  # sum_taps g w_y dw_x
    sy = v * 0  # sum_taps g dw_y w_x
    for ty in tl.static_range(K):
        wy, dwy = _tap(fy, ty, K)
        row = iy + ty
        on_row = near & (row >= 0) & (row < box)
        for tx in tl.static_range(K):
            wx, dwx = _tap(fx, tx, K)
            col = ix + tx
            g = tl.load(grad + row * g_sr + col * g_sc, mask=on_row & (col >= 0) & (col < box), other=0)
            gx = g * wx
            s += gx * wy
            sx += g * wy * dwx
            sy += gx * dwy
    if NEED_V:
        if V_SHARED:
            tl.atomic_add(gv_ptr + j, s, mask=live, sem="relaxed")
        else:
            tl.store(gv_ptr + i * n + j, s, mask=live)
    qx = sx * v  # dL / d (pixel x)
    qy = sy * v
    if NEED_P:  # rows^T q
        r = rows_ptr + i * 6
        gp = gp_ptr + j * 3
        if P_SHARED:
            tl.atomic_add(gp, tl.load(r) * qx + tl.load(r + 3) * qy, mask=live, sem="relaxed")
            tl.atomic_add(gp + 1, tl.load(r + 1) * qx + tl.load(r + 4) * qy, mask=live, sem="relaxed")
            tl.atomic_add(gp + 2, tl.load(r + 2) * qx + tl.load(r + 5) * qy, mask=live, sem="relaxed")
        else:
            gp += i * n * 3
            tl.store(gp, tl.load(r) * qx + tl.load(r + 3) * qy, mask=live)
            tl.store(gp + 1, tl.load(r + 1) * qx + tl.load(r + 4) * qy, mask=live)
            tl.store(gp + 2, tl.load(r + 2) * qx + tl.load(r + 5) * qy, mask=live)
    if NEED_R:  # q p^T, summed over the block's points
        gr = gr_ptr + i * 6
        tl.atomic_add(gr, _total(qx * px), sem="relaxed")
        tl.atomic_add(gr + 1, _total(qx * py), sem="relaxed")
        tl.atomic_add(gr + 2, _total(qx * pz), sem="relaxed")
        tl.atomic_add(gr + 3, _total(qy * px), sem="relaxed")
        tl.atomic_add(gr + 4, _total(qy * py), sem="relaxed")
        tl.atomic_add(gr + 5, _total(qy * pz), sem="relaxed")
    if NEED_B:
        tl.atomic_add(gb_ptr + i * 2, _total(qx), sem="relaxed")
        tl.atomic_add(gb_ptr + i * 2 + 1, _total(qy), sem="relaxed")
