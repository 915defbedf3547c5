"""The Triton splat (ops/triton_splat.py, ops/triton_kernels.py) against the torch path of ops/splat.py.

On a machine without a GPU the kernels run under Triton's interpreter on CPU tensors
(``TRITON_INTERPRET=1``, set here before the kernels' module is first imported); with a
GPU they run compiled on it. Oracles: the torch path's values and autograd gradients
(itself tested against a dense matrix and gradcheck in test_splat.py), the adjoint
identity, and central finite differences of a loss along a random direction. Small
problems: the interpreter runs a kernel's programs one after another in numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from napari_flex3d.conventions import euler_to_matrix  # noqa: E402
from napari_flex3d.ops import triton_splat as ts  # noqa: E402
from napari_flex3d.ops.splat import convect_project  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when ops/triton_kernels.py is imported

BOX, APIX = 16, 1.3
# float32: the kernels and the torch path sum the same terms in different orders
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


def _problem(b: int, n: int, dtype, seed: int = 0, shared_values: bool = True):
    """values (1|b, n), points (b, n, 3) Å with some outside the box, rotations (b, 3, 3), shifts (b, 2) Å."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(1 if shared_values else b, n, generator=gen)
    points = (torch.rand(b, n, 3, generator=gen) - 0.5) * (1.3 * BOX * APIX)  # a margin of points drop out
    angles = np.random.default_rng(seed).uniform([-180, 0, -180], [180, 180, 180], size=(b, 3))
    rotations = torch.tensor(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]))
    shifts = torch.randn(b, 2, generator=gen) * 2
    return [t.to(DEVICE, dtype) for t in (values, points, rotations, shifts)]


