"""Motion-corrected half maps of a trained run: the support of the map at the particles' full
box, the frozen flow there, one L-BFGS solve per half set and mode, then the FSC report
(docs/validation.md; the paper's "High resolution refinement and validation").

A room of ``reconstruct``: it drives :mod:`.solver` (the L-BFGS solve), :mod:`.halfsets`
(which particles and which flow go to each half) and :mod:`.report` (FSC, sharpened maps,
report files). It may import ``conventions``, ``io``, ``mesh``, ``model``, ``ops`` and
``training`` (device choice, torchrun context).

The flow generator and the latents are frozen; the mesh is in Å, so the flow carries over
to the particles' full box ``N_H``. For each half set the canonical map ``V`` (values at the
voxels of the solvent mask, resampled to ``N_H``) is solved from zero by minimising the
whitened data term

    f(V) = 1/2 sum_i || C_i P(phi_i) D(u_i, V) - I_i ||^2_W  (+ ridge/2 ||V||^2)

with the particles streamed from disk in chunks, so memory does not grow with their number.
The same solver with zero flow gives the rigid baseline, so flex and rigid are compared on
equal terms (cryoSPARC writes both). The solver state is written after every iteration
(atomically), so a stopped run resumes where it was.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..conventions import voxel_grid_xyz_a
from ..io.atomic import check_output_space, torch_save
from ..io.mrc import read_map, write_map
from ..io.values import require_informative_map, require_same_extent
from ..io.particles import read_particles
from ..mesh.mesh import Mesh
from ..model.canonical import scatter_to_volume
from ..model.flex import barycentric_rows, batch_from_particles
from ..model.flow import interpolate_vertex_flow
from ..model.loss import estimate_noise_spectra
from ..io.image_check import MAX_UNUSABLE_FRACTION
from .halfsets import (check_latent_rows, half_flows, half_run_rows, load_frozen_run, select_subset, split_halves,
                       usable_particles)
from .report import validate_half_maps, write_fsc_files, write_sharpened_maps
from .solver import HalfMapProblem, lbfgs_quadratic, pack_state, unpack_state
from .validation import soften_mask

__all__ = [
    "HalfMapSettings",
    "HalfMapProblem",
    "ReconstructProgress",
    "HalfMapDone",
    "ReconstructFinished",
    "lbfgs_quadratic",
    "resample_mask",
    "reconstruct_run",
    "solve_half_maps",
    "half_run_rows",
    "consume",
]


# ----------------------------------------------------------------------------- settings and events


@dataclass(frozen=True)
class HalfMapSettings:
    """How the half maps are solved and validated (the options of ``flex3d reconstruct``).

    Attributes:
        masks: MRC paths, or ``{name: (N, N, N) array}`` at the reconstruction box, for local
            FSCs; a binary mask gets a raised-cosine edge ``mask_edge_a`` Å wide.
        iterations: L-BFGS iterations per half map.
        rigid: also solve the rigid (zero-flow) half maps with the same solver.
        box: reconstruction box (``None``: the particles' box); the pixel size follows.
        chunk: particles per pass chunk (fewer if they would not fit the memory budget).
        device: ``"cpu"``, ``"auto"`` or ``"cuda[:i]"``.
        resplit: ignore the input's half sets and split at random (``seed``).
        seed: for the re-split, the noise probe and the phase randomisation.
        randomise_from_a: Å from which masked FSCs are corrected by noise substitution;
            ``"auto"`` where the unmasked FSC falls below 0.8, ``None`` for no correction.
        ridge: Tikhonov weight ``ridge/2 |V|^2`` added to the objective.
        resume: continue from the finished half maps and solver states in ``out_dir``.
        noise_particles: particles probed for the noise spectra (the whitening).
        support_dilate_a: dilation (Å) of the training mask that bounds ``V`` at the new box.
        mask_edge_a: width (Å) of the soft edge given to binary user masks.
        resample_map: resample user masks whose extent in Å differs from the half maps' (another
            box or pixel size than the particles', not only another sampling) onto their grid;
            without it such a mask is refused.
    """

    masks: tuple | dict = ()
    iterations: int = 20
    rigid: bool = True
    box: int | None = None
    chunk: int = 256
    device: str = "cpu"
    resplit: bool = False
    seed: int = 0
    randomise_from_a: float | str | None = "auto"
    ridge: float = 0.0
    resume: bool = False
    noise_particles: int = 2000
    support_dilate_a: float = 10.0
    mask_edge_a: float = 10.0
    resample_map: bool = False


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


# ----------------------------------------------------------------------------- the support of V


def resample_mask(mask: np.ndarray, apix_in: float, box_out: int, apix_out: float, dilate_px: int = 1) -> np.ndarray:
    """Resample a binary/soft ``mask (N, N, N)`` to another box and pixel size (same centred
    Å frame, docs/conventions.md); returns a bool ``(box_out,)*3`` dilated by ``dilate_px`` voxels."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=np.float32)
    n_in = mask.shape[0]
    c = (np.arange(box_out) - box_out // 2) * apix_out / apix_in + n_in // 2  # output voxel -> input index
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    out = ndimage.map_coordinates(mask, [zz, yy, xx], order=1, mode="constant", cval=0.0) > 0.05
    if dilate_px > 0:
        out = ndimage.binary_dilation(out, iterations=int(dilate_px))
    return out


def _load_mask_file(path, box: int, apix: float, resample: bool = False) -> np.ndarray:
    """A user mask (MRC) at ``box``/``apix`` as float32 in [0, 1].

    A mask spanning the half maps' extent in Å (``box * apix``, within 1 %: the particles' grid,
    or the map at another sampling such as the full box when ``--box`` is smaller) is resampled
    to their grid (trilinear, the centre kept: docs/conventions.md). A mask of another extent, or
    of another shape with no pixel size in its header, was made for another map and is refused
    unless ``resample`` (``--resample-map``) places it by its pixel size (or, with none, over the
    same extent).
    """
    from scipy import ndimage

    m = read_map(path)
    data = np.asarray(m.data, dtype=np.float32)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise ValueError(f"{path}: a mask must be a cubic volume, got shape {data.shape}")
    header_apix = float(m.apix) if getattr(m, "apix", None) else None
    m_apix = header_apix or apix * box / data.shape[0]
    if not resample and not (header_apix is None and data.shape[0] == box):
        try:
            require_same_extent(f"{path}: mask", data.shape, header_apix, box, apix)
        except ValueError as exc:
            raise ValueError(f"{exc} (or pass --resample-map to place it by its pixel size)") from None
    if data.shape[0] != box or abs(m_apix - apix) > 1e-3 * apix:
        c = (np.arange(box) - box // 2) * apix / m_apix + data.shape[0] // 2
        zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
        data = ndimage.map_coordinates(data, [zz, yy, xx], order=1, mode="constant", cval=0.0)
    if data.max() <= 0:
        raise ValueError(f"{path}: the mask is empty")
    return np.clip(data / max(float(data.max()), 1.0), 0.0, 1.0).astype(np.float32)


def _reconstruction_box(ps, box: int | None) -> tuple[int, float]:
    """The box and pixel size of the half maps; the particles must have poses."""
    if not ps.has_poses:
        raise ValueError(f"{ps.source}: no poses; reconstruction needs a consensus refinement's poses")
    box_h = int(ps.box) if box is None else int(box)
    if box_h > ps.box:
        raise ValueError(f"--box {box_h} is larger than the particles' box {ps.box}")
    return box_h, float(ps.apix) * ps.box / box_h


def _support(models: list, box: int, apix: float, dilate_a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat voxel indices ``(n,)`` and centres ``(n, 3)`` xyz Å of the support of ``V`` at ``box``.

    The training masks (the union over the models: independent halves have two), resampled
    and dilated by ``dilate_a``, so that no density is cut at its edge (a cut would
    correlate the half maps falsely)."""
    dilate_px = max(1, int(np.ceil(dilate_a / apix)))
    support = np.zeros((box,) * 3, dtype=bool)
    for mdl in models:
        train_mask = np.zeros(mdl.box**3, dtype=np.float32)
        train_mask[mdl.canonical.voxel_index.cpu().numpy()] = 1.0
        support |= resample_mask(train_mask.reshape((mdl.box,) * 3), mdl.apix, box, apix, dilate_px=dilate_px)
    flat = torch.as_tensor(np.flatnonzero(support.reshape(-1)))
    return flat, voxel_grid_xyz_a(box, apix).reshape(-1, 3)[flat]  # (n,), (n, 3)


def _user_masks(masks, box: int, apix: float, edge_a: float, resample: bool = False) -> dict[str, torch.Tensor]:
    """``{name: (N, N, N)}`` soft masks for local FSCs, from MRC paths or ``{name: array}``."""
    user_masks = {}
    for m in masks.items() if isinstance(masks, dict) else masks:
        if isinstance(m, tuple):  # (name, array) at this box
            name, data = m[0], np.asarray(m[1], dtype=np.float32)
        else:
            name, data = Path(m).stem, _load_mask_file(m, box, apix, resample)
        user_masks[name] = torch.as_tensor(soften_mask(data, apix, edge_a))
    return user_masks


def _output_bytes(n_half_maps: int, n_modes: int, box: int, n_values: int, history: int = 8) -> int:
    """Bytes a reconstruction writes at its peak: float32 half and sharpened maps, and one
    solver state (values, gradient and ``history`` pairs of L-BFGS vectors) twice, the old
    one and the new being written."""
    return 4 * box**3 * (n_half_maps + n_modes) + 2 * 4 * n_values * (2 + 2 * history)


def _noise_spectra(ps, box: int, n_probe: int, seed: int) -> torch.Tensor:
    """The whitening: one radial noise spectrum per optics group ``(n_groups, n_shells)`` at ``box``,
    from ``n_probe`` particles drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    probe = np.sort(rng.choice(len(ps), size=min(n_probe, len(ps)), replace=False))
    b = batch_from_particles(ps, probe, box=box, device="cpu")
    return estimate_noise_spectra(b["images"], b["optics_group"], len(ps.optics))


def _flex_flow_fn(model, latents: torch.Tensor, points_xyz_a: torch.Tensor, device):
    """``idx -> (b, n, 3)`` voxel flow at the new box from the frozen flow generator."""
    from ..io.prefetch import host_to_device

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
        z = latents[host_to_device(torch.as_tensor(idx, dtype=torch.long), device)]
        return interpolate_vertex_flow(flow(z), bary_index, bary_weight)

    return flow_fn


# ----------------------------------------------------------------------------- one half map


@dataclass
class _Solve:
    """What every half map of one run shares: the problem's data, where it writes, and the
    passes over the particles done so far (for the ETA)."""

    settings: HalfMapSettings
    ps: object
    out: Path
    box: int
    apix: float
    flat_index: torch.Tensor
    points: torch.Tensor
    noise: torch.Tensor
    device: torch.device
    ctx: object
    t_start: float
    total_passes: int
    passes_done: int = 0
    t_solve: float = field(default_factory=time.time)

    def eta_s(self) -> float:
        elapsed = time.time() - self.t_solve
        return elapsed / max(self.passes_done, 1) * max(self.total_passes - self.passes_done, 0)

    def half_map(self, mode: str, half: str, idx: np.ndarray, flow_fn, kernel: str):
        """Solve (or, resuming, read or continue) one half map; yields events and returns
        ``(volume (N, N, N), objective or None)``."""
        from ..training.distributed import barrier

        s = self.settings
        main = self.ctx.is_main
        mrc_path = self.out / f"{mode}_half_{half}.mrc"
        state_path = self.out / "state" / f"{mode}_{half}.pt"
        if s.resume and mrc_path.exists() and not state_path.exists():  # finished before the stop
            vol = torch.as_tensor(np.array(read_map(mrc_path).data, dtype=np.float32))
            self.passes_done += s.iterations + 1
            yield HalfMapDone(mode, half, str(mrc_path))
            return vol, None
        problem = HalfMapProblem(
            self.ps, idx, self.points, flow_fn, self.box, self.apix, self.noise,
            chunk=s.chunk, kernel=kernel, device=self.device, ctx=self.ctx,
        )
        state = None
        if s.resume and state_path.exists():
            state = unpack_state(torch.load(state_path, weights_only=True, map_location=self.device), self.device)
            self.passes_done += int(state["k"]) + 1
        else:
            self.passes_done += 1  # the gradient at zero
        values = torch.zeros(problem.n_values, device=self.device)
        for k, f, state in lbfgs_quadratic(problem, s.iterations, state=state, ridge=s.ridge):
            self.passes_done += 1
            if main:
                torch_save(state_path, pack_state(state))
            eta = self.eta_s()
            values = state["values"]
            yield ReconstructProgress(mode, half, k, s.iterations, f, time.time() - self.t_start, eta)
        objective = None
        if state is not None:
            values = state["values"]
            objective = float(state["f"])
            self.passes_done += s.iterations - int(state["k"])  # stopped early: converged
        vol = scatter_to_volume(values.detach().cpu(), self.flat_index, self.box)  # V at the voxel centres
        if main:
            require_informative_map(vol.numpy(), f"{mrc_path}: the solved {mode} half map {half}")  # stop, not report
            write_map(mrc_path, vol.numpy(), self.apix, label=f"napari-flex3d {mode} half map {half}")
            if state_path.exists():
                state_path.unlink()
        barrier(self.ctx)
        yield HalfMapDone(mode, half, str(mrc_path))
        return vol, objective


# ----------------------------------------------------------------------------- the run


def reconstruct_run(
    run_dir,
    particles,
    out_dir,
    *,
    run_b=None,
    subset=None,
    passthrough=None,
    root=None,
    settings: HalfMapSettings | None = None,
    max_bad_image_fraction: float = MAX_UNUSABLE_FRACTION,
    **options,
) -> Iterator[object]:
    """Flex (and rigid) half maps of a trained run at the particles' full box; a generator of events.

    Loads the run's last checkpoint and ``latents.npy`` and the full-resolution particles
    (the same rows, in the same order, as for training), then :func:`solve_half_maps` with
    ``settings`` (``options`` override its fields).

    With ``run_b`` (independent half flows, the gold standard): ``run_dir`` was trained
    with ``--half-set A`` and ``run_b`` with ``--half-set B`` on ``particles``; flex half
    map A is solved with ``run_dir``'s flow and latents, B with ``run_b``'s, so nothing
    learnt from one half reaches the other half map.

    ``subset``: a STAR or ``.cs`` file; only the particles it lists (matched to ``particles``
    by image name, :func:`.halfsets.select_subset`) are used, with ``particles``' half sets.

    Images of NaN/Inf or constant pixels are left out, as in training (``max_bad_image_fraction``:
    more of them refuse the input); ``report.json`` counts them.
    """
    run = load_frozen_run(run_dir)
    ps = read_particles(particles, passthrough=passthrough, root=root).require_images()
    ps, unusable = usable_particles(ps, out_dir, max_bad_image_fraction)
    flows = half_flows(run, ps, run_dir, particles, run_b)
    if subset is not None:
        flows, ps = select_subset(flows, ps, subset)
    yield from solve_half_maps(flows.model, flows.latents, ps, out_dir, settings, model_b=flows.model_b,
                               latents_b=flows.latents_b, sources={**flows.sources, **unusable}, **options)


def solve_half_maps(
    model,
    latents: torch.Tensor,
    ps,
    out_dir,
    settings: HalfMapSettings | None = None,
    *,
    sources: dict | None = None,
    model_b=None,
    latents_b: torch.Tensor | None = None,
    **options,
) -> Iterator[object]:
    """Solve the flex (and rigid) half maps of a frozen ``FlexModel`` with per-particle
    ``latents (n, K)`` for the particles ``ps``; write the maps, FSC and report into ``out_dir``.

    ``settings``: a :class:`HalfMapSettings` (default: its defaults); ``options`` (its field
    names, e.g. ``iterations=8``) override single fields. ``sources`` go into the report.

    Independent half flows: with ``model_b`` and ``latents_b (n, K_b)``, flex half map A
    is solved with ``model``/``latents`` (rows of half A used) and half map B with
    ``model_b``/``latents_b`` (rows of half B used); the halves are the input's split
    (no re-split). ``report.json`` says ``"independent_half_flows"``.

    Writes ``flex_half_A.mrc``, ``flex_half_B.mrc``, ``flex_map.mrc`` (FSC-weighted, B-factor
    sharpened), the same for ``rigid_``, ``fsc.csv``, ``fsc.png`` and ``report.json``;
    ``state/`` holds the resumable solver states.
    """
    from ..training.distributed import barrier, context_from_env, init_process_group
    from ..training.setup import resolve_device

    s = dataclasses.replace(settings or HalfMapSettings(), **options)
    t_start = time.time()
    out = Path(out_dir)
    (out / "state").mkdir(parents=True, exist_ok=True)
    dev = resolve_device(s.device)
    ctx = context_from_env()  # under torchrun: chunks split over ranks, sums all-reduced, rank 0 writes
    init_process_group(ctx, dev)
    independent = model_b is not None
    latents, latents_b = check_latent_rows(ps, latents, latents_b, independent, s.resplit)
    box_h, apix_h = _reconstruction_box(ps, s.box)
    flat_index, points = _support([model] + ([model_b] if independent else []), box_h, apix_h, s.support_dilate_a)
    user_masks = _user_masks(s.masks, box_h, apix_h, s.mask_edge_a, s.resample_map)
    noise = _noise_spectra(ps, box_h, s.noise_particles, s.seed)
    half_a, half_b = split_halves(ps, s.resplit, s.seed, independent)

    modes = ["flex"] + (["rigid"] if s.rigid else [])
    flow_fns = {"A": _flex_flow_fn(model, latents, points, dev)}
    flow_fns["B"] = _flex_flow_fn(model_b, latents_b, points, dev) if independent else flow_fns["A"]
    kernels = {"A": model.kernel, "B": model_b.kernel if independent else model.kernel}
    jobs = [(m, h, idx) for m in modes for h, idx in (("A", half_a), ("B", half_b))]
    if ctx.is_main:  # refuse before the first pass a run whose maps and states cannot fit
        check_output_space(out, _output_bytes(len(jobs), len(modes), box_h, flat_index.numel()),
                           "the half maps, sharpened maps and solver states")
    solve = _Solve(s, ps, out, box_h, apix_h, flat_index, points, noise, dev, ctx, t_start,
                   total_passes=len(jobs) * (s.iterations + 1))
    maps, objectives = yield from _solve_jobs(solve, jobs, flow_fns, kernels, model.kernel)

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
        "iterations": s.iterations,
        "maps": {},
    }
    _validate_and_write(solve, report, maps, objectives, modes, user_masks, nyquist_train)
    barrier(ctx)
    yield ReconstructFinished(str(out), report)


def _solve_jobs(solve: _Solve, jobs: list, flow_fns: dict, kernels: dict, rigid_kernel: str):
    """Each ``(mode, half, rows)`` of ``jobs`` solved in turn (rigid maps with no flow); yields
    events and returns ``(maps, objectives)``, both keyed by ``(mode, half)``."""
    maps: dict[tuple[str, str], torch.Tensor] = {}
    objectives: dict[tuple[str, str], float] = {}
    for mode, half, idx in jobs:
        flex = mode == "flex"
        vol, objective = yield from solve.half_map(mode, half, idx, flow_fns[half] if flex else None,
                                                   kernels[half] if flex else rigid_kernel)
        maps[(mode, half)] = vol
        if objective is not None:
            objectives[(mode, half)] = objective
    return maps, objectives


def _validate_and_write(solve: _Solve, report: dict, maps, objectives, modes, user_masks, nyquist_train: float) -> None:
    """The FSCs of the solved maps into ``report``; rank 0 writes the sharpened maps and FSC files."""
    s, box_h, apix_h = solve.settings, solve.box, solve.apix
    validation = validate_half_maps(maps, objectives, modes, user_masks, box_h, apix_h, s.randomise_from_a, s.seed,
                                    nyquist_train)
    report["maps"] = validation.entries
    if solve.ctx.is_main:
        write_sharpened_maps(solve.out, validation, apix_h)
    report["ranks"] = solve.ctx.world
    if solve.ctx.is_main:
        write_fsc_files(solve.out, validation, report, box_h, apix_h, solve.t_start)


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
