"""Motion-corrected half maps by full-batch L-BFGS through the convect-project operator
(DESIGN.md §4, the paper's "High resolution refinement and validation").

The flow generator and the latents are frozen; the mesh is in Å, so the flow carries
over to the particles' full box ``N_H``. For each half set the canonical map ``V`` (values
at the voxels of the solvent mask, resampled to ``N_H``) is solved from zero by
minimising the whitened data term

    f(V) = 1/2 sum_i || C_i P(phi_i) D(u_i, V) - I_i ||^2_W  (+ ridge/2 ||V||^2)

with the particles streamed from disk in chunks, so memory does not grow with their
number. ``f`` is quadratic in ``V`` (the operator is linear in the values), so each
L-BFGS iteration takes its step by an exact line search: one pass over the particles
gives the Hessian-vector product ``H d`` and with it the step, the new gradient and the
new objective. The same solver with zero flow gives the rigid baseline, so flex and
rigid are compared on equal terms (cryoSPARC writes both).

The solver state (values, gradient, L-BFGS history) is written after every iteration
(atomically), so a stopped run resumes where it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = [
    "HalfMapProblem",
    "ReconstructProgress",
    "HalfMapDone",
    "ReconstructFinished",
    "lbfgs_quadratic",
    "resample_mask",
    "reconstruct_run",
    "half_run_rows",
]


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class ReconstructProgress:
    """One L-BFGS iteration of one half map. ``mode`` is ``"flex"`` or ``"rigid"``, ``half`` ``"A"``/``"B"``."""

    mode: str
    half: str
    iteration: int
    iterations: int
    loss: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class HalfMapDone:
    mode: str
    half: str
    path: str


@dataclass(frozen=True)
class ReconstructFinished:
    out_dir: str
    report: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- the linear problem


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
        from ..io.prefetch import Prefetcher
        from ..model.flex import batch_from_particles

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
        from ..ops.splat import convect_project

        m = self.oversample
        images = convect_project(
            values, points, batch["rotations"], batch["shifts_a"], self.box * m, self.apix / m, kernel=self.kernel
        )  # (b, mN, mN): splatted on a finer grid so that little aliases into the last shells
        spec = torch.fft.rfft2(images)
        if m > 1:
            spec = _crop_rfft2(spec, self.box)  # (b, N, N//2+1), Fourier-cropped back
        return torch.fft.irfft2(spec * batch["ctf"], s=(self.box, self.box))

    def objective_and_gradient(self, values: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``f(V)`` (without ridge) and its gradient ``(n,)``: one pass over the particles."""
        from ..model.loss import data_loss

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
        from ..model.loss import data_loss

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


def _crop_rfft2(spec: torch.Tensor, box: int) -> torch.Tensor:
    """Keep the central ``box`` frequencies of an ``rfft2`` spectrum ``(..., M, M//2+1)``.

    The scale is unchanged (``irfft2`` with ``s=(box, box)`` then gives images whose grey
    levels are ``(box/M)^2`` of a Fourier-cropped image's; the solved map absorbs it)."""
    m = spec.shape[-2]
    h = box // 2
    rows = torch.cat([torch.arange(0, box - h, device=spec.device), torch.arange(m - h, m, device=spec.device)])
    return spec[..., rows, : h + 1]


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


# ----------------------------------------------------------------------------- the run