def _run(splat, inputs, weights, kernel):
    """``[images, dL/dvalues, dL/dpoints, dL/drotations, dL/dshifts]`` for ``L = <images, weights>``."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    images = splat(*inputs, BOX, APIX, kernel)
    return [images.detach(), *torch.autograd.grad(images, inputs, weights)]


def _kernels_splat(values, points, rotations, shifts, box, apix, kernel):
    return ts.triton_splat(values, points, rotations[:, :2], shifts, box, apix, kernel)


def _torch_splat(values, points, rotations, shifts, box, apix, kernel):
    before = os.environ.get("FLEX3D_TRITON")
    os.environ["FLEX3D_TRITON"] = "0"  # the torch path on a GPU too
    try:
        return convect_project(values, points, rotations, shifts, box, apix, kernel)
    finally:
        os.environ.pop("FLEX3D_TRITON") if before is None else os.environ.update(FLEX3D_TRITON=before)


def _assert_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str):
    assert got.shape == want.shape, what
    scale = float(want.abs().max())
    assert scale > 0, what
    error = float((got - want).abs().max()) / scale
    assert error <= tol, f"{what}: off by {error:.2e} of the largest value"


@pytest.mark.parametrize("kernel", ["cubic", "linear"])
def test_values_and_gradients_match_the_torch_path(kernel):
    inputs = _problem(3, 300, torch.float32)
    weights = torch.randn(3, BOX, BOX, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    got = _run(_kernels_splat, inputs, weights, kernel)
    want = _run(_torch_splat, inputs, weights, kernel)
    for name, g, w in zip(["images", "values", "points", "rotations", "shifts"], got, want):
        _assert_close(g, w, TOL[torch.float32], f"{kernel} {name}")


def test_batched_values_and_shared_strided_points():
    """The other layout: a value per particle, one set of points for all, read through a transposed view."""
    values, points, rotations, shifts = _problem(2, 150, torch.float64, seed=2, shared_values=False)
    shared = points[:1].transpose(1, 2).contiguous().transpose(1, 2)  # (1, n, 3) with strides (3n, 1, n)
    assert not shared.is_contiguous()
    weights = torch.randn(2, BOX, BOX, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    inputs = [values, shared, rotations, shifts]
    got = _run(_kernels_splat, inputs, weights, "cubic")
    want = _run(_torch_splat, inputs, weights, "cubic")
    for name, g, w in zip(["images", "values", "points", "rotations", "shifts"], got, want):
        _assert_close(g, w, TOL[torch.float64], name)


def test_adjoint_identity_and_finite_differences():
    """<splat(v), g> = <v, gather(g)>; and the coordinate gradients against central differences (float64)."""
    values, points, rotations, shifts = _problem(2, 120, torch.float64, seed=4)
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(2, BOX, BOX, dtype=torch.float64, generator=gen).to(DEVICE)
    inputs = [values, points, rotations, shifts]
    images, g_values, g_points, g_rotations, g_shifts = _run(_kernels_splat, inputs, weights, "cubic")
    assert torch.isclose((images * weights).sum(), (values * g_values).sum(), rtol=1e-12)

    directions = [torch.randn(t.shape, dtype=torch.float64, generator=gen).to(DEVICE) for t in inputs[1:]]
    step = 1e-6  # pixels move by ~1e-5: rounding ~1e-9 of the loss, truncation smaller

    def loss(sign):
        moved = [t + sign * step * d for t, d in zip((points, rotations, shifts), directions)]
        return float((_kernels_splat(values, *moved, BOX, APIX, "cubic") * weights).sum())

    numeric = (loss(1) - loss(-1)) / (2 * step)
    analytic = float(sum((g * d).sum() for g, d in zip((g_points, g_rotations, g_shifts), directions)))
    assert abs(numeric - analytic) <= 1e-6 * abs(analytic), (numeric, analytic)


def test_dispatch_takes_the_torch_path_on_the_cpu_and_when_switched_off(monkeypatch):
    values, points, rotations, shifts = _problem(2, 50, torch.float32)
    cpu = [t.cpu().requires_grad_(True) for t in (values, points)]
    assert not ts.use_triton(cpu[0], None)
    images = convect_project(cpu[0], cpu[1], rotations.cpu(), shifts.cpu(), BOX, APIX)
    assert type(images.grad_fn).__name__ == "_ConvectSplatBackward"
    monkeypatch.setattr(ts, "_DEVICE_TYPES", ("cuda", DEVICE))
    monkeypatch.setenv("FLEX3D_TRITON", "0")
    assert not ts.use_triton(values, None)
    assert not ts.use_triton(values.double(), None) and not ts.use_triton(values.half(), None)
    monkeypatch.delenv("FLEX3D_TRITON")
    monkeypatch.setattr(ts, "_VERDICT", {})
    monkeypatch.setitem(sys.modules, "triton", None)  # as where triton is not installed: no check, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ts.use_triton(values, None)


def test_dispatch_uses_the_kernels_after_their_first_use_check(monkeypatch):
    monkeypatch.setattr(ts, "_DEVICE_TYPES", ("cuda", DEVICE))
    monkeypatch.setattr(ts, "_VERDICT", {})
    values, points, rotations, shifts = _problem(2, 100, torch.float32, seed=6)
    images = convect_project(values.requires_grad_(True), points, rotations, shifts, BOX, APIX, "linear")
    assert type(images.grad_fn).__name__ == "_TritonSplatBackward"
    assert ts._VERDICT == {(values.device, torch.float32): True}
    _assert_close(images.detach(), _torch_splat(values.detach(), points, rotations, shifts, BOX, APIX, "linear"),
                  TOL[torch.float32], "images")


def test_a_failed_first_use_check_warns_and_keeps_the_torch_path(monkeypatch):
    monkeypatch.setattr(ts, "_DEVICE_TYPES", ("cuda", DEVICE))
    monkeypatch.setattr(ts, "_VERDICT", {})
    values = torch.zeros(1, 10, device=DEVICE)

    def wrong(*args):  # a "reference" the kernels cannot match
        return 2 * ts.triton_splat(*args)

    with pytest.warns(RuntimeWarning, match="first-use check"):
        assert not ts.use_triton(values, wrong)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ts.use_triton(values, wrong)  # decided once per device and dtype


COMPILE = """
import re
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from napari_flex3d.ops import triton_kernels as k

def build(kernel, **constants):
    signature = {p.name: "constexpr" if p.is_constexpr else "*fp32" if p.name.endswith("_ptr") else "i32"
                 for p in kernel.params}
    return compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", 90, 32))

forward = build(k.forward, K=4, BEFORE=1, BLOCK=128)
atomics = re.findall(r"\\b(?:red|atom)\\.global\\S*add\\.f32", forward.asm["ptx"])
assert len(atomics) == 16, f"one atomic add per tap, not {atomics}"
backward = build(k.backward, K=4, BEFORE=1, BLOCK=128, NEED_V=True, NEED_P=True, NEED_R=True, NEED_B=True,
                 V_SHARED=True, P_SHARED=False)
assert forward.asm["cubin"] and backward.asm["cubin"]
"""


def test_kernels_compile_for_an_h100_without_one(tmp_path):
    """What the interpreter cannot check: the kernels lower through Triton's compiler to sm_90 code
    (ptxas from the triton wheel; no GPU or driver needed). A fresh interpreter, as this one may interpret."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
