"""The half-map solver: the linear map from canonical values to particle images, and full-batch
L-BFGS with exact line search on its quadratic data term (docs/validation.md).

A room of ``reconstruct``; it may import ``io``, ``model``, ``ops`` and ``training.distributed``
(the all-reduce under torchrun), never the half-map run that drives it.

``f(V) = 1/2 sum_i || C_i P(phi_i) D(u_i, V) - I_i ||^2_W`` is quadratic in ``V`` (the operator
is linear in the values), so each L-BFGS iteration takes its step by an exact line search: one
pass over the particles gives the Hessian-vector product ``H d`` and with it the step, the new
gradient and the new objective. The state (values, gradient, history) is a dict of tensors that
:func:`pack_state` turns into something ``torch.save`` writes, so a stopped solve resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..io.prefetch import Prefetcher
from ..model.flex import batch_from_particles
from ..model.loss import data_loss
from ..ops.fourier import crop_rfft_2d
from ..ops.splat import convect_project

__all__ = ["HalfMapProblem", "lbfgs_quadratic", "pack_state", "unpack_state"]


class HalfMapProblem:
    """The map ``V -> C_i P(phi_i) D(u_i, V)`` over one set of particles, and its normal operator.

    Parameters
    ----------
    ps
        ``ParticleSet`` with poses and CTF.
    idx
        ``(m,)`` particle indices of this half set.
    points_xyz_a
        ``(n, 3)`` rest voxel centres (xyz Å) of the canonical map at this box.
    flow_fn
        ``idx (b,) -> (b, n, 3)`` voxel displacements in Å, or ``None`` (rigid).
    box, apix
        Reconstruction box (the particles are Fourier-cropped to it if smaller) and pixel size.
    noise_spectra
        ``(n_groups, n_shells)`` radial noise power per optics group (the whitening).
    """

    def __init__(
        self,
        ps,
        idx: np.ndarray,
        points_xyz_a: torch.Tensor,
        flow_fn: Callable[[np.ndarray], torch.Tensor] | None,
        box: int,
        apix: float,
        noise_spectra: torch.Tensor,
        chunk: int = 256,
        kernel: str = "cubic",
        device="cpu",
        memory_budget_bytes: float = 3e8,
        oversample: int = 2,
        ctx=None,
    ):
        self.ps = ps
        self.idx = np.asarray(idx, dtype=np.int64)
        self.points = points_xyz_a.to(device)
        self.flow_fn = flow_fn
        self.box = int(box)
        self.apix = float(apix)
        self.noise = noise_spectra.to(device)
        self.kernel = kernel
        self.device = torch.device(device)
        self.oversample = int(oversample)
        self.ctx = ctx  # training.distributed.DistContext: under torchrun each rank takes every world-th chunk
        n = self.points.shape[0]
        per_particle = 4.0 * (self.box * self.box * 6 * self.oversample**2 + (n * 9 if flow_fn is not None else 0))
        self.chunk = int(max(1, min(chunk, memory_budget_bytes // per_particle)))

    @property
    def n_values(self) -> int:
        return int(self.points.shape[0])

    def _chunks(self):
        """``(batch, points)`` per chunk; the next chunk is read (and copied to the device) by a
        background thread while this one computes, so the device never waits on the disk."""
        starts = range(0, self.idx.size, self.chunk)
        if self.ctx is not None and self.ctx.active:
            starts = starts[self.ctx.rank :: self.ctx.world]
        sels = [self.idx[start : start + self.chunk] for start in starts]
        read = lambda sel: batch_from_particles(self.ps, sel, box=self.box, device=self.device)  # noqa: E731
        with Prefetcher(read, sels) as batches:
            for sel, batch in zip(sels, batches):
                if self.flow_fn is None:
                    points = self.points
                else:
                    with torch.no_grad():
                        points = self.points[None] + self.flow_fn(sel).to(self.device)
                yield batch, points

    def _predict(self, values: torch.Tensor, batch: dict, points: torch.Tensor) -> torch.Tensor:
        m = self.oversample
        images = convect_project(
            values, points, batch["rotations"], batch["shifts_a"], self.box * m, self.apix / m, kernel=self.kernel
        )  # (b, mN, mN): splatted on a finer grid so that little aliases into the last shells
        spec = torch.fft.rfft2(images)
        if m > 1:
            # (b, N, N//2+1), scale unchanged: irfft2 at N then gives 1/m^2 of a Fourier-cropped
            # image's grey levels, a constant the solved map absorbs
            spec = crop_rfft_2d(spec, self.box)
        return torch.fft.irfft2(spec * batch["ctf"], s=(self.box, self.box))

    def objective_and_gradient(self, values: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``f(V)`` (without ridge) and its gradient ``(n,)``: one pass over the particles."""
        v = values.detach().to(self.device).requires_grad_(True)
        total = torch.zeros((), dtype=torch.float64, device=self.device)  # summed on the device, read once a pass
        for batch, points in self._chunks():
            pred = self._predict(v, batch, points)
            loss = data_loss(pred, batch["images"], self.noise[batch["optics_group"]]).sum()
            loss.backward()
            total += loss.detach().double()
        grad, total = self._reduce(v, total)
        return total, grad

    def hessian_vector(self, d: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``H d`` ``(n,)`` and ``d^T H d`` of the data term: one pass over the particles."""
        v = d.detach().to(self.device).requires_grad_(True)
        quad = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch, points in self._chunks():
            pred = self._predict(v, batch, points)
            q = data_loss(pred, torch.zeros_like(pred), self.noise[batch["optics_group"]]).sum()
            q.backward()
            quad += q.detach().double()
        hd, quad = self._reduce(v, quad)
        return hd, 2.0 * quad

    def _reduce(self, v: torch.Tensor, scalar: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's gradient and sum (a 0-d float64 tensor, read here: once per pass); under
        torchrun, both summed over ranks (float64)."""
        grad = v.grad.detach() if v.grad is not None else torch.zeros_like(v.detach())
        if self.ctx is None or not self.ctx.active:
            return grad, float(scalar)
        from ..training.distributed import all_reduce_sum

        buf = torch.cat([grad.double().reshape(-1), scalar.reshape(1).to(grad.device)])
        all_reduce_sum(buf)
        return buf[:-1].to(grad.dtype).view_as(grad), float(buf[-1])


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double().reshape(-1), b.double().reshape(-1)))