def resample_mask(mask: np.ndarray, apix_in: float, box_out: int, apix_out: float, dilate_px: int = 1) -> np.ndarray:
    """Resample a binary/soft ``mask (N, N, N)`` to another box and pixel size (same centred
    Å frame, DESIGN.md §1); returns a bool ``(box_out,)*3`` dilated by ``dilate_px`` voxels."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=np.float32)
    n_in = mask.shape[0]
    c = (np.arange(box_out) - box_out // 2) * apix_out / apix_in + n_in // 2  # output voxel -> input index
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    out = ndimage.map_coordinates(mask, [zz, yy, xx], order=1, mode="constant", cval=0.0) > 0.05
    if dilate_px > 0:
        out = ndimage.binary_dilation(out, iterations=int(dilate_px))
    return out


def _load_mask_file(path, box: int, apix: float) -> np.ndarray:
    """A user mask (MRC) at ``box``/``apix`` as float32 in [0, 1], resampled if needed."""
    from scipy import ndimage

    from ..io.mrc import read_map

    m = read_map(path)
    data = np.asarray(m.data, dtype=np.float32)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"{path}: a mask must be a cubic volume, got shape {data.shape}")
    m_apix = float(m.apix) if getattr(m, "apix", None) else apix * box / data.shape[0]
    if data.shape[0] != box or abs(m_apix - apix) > 1e-3 * apix:
        c = (np.arange(box) - box // 2) * apix / m_apix + data.shape[0] // 2
        zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
        data = ndimage.map_coordinates(data, [zz, yy, xx], order=1, mode="constant", cval=0.0)
    if data.max() <= 0:
        raise ValueError(f"{path}: the mask is empty")
    return np.clip(data / max(float(data.max()), 1.0), 0.0, 1.0).astype(np.float32)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _pack_state(state: dict) -> dict:
    packed = {k: v for k, v in state.items() if k not in ("s", "y")}
    packed["s"] = torch.stack(state["s"]) if state["s"] else torch.zeros(0)
    packed["y"] = torch.stack(state["y"]) if state["y"] else torch.zeros(0)
    return packed


def _unpack_state(packed: dict, device) -> dict:
    state = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in packed.items()}
    state["s"] = list(state["s"]) if state["s"].numel() else []
    state["y"] = list(state["y"]) if state["y"].numel() else []
    return state


def _flex_flow_fn(model, latents: torch.Tensor, points_xyz_a: torch.Tensor, device):
    """``idx -> (b, n, 3)`` voxel flow at the new box from the frozen flow generator."""
    from ..mesh.build import Mesh
    from ..model.flex import barycentric_rows
    from ..model.flow import interpolate_vertex_flow

    mesh = Mesh(
        vertices_a=model.vertices_a.detach().cpu().numpy(),
        cells=model.cells.detach().cpu().numpy(),
        box=model.box,
        apix=model.apix,
    )
    bary_index, bary_weight = barycentric_rows(mesh, points_xyz_a.cpu())
    bary_index, bary_weight = bary_index.to(device), bary_weight.to(device)
    flow = model.flow.to(device).eval()
    latents = latents.to(device)

    def flow_fn(idx: np.ndarray) -> torch.Tensor:
        from ..io.prefetch import host_to_device

        z = latents[host_to_device(torch.as_tensor(idx, dtype=torch.long), device)]
        return interpolate_vertex_flow(flow(z), bary_index, bary_weight)

    return flow_fn


def _write_fsc_png(path: Path, freqs: np.ndarray, curves: dict[str, np.ndarray], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional: the CSV holds the same numbers
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, c in curves.items():
        if name.startswith("mask-induced"):  # the noise-substitution curve: what the mask alone correlates
            ax.plot(freqs, c, label=name, lw=0.8, ls=":", color="grey")
            continue
        ax.plot(freqs, c, label=name, lw=1.5, ls="--" if name.startswith("rigid") else "-")
    ax.axhline(0.143, color="grey", lw=0.8, ls=":")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.02)
    ax.set_title(title)
    ax.set_xlim(0, float(freqs[-1]) * 1.02)
    top = ax.twiny()  # the same axis labelled in Å
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= ax.get_xlim()[1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1 / t:.3g}" for t in ticks])
    top.set_xlabel("resolution (Å)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _load_frozen_run(run_dir) -> tuple[object, torch.Tensor, str]:
    """A finished run's flow model, ``latents (m, K)`` and the half set it was trained on
    (``"A"``/``"B"``, or ``""`` for all particles)."""
    from ..model.run import load_run

    config, _, model = load_run(run_dir, device="cpu")
    run_dir = Path(run_dir)
    latents_path = run_dir / "latents.npy"
    if not latents_path.exists():
        raise ValueError(f"{run_dir}: no latents.npy (is this a finished training run?)")
    latents = torch.as_tensor(np.load(latents_path, allow_pickle=False), dtype=torch.float32)
    return model, latents, config.half_set  # "" for runs older than the field (from_dict fills the default)


def half_run_rows(ps, half: str, n_run: int, run_dir) -> np.ndarray:
    """The rows of the full particle set ``ps`` that a run trained with ``--half-set half`` holds,
    in its order (input order; ``(n_run,)``); ``ValueError`` if the counts or the split disagree."""
    from ..io.particles import half_set_rows

    rows = half_set_rows(ps, half)
    if rows.size != n_run:
        raise ValueError(
            f"{run_dir}: trained on {n_run} particles of half set {half}, but {ps.source} has {rows.size} "
            f"particles in half set {half} (the runs must be trained on halves A and B of these particles, "
            "without --max-particles)"
        )
    run_star = Path(run_dir) / "particles.star"
    if run_star.exists():  # the same images, not only the same count
        from ..io.particles import read_particles

        run_ps = read_particles(run_star)
        if len(run_ps) == rows.size and not np.array_equal(run_ps.image_indices, ps.image_indices[rows]):
            raise ValueError(
                f"{run_dir}: its particles.star is not half set {half} of {ps.source} in input order "
                "(image indices differ)"
            )
    return rows


def reconstruct_run(
    run_dir,
    particles,
    out_dir,
    *,
    run_b=None,
    passthrough=None,
    root=None,
    **kwargs,
) -> Iterator[object]:
    """Flex (and rigid) half maps of a trained run at the particles' full box; a generator of events.

    Loads the run's last checkpoint and ``latents.npy`` and the full-resolution particles
    (the same rows, in the same order, as for training), then :func:`solve_half_maps`
    (keyword arguments go there).

    With ``run_b`` (independent half flows, the gold standard): ``run_dir`` was trained
    with ``--half-set A`` and ``run_b`` with ``--half-set B`` on ``particles``; flex half
    map A is solved with ``run_dir``'s flow and latents, B with ``run_b``'s, so nothing
    learnt from one half reaches the other half map.
    """
    from ..io.particles import read_particles

    model, latents, half = _load_frozen_run(run_dir)
    run_dir = Path(run_dir)
    ps = read_particles(particles, passthrough=passthrough, root=root)
    if run_b is not None:
        model_b, latents_b, half_b = _load_frozen_run(run_b)
        if half != "A" or half_b != "B":
            raise ValueError(
                f"independent half flows need --run trained with --half-set A and --run-b with --half-set B; "
                f"{run_dir} has half_set {half or 'none (all particles)'!r}, {run_b} has {half_b or 'none (all particles)'!r}"
            )
        rows_a = half_run_rows(ps, "A", latents.shape[0], run_dir)
        rows_b = half_run_rows(ps, "B", latents_b.shape[0], run_b)
        full_a = torch.zeros(len(ps), latents.shape[1])  # rows of half B unused
        full_a[torch.as_tensor(rows_a)] = latents
        full_b = torch.zeros(len(ps), latents_b.shape[1])  # rows of half A unused
        full_b[torch.as_tensor(rows_b)] = latents_b
        yield from solve_half_maps(model, full_a, ps, out_dir, model_b=model_b, latents_b=full_b,
                                   sources={"run": str(run_dir), "run_b": str(run_b), "particles": str(particles)},
                                   **kwargs)
        return
    if half:
        raise ValueError(
            f"{run_dir} was trained on half set {half} only: pass the other half's run with --run-b "
            "(independent half flows)"
        )
    if len(ps) != latents.shape[0]:
        raise ValueError(
            f"{particles}: {len(ps)} particles, but the run's latents.npy has {latents.shape[0]} rows "
            "(the same particles, in the same order, are needed)"
        )
    yield from solve_half_maps(model, latents, ps, out_dir, sources={"run": str(run_dir), "particles": str(particles)},
                               **kwargs)


def solve_half_maps(
    model,
    latents: torch.Tensor,
    ps,
    out_dir,
    *,
    masks: tuple = (),
    iterations: int = 20,
    rigid: bool = True,
    box: int | None = None,
    chunk: int = 256,
    device: str = "cpu",
    resplit: bool = False,
    seed: int = 0,
    randomise_from_a: float | str | None = "auto",
    ridge: float = 0.0,
    resume: bool = False,
    noise_particles: int = 2000,
    support_dilate_a: float = 10.0,
    mask_edge_a: float = 10.0,
    sources: dict | None = None,
    model_b=None,
    latents_b: torch.Tensor | None = None,
) -> Iterator[object]:
    """Solve the flex (and rigid) half maps of a frozen ``FlexModel`` with per-particle
    ``latents (n, K)`` for the particles ``ps``; write the maps, FSC and report into ``out_dir``.

    Independent half flows: with ``model_b`` and ``latents_b (n, K_b)``, flex half map A
    is solved with ``model``/``latents`` (rows of half A used) and half map B with
    ``model_b``/``latents_b`` (rows of half B used); the halves are the input's split
    (no re-split). ``report.json`` says ``"independent_half_flows"``.

    ``masks``: MRC paths or ``{name: (N, N, N) array}`` for local FSCs; a binary mask gets
    a raised-cosine edge ``mask_edge_a`` Å wide (a soft mask is used as it is). Writes
    ``flex_half_A.mrc``, ``flex_half_B.mrc``, ``flex_map.mrc`` (FSC-weighted, B-factor
    sharpened), the same for ``rigid_``, ``fsc.csv``, ``fsc.png`` and ``report.json``;
    ``state/`` holds the resumable solver states.
    """
    from ..io.mrc import write_map
    from ..model.loss import estimate_noise_spectra
    from ..reconstruct.rigid import half_set_indices
    from ..training.setup import resolve_device
    from .validation import informative_range, masked_fsc, sharpen, soften_mask

    from ..training.distributed import barrier, context_from_env, init_process_group

    t_start = time.time()
    out = Path(out_dir)
    (out / "state").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    ctx = context_from_env()  # under torchrun: chunks split over ranks, sums all-reduced, rank 0 writes
    init_process_group(ctx, dev)
    main = ctx.is_main
    latents = torch.as_tensor(latents, dtype=torch.float32)
    if len(ps) != latents.shape[0]:
        raise ValueError(f"{len(ps)} particles but {latents.shape[0]} latent rows")
    independent = model_b is not None
    if independent:
        if latents_b is None:
            raise ValueError("model_b needs latents_b (n, K_b): half B's latents on the rows of the full set")
        latents_b = torch.as_tensor(latents_b, dtype=torch.float32)
        if len(ps) != latents_b.shape[0]:
            raise ValueError(f"{len(ps)} particles but {latents_b.shape[0]} latent rows for half B")
        if resplit:
            raise ValueError("independent half flows use the input's split: resplit is not possible")
    if not ps.has_poses:
        raise ValueError(f"{ps.source}: no poses; reconstruction needs a consensus refinement's poses")
    box_h = int(ps.box) if box is None else int(box)
    if box_h > ps.box:
        raise ValueError(f"--box {box_h} is larger than the particles' box {ps.box}")
    apix_h = float(ps.apix) * ps.box / box_h

    # support of V at the new box: the training mask, resampled and dilated by support_dilate_a,
    # so that no density is cut at its edge (a cut would correlate the half maps falsely)
    dilate_px = max(1, int(np.ceil(support_dilate_a / apix_h)))
    support = np.zeros((box_h,) * 3, dtype=bool)
    for mdl in [model] + ([model_b] if independent else []):  # independent halves: the union of both supports
        train_mask = np.zeros(mdl.box**3, dtype=np.float32)
        train_mask[mdl.canonical.voxel_index.cpu().numpy()] = 1.0
        support |= resample_mask(train_mask.reshape((mdl.box,) * 3), mdl.apix, box_h, apix_h, dilate_px=dilate_px)
    flat = np.flatnonzero(support.reshape(-1))
    from ..conventions import voxel_grid_xyz_a

    points = voxel_grid_xyz_a(box_h, apix_h).reshape(-1, 3)[torch.as_tensor(flat)]  # (n, 3)
    user_masks = {}
    for m in masks.items() if isinstance(masks, dict) else masks:
        if isinstance(m, tuple):  # (name, array) at this box
            name, data = m[0], np.asarray(m[1], dtype=np.float32)
        else:
            name, data = Path(m).stem, _load_mask_file(m, box_h, apix_h)
        user_masks[name] = torch.as_tensor(soften_mask(data, apix_h, mask_edge_a))

    # whitening: one radial noise spectrum per optics group, at this box
    from ..model.flex import batch_from_particles

    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(ps), size=min(noise_particles, len(ps)), replace=False))
    b = batch_from_particles(ps, probe, box=box_h, device="cpu")
    noise = estimate_noise_spectra(b["images"], b["optics_group"], len(ps.optics))

    # the input's split; a deterministic re-split (seeded) only when asked, or for unlabelled particles
    labels = np.full(len(ps), -1) if resplit else np.asarray(ps.half_set)
    if independent:
        from ..io.particles import half_set_rows

        half_set_rows(ps, "A")  # raises unless every particle has a half set
    half_a, half_b = half_set_indices(SimpleNamespace(half_set=labels), np.arange(len(ps)), seed)
    if half_a.size == 0 or half_b.size == 0:
        raise ValueError(f"{ps.source}: a half set is empty ({half_a.size} / {half_b.size} particles)")

    modes = ["flex"] + (["rigid"] if rigid else [])
    flow_fns = {"A": _flex_flow_fn(model, latents, points, dev)}
    flow_fns["B"] = _flex_flow_fn(model_b, latents_b, points, dev) if independent else flow_fns["A"]
    kernels = {"A": model.kernel, "B": model_b.kernel if independent else model.kernel}
    jobs = [(m, h, idx) for m in modes for h, idx in (("A", half_a), ("B", half_b))]
    total_passes = len(jobs) * (iterations + 1)
    passes_done = 0
    t_solve = time.time()
    maps: dict[tuple[str, str], torch.Tensor] = {}
    objectives: dict[tuple[str, str], float] = {}
    from ..model.canonical import scatter_to_volume

    flat_index = torch.as_tensor(flat)

    for mode, half, idx in jobs:
        mrc_path = out / f"{mode}_half_{half}.mrc"
        state_path = out / "state" / f"{mode}_{half}.pt"
        if resume and mrc_path.exists() and not state_path.exists():
            from ..io.mrc import read_map

            maps[(mode, half)] = torch.as_tensor(np.array(read_map(mrc_path).data, dtype=np.float32))
            passes_done += iterations + 1
            yield HalfMapDone(mode, half, str(mrc_path))
            continue
        problem = HalfMapProblem(
            ps, idx, points, flow_fns[half] if mode == "flex" else None, box_h, apix_h, noise,
            chunk=chunk, kernel=kernels[half] if mode == "flex" else model.kernel, device=dev, ctx=ctx,
        )
        state = None
        if resume and state_path.exists():
            state = _unpack_state(torch.load(state_path, weights_only=True, map_location=dev), dev)
            passes_done += int(state["k"]) + 1
        else:
            passes_done += 1  # the gradient at zero
        values = torch.zeros(problem.n_values, device=dev)
        for k, f, state in lbfgs_quadratic(problem, iterations, state=state, ridge=ridge):
            passes_done += 1
            if main:
                _atomic_torch_save(_pack_state(state), state_path)
            elapsed = time.time() - t_solve
            eta = elapsed / max(passes_done, 1) * max(total_passes - passes_done, 0)
            values = state["values"]
            yield ReconstructProgress(mode, half, k, iterations, f, time.time() - t_start, eta)
        if state is not None:
            values = state["values"]
            objectives[(mode, half)] = float(state["f"])
            passes_done += iterations - int(state["k"])  # stopped early: converged
        vol = scatter_to_volume(values.detach().cpu(), flat_index, box_h)  # V at the voxel centres
        maps[(mode, half)] = vol
        if main:
            write_map(mrc_path, vol.numpy(), apix_h, label=f"napari-flex3d {mode} half map {half}")
            if state_path.exists():
                state_path.unlink()
        barrier(ctx)
        yield HalfMapDone(mode, half, str(mrc_path))

    # validation
    from ..ops.fsc import fsc_resolution, shell_frequencies_a

    freqs = shell_frequencies_a(box_h, apix_h)
    nyquist_train = 2.0 * max(model.apix, model_b.apix if independent else model.apix)
    report: dict = {
        **(sources or {}),
        "box": box_h,
        "apix": apix_h,
        "training_box": model.box,
        "training_apix": model.apix,
        "training_nyquist_a": nyquist_train,
        "independent_half_flows": independent,
        "particles_used": {"A": int(half_a.size), "B": int(half_b.size)},
        "iterations": iterations,
        "maps": {},
    }
    columns = {"frequency_1_per_a": freqs, "resolution_a": 1.0 / np.maximum(freqs, 1e-12)}
    curves_png = {}
    randomise = randomise_from_a
    if randomise == "auto":
        # RELION's choice, where the unmasked FSC falls below 0.8; the coarsest over the modes, so
        # that flex and rigid masked curves are corrected from the same shell on and compare fairly
        at_08 = [fsc_resolution(masked_fsc(maps[(m, "A")], maps[(m, "B")], apix_h).curve, box_h, apix_h, 0.8)
                 for m in modes]
        randomise = max(at_08)
        randomise = None if not np.isfinite(randomise) or randomise <= 2 * apix_h else randomise
    for mode in modes:
        a, bmap = maps[(mode, "A")], maps[(mode, "B")]
        entry = {"objective": {h: objectives.get((mode, h)) for h in ("A", "B")}}
        res = masked_fsc(a, bmap, apix_h)
        entry["global"] = {"fsc_0143_a": res.resolution_0143_a, "fsc_05_a": res.resolution_05_a}
        columns[f"fsc_{mode}"] = res.curve
        curves_png[f"{mode} (global)"] = res.curve
        for name, m in user_masks.items():
            r = masked_fsc(a, bmap, apix_h, mask=m, randomise_from_a=randomise, seed=seed)
            entry[name] = {"fsc_0143_a": r.resolution_0143_a, "fsc_05_a": r.resolution_05_a, "corrected": r.corrected,
                           "randomised_from_a": randomise if r.corrected else None}
            if r.randomised is not None:  # mask-induced correlation past the randomisation resolution
                past = np.arange(freqs.size) >= r.from_shell
                induced = float(np.max(r.randomised[past])) if past.any() else 0.0
                entry[name]["mask_induced_fsc_max"] = induced
                info = informative_range(r, box_h, apix_h)
                entry[name].update(info)
                if not info["fsc_0143_informative"]:
                    entry[name]["warning"] = (
                        f"mask {name!r} is too tight or small for these maps: phase-randomised maps correlate "
                        f"more than 0.5 inside it past {randomise:.1f} Å (up to {induced:.2f}); "
                        f"its FSC is informative "
                        f"only to {info['informative_to_a']:.1f} Å, so its 0.143 resolution says little"
                    )
                columns[f"mask_induced_{mode}_{name}"] = r.randomised
                if mode == "flex":
                    curves_png[f"mask-induced ({name})"] = r.randomised
            columns[f"fsc_{mode}_{name}"] = r.curve
            curves_png[f"{mode} ({name})"] = r.curve
        combined = 0.5 * (a + bmap)
        sharp, bfac = sharpen(combined, apix_h, res.curve, res.resolution_0143_a)
        entry["bfactor_a2"] = bfac
        if main:
            write_map(
                out / f"{mode}_map.mrc", sharp.numpy(), apix_h,
                label=f"napari-flex3d {mode} map: FSC-weighted, sharpened B={-bfac:.1f} A^2, "
                f"lowpass {res.resolution_0143_a:.2f} A",
            )
        entry["beyond_training_nyquist"] = bool(res.resolution_0143_a < nyquist_train)
        report["maps"][mode] = entry
    report["ranks"] = ctx.world
    if main:
        with open(out / "fsc.csv", "w") as fh:
            names = list(columns)
            fh.write(",".join(names) + "\n")
            for i in range(freqs.size):
                fh.write(",".join(f"{columns[n][i]:.6g}" for n in names) + "\n")
        report["fsc_png"] = _write_fsc_png(
            out / "fsc.png", freqs, curves_png, f"half-map FSC, box {box_h} at {apix_h:.3g} Å"
        )
        report["time_s"] = time.time() - t_start
        with open(out / "report.json", "w") as fh:
            json.dump(report, fh, indent=2, default=float)
    barrier(ctx)
    yield ReconstructFinished(str(out), report)


def consume(events, progress: bool = True) -> dict:
    """Run a reconstruction generator to the end with a tqdm bar; return the report."""
    bar = None
    report: dict = {}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        tqdm = None
    for ev in events:
        if isinstance(ev, ReconstructProgress):
            if bar is None and progress and tqdm is not None:
                bar = tqdm(total=ev.iterations, unit="it")
            if bar is not None:
                if bar.n >= ev.iterations or ev.iteration < bar.n:
                    bar.reset(total=ev.iterations)
                bar.set_description(f"{ev.mode} half {ev.half}")
                bar.n = ev.iteration
                bar.set_postfix(loss=f"{ev.loss:.4g}", eta=f"{ev.eta_s / 60:.1f} min")
                bar.refresh()
        elif isinstance(ev, ReconstructFinished):
            report = ev.report
    if bar is not None:
        bar.close()
    return report

