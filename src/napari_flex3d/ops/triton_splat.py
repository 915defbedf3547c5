"""The 2D convect-project splat (``ops.splat``) as two Triton kernels, for CUDA tensors.

A room of ``ops``; it imports torch, and triton only inside :func:`_kernels` (the module
imports on machines without triton).

The forward kernel gives every point of every particle one lane: it computes the point's
pixel coordinate, its ``K`` x ``K`` tap weights (cubic B-spline or linear, the same
polynomials as ``ops.splat``) and adds ``V(y) * w_y * w_x`` to each tap inside the image
with a global atomic add (``K**2`` per point; taps outside the image are masked, so
points are dropped exactly as the torch path drops them). The backward kernel is the
gather: per point, the gradient image summed over its taps with the weights and with
their derivatives gives ``dL/dV``, ``dL/dcoordinate`` and from those ``dL/dpoints``
(``rows^T q``) and, reduced over the block's points and added atomically, ``dL/drows``
and ``dL/dbias`` per particle. Nothing per tap is stored; no temporaries but the outputs.
Atomics make the sums' order, hence their last bits, vary from run to run.

The pose and shift enter as ``rows = matrix / apix`` and ``bias = -offset / apix + box // 2``
(torch operations outside the kernels, so autograd carries their gradients and no number
crosses from the host). Only the 2D splat has kernels; ``convect_volume`` stays on torch.

Dispatch (:func:`use_triton`): CUDA tensors, float32 or float64, triton importable and
``FLEX3D_TRITON`` not ``"0"``. The first use on a device and dtype runs both kernels on a
small problem against the torch path; if they fail to compile or disagree, a warning says
so and the torch path is used for the rest of the process. Tested on the CPU under
``TRITON_INTERPRET=1`` (tests/ops/test_triton_splat.py).
"""

from __future__ import annotations

import os
import warnings

import torch
from torch.autograd.function import once_differentiable

__all__ = ["triton_splat", "use_triton"]

#: Kernel name -> (taps per axis, taps before the floor of a coordinate), as in ``ops.splat``.
_TAPS = {"cubic": (4, 1), "linear": (2, 0)}
#: Device types and dtypes the dispatch sends to the kernels (tests add "cpu" under the interpreter).
_DEVICE_TYPES = ("cuda",)
_DTYPES = (torch.float32, torch.float64)
_BLOCK = 128  # points per program
# launch options; fused multiply-adds asked for explicitly (triton 3.9 warns when left to its default)
_LAUNCH = {"num_warps": 4, "enable_fp_fusion": True}
_VERDICT: dict = {}  # (device, dtype) -> whether the kernels passed their first-use check


def _kernels():
    """``(forward, backward)``: the jitted kernels (triton imported here, on first use; whether they are
    interpreted, ``TRITON_INTERPRET=1``, is fixed then)."""
    from . import triton_kernels

    if triton_kernels.triton is None:
        raise ImportError("the Triton splat needs triton (pip install triton)")
    return triton_kernels.forward, triton_kernels.backward


def _strides(values: torch.Tensor, points: torch.Tensor) -> tuple[int, ...]:
    """``(values' particle and point strides, points' particle, point and coordinate strides)``; a
    particle stride is 0 where the tensor is shared by all particles (leading size 1)."""
    v_sb = values.stride(0) if values.shape[0] > 1 else 0
    p_sb = points.stride(0) if points.shape[0] > 1 else 0
    return v_sb, values.stride(1), p_sb, points.stride(1), points.stride(2)