def lbfgs_quadratic(
    problem: HalfMapProblem,
    iterations: int,
    state: dict | None = None,
    history: int = 8,
    ridge: float = 0.0,
) -> Iterator[tuple[int, float, dict]]:
    """Minimise the quadratic ``f(V) + ridge/2 |V|^2`` from ``V = 0`` by L-BFGS with exact line search.

    Yields ``(iteration, objective, state)`` after each iteration; ``state`` (a dict of
    tensors and numbers) continues the solve when passed back in.
    """
    if state is None:
        values = torch.zeros(problem.n_values, device=problem.device)
        f, grad = problem.objective_and_gradient(values)
        state = {"values": values, "grad": grad, "f": f, "k": 0, "s": [], "y": []}
    values, grad, f, k = state["values"], state["grad"], float(state["f"]), int(state["k"])
    s_hist, y_hist = list(state["s"]), list(state["y"])
    while k < iterations:
        # two-loop recursion: d = -H_k^{-1} g
        q = grad.clone()
        alphas = []
        for s, y in zip(reversed(s_hist), reversed(y_hist)):
            rho = 1.0 / _dot(y, s)
            a = rho * _dot(s, q)
            q -= a * y
            alphas.append((a, rho))
        if s_hist:
            q *= _dot(s_hist[-1], y_hist[-1]) / _dot(y_hist[-1], y_hist[-1])
        for (s, y), (a, rho) in zip(zip(s_hist, y_hist), reversed(alphas)):
            b = rho * _dot(y, q)
            q += (a - b) * s
        d = -q
        hd, dhd = problem.hessian_vector(d)
        if ridge:
            hd = hd + ridge * d
            dhd += ridge * _dot(d, d)
        gd = _dot(grad, d)
        if not (dhd > 0 and gd < 0):  # converged (or numerically flat): nothing left to gain
            break
        alpha = -gd / dhd
        values = values + alpha * d
        new_grad = grad + alpha * hd
        f = f + alpha * gd + 0.5 * alpha * alpha * dhd
        s_hist.append(alpha * d)
        y_hist.append(new_grad - grad)
        if len(s_hist) > history:
            s_hist.pop(0)
            y_hist.pop(0)
        grad = new_grad
        k += 1
        state = {"values": values, "grad": grad, "f": f, "k": k, "s": s_hist, "y": y_hist}
        yield k, f, state


def pack_state(state: dict) -> dict:
    """A solver state with its history lists stacked into tensors (``weights_only`` loads it)."""
    packed = {k: v for k, v in state.items() if k not in ("s", "y")}
    packed["s"] = torch.stack(state["s"]) if state["s"] else torch.zeros(0)
    packed["y"] = torch.stack(state["y"]) if state["y"] else torch.zeros(0)
    return packed


def unpack_state(packed: dict, device) -> dict:
    """The inverse of :func:`pack_state`, on ``device``."""
    state = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in packed.items()}
    state["s"] = list(state["s"]) if state["s"].numel() else []
    state["y"] = list(state["y"]) if state["y"].numel() else []
    return state