class _TritonSplat(torch.autograd.Function):
    """Splat ``values`` at pixel coordinates ``rows @ points + bias`` into ``(b, box, box)`` images."""

    @staticmethod
    def forward(ctx, values, points, rows, bias, box: int, kernel: str):
        # values (1|b, n); points (1|b, n, 3) any strides; rows (b, 2, 3), bias (b, 2) contiguous
        b, n = rows.shape[0], values.shape[-1]
        k, before = _TAPS[kernel]
        out = values.new_zeros((b, box, box))
        if b and n:
            forward, _ = _kernels()
            grid = ((n + _BLOCK - 1) // _BLOCK, b)
            forward[grid](out, values, points, rows, bias, n, box, *_strides(values, points), K=k, BEFORE=before,
                          BLOCK=_BLOCK, **_LAUNCH)
        ctx.save_for_backward(values, points, rows, bias)
        ctx.box, ctx.kernel = box, kernel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        values, points, rows, bias = ctx.saved_tensors
        need_v, need_p, need_r, need_b = ctx.needs_input_grad[:4]
        b, n = rows.shape[0], values.shape[-1]
        k, before = _TAPS[ctx.kernel]
        g_values = values.new_zeros(values.shape) if need_v else None
        g_points = points.new_zeros(points.shape) if need_p else None
        g_rows = torch.zeros_like(rows) if need_r else None
        g_bias = torch.zeros_like(bias) if need_b else None
        if b and n and (need_v or need_p or need_r or need_b):
            _, backward = _kernels()
            grid = ((n + _BLOCK - 1) // _BLOCK, b)
            dummy = values.new_empty(1)
            backward[grid](
                grad_out, *grad_out.stride(), values, points, rows, bias,
                g_values if need_v else dummy, g_points if need_p else dummy, g_rows if need_r else dummy,
                g_bias if need_b else dummy, n, ctx.box, *_strides(values, points),
                K=k, BEFORE=before, BLOCK=_BLOCK, NEED_V=need_v, NEED_P=need_p, NEED_R=need_r, NEED_B=need_b,
                V_SHARED=values.shape[0] == 1, P_SHARED=points.shape[0] == 1, **_LAUNCH,
            )
        return g_values, g_points, g_rows, g_bias, None, None


def triton_splat(values, points, matrix, offset, box: int, apix: float, kernel: str) -> torch.Tensor:
    """``(b, box, box)``: the 2D splat of ``ops.splat`` (its ``_ConvectSplat`` arguments) by the kernels.

    values ``(1|b, n)``; points ``(1|b, n, 3)`` xyz Å, any strides; matrix ``(b, 2, 3)``; offset
    ``(b, 2)`` Å; one dtype and device. Differentiable in all four.
    """
    if kernel not in _TAPS:
        raise ValueError(f"kernel must be one of {sorted(_TAPS)}, got {kernel!r}")
    rows = (matrix / apix).contiguous()  # (b, 2, 3): pixel coordinate per Å
    bias = (offset / -apix + box // 2).contiguous()  # (b, 2): pixel coordinate of the origin
    return _TritonSplat.apply(values, points, rows, bias, int(box), kernel)


def use_triton(values: torch.Tensor, reference) -> bool:
    """Whether to splat ``values``' batch with the kernels: a device and dtype they serve, ``FLEX3D_TRITON``
    not ``"0"``, triton importable, and the kernels' first-use check against ``reference`` (a callable
    with :func:`triton_splat`'s arguments, the torch path) passed on this device and dtype."""
    if values.device.type not in _DEVICE_TYPES or values.dtype not in _DTYPES:
        return False
    if os.environ.get("FLEX3D_TRITON", "1") == "0":
        return False
    key = (values.device, values.dtype)
    if key not in _VERDICT:
        _VERDICT[key] = _first_use_check(values.device, values.dtype, reference)
    return _VERDICT[key]


def _first_use_check(device, dtype, reference) -> bool:
    """Both kernels on a small problem (both taps, shared values, batched points) against ``reference``."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    gen = torch.Generator().manual_seed(0)
    b, n, box = 2, 128, 12
    raw = (torch.randn(1, n, generator=gen), torch.randn(b, n, 3, generator=gen) * 6,
           torch.linalg.qr(torch.randn(b, 3, 3, generator=gen))[0][:, :2], torch.randn(b, 2, generator=gen))
    weights = torch.randn(b, box, box, generator=gen).to(device, dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    try:
        with torch.enable_grad():
            for kernel in _TAPS:
                results = []
                for splat in (triton_splat, reference):
                    inputs = [t.to(device, dtype).requires_grad_(True) for t in raw]
                    images = splat(*inputs, box, 1.1, kernel)
                    results.append([images.detach(), *torch.autograd.grad(images, inputs, weights)])
                for got, want in zip(*results):
                    error = float((got - want).abs().max()) / (float(want.abs().max()) + 1e-30)
                    if not error <= tol:
                        raise ArithmeticError(f"{kernel}: off by {error:.2e} of the largest value")
    except Exception as err:  # noqa: BLE001: any failure means the torch path
        warnings.warn(f"the Triton splat failed its first-use check on {device} ({err}); using the torch path "
                      "(FLEX3D_TRITON=0 skips the check)", RuntimeWarning, stacklevel=3)
        return False
    return True
