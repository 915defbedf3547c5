"""The training loop: a generator of typed events (DESIGN.md §3, paper §2).

:func:`train_run` prepares a run (or restores one from its last checkpoint), then for
every minibatch: reads and Fourier-crops the particles to the training box, infers their
latents with the model frozen (auto-decoder; :mod:`.latents`), injects latent noise, and
takes one Adam step of the flow generator or of the canonical map as the schedule says
(:mod:`.schedule`), with the map and the data term band-limited by frequency marching.
After every epoch it measures the validation loss, writes a checkpoint atomically, and
yields the epoch's news. The caller may stop iterating at any yield (``close()``, or
napari's worker ``quit()``): the last checkpoint stays intact and ``resume=True``
continues from it, ending with the same parameters as an uninterrupted run on the CPU.

Run folder (``out_dir``)::

    config.json      every setting, version, command line, time (+ each resumption)
    checkpoints/last.pt   model, latents, optimisers, RNG state, schedule position, config
    mesh.npz         the mesh (mesh.build.save_mesh)
    latents.npy      (n_particles, K) float32, the input's row order (every epoch)
    history.json     per-epoch losses and timings (every epoch)
    canonical.mrc    the canonical map at the training box (at the end)
    particles.star   the input's rows and columns + rlnFlex3dLatent1..K (at the end)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig, from_dict, provenance, to_dict
from . import events as ev
from .distributed import DistContext
from ..io.prefetch import host_to_device
from ..model.loss import band_coefficients
from .latents import GridPrior, infer_latents_gradient, infer_latents_grid, initial_latents
from .schedule import FLOW, STRUCTURE, WARMUP, band_limit, lr_factor, phase_of_step
from ..model.run import CHECKPOINT_NAME, checkpoint_path, config_and_model

__all__ = ["train_run", "RunState", "latent_agreement"]

@dataclass
class RunState:
    """Everything a training run holds between minibatches (mutable; not an event)."""

    config: TrainConfig
    out_dir: Path
    device: torch.device
    ps: object  # io.particles.ParticleSet
    model: torch.nn.Module  # model.flex.FlexModel
    spectra: torch.Tensor  # (n_groups, n_shells) noise spectra at the training box
    latents: torch.Tensor  # (n_particles, K) float32 on the run's device (no host copy per step), input row order
    train_idx: np.ndarray
    val_idx: np.ndarray
    opt_flow: torch.optim.Optimizer
    opt_canonical: torch.optim.Optimizer
    generator: torch.Generator  # CPU: shuffles and latent noise
    consensus: torch.Tensor  # (N, N, N) consensus map at the training box (for the model FSC)
    epoch: int = 0  # epochs finished
    global_step: int = 0
    history: list = field(default_factory=list)
    dist: DistContext = field(default_factory=DistContext)  # this process's rank (torchrun); inactive alone
    latent_view: "LatentView | None" = None  # the model at config.latent_box for inference (None: the model itself)
    latent_prior: "GridPrior | None" = None  # the empirical prior (config.latent_prior_shape), None: the Gaussian
    latent_mass: torch.Tensor | None = None  # (grid**K,) this epoch's posterior weights on the grid, for the prior

    @property
    def box(self) -> int:
        return self.model.box

    @property
    def apix(self) -> float:
        return self.model.apix

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train_idx) / self.config.batch))


# --------------------------------------------------------------------------- building


@dataclass
class LatentView:
    """The model at a smaller box for latent inference (``TrainConfig.latent_box``).

    It shares the model's flow generator; its canonical map is the training map,
    band-limited and Fourier-cropped, refreshed before every inference; minibatches are
    Fourier-cropped to it (images and CTF); its noise spectra are estimated at its box.
    """

    model: torch.nn.Module  # FlexModel.at_box(box)
    spectra: torch.Tensor  # (n_groups, n_shells) at the view's box
    max_freq_px: float  # the highest frequency inference uses (band_end of this box's Nyquist)

    @property
    def box(self) -> int:
        return self.model.box

    def batch(self, batch: dict) -> dict:
        from ..ops.fourier import crop_rfft_2d, fourier_crop_2d

        out = dict(batch)
        out["images"] = fourier_crop_2d(batch["images"], self.box)
        out["ctf"] = crop_rfft_2d(batch["ctf"], self.box)
        out["box"], out["apix"] = self.box, self.model.apix
        return out


def _checked_latent_box(latent_box: int, training_box: int) -> int:
    box = int(latent_box)
    if box < 16 or box % 2 or box > training_box:
        raise ValueError(f"latent_box {box} must be even, >= 16 and <= the training box {training_box}")
    return box


def _latent_view(config: TrainConfig, model, ps, device) -> LatentView | None:
    """The inference view of ``model`` at ``config.latent_box``, or ``None`` (infer at the training box)."""
    from .setup import estimate_spectra

    if config.latent_box is None or int(config.latent_box) == model.box:
        return None
    box = _checked_latent_box(config.latent_box, model.box)
    spectra = estimate_spectra(ps, np.arange(min(len(ps), 2048)), box, device)
    return LatentView(model.at_box(box), spectra, config.band_end * box / 2)


def _empirical_prior(config: TrainConfig, device, log_density: torch.Tensor | None = None) -> GridPrior | None:
    """The learned latent prior where ``config`` asks for it and grid inference runs a joint
    first sweep (``latent_grid ** K <= 100``); ``None`` (the Gaussian) elsewhere. Starts as
    the Gaussian unless ``log_density`` (from a checkpoint) is given."""
    k, g = config.latent_dim, config.latent_grid
    if config.latent_prior_shape != "empirical" or config.latent_inference != "grid" or g**k > 100:
        return None
    if log_density is not None:
        return GridPrior(log_density.to(device), k, g, config.latent_range, config.latent_prior)
    return GridPrior.gaussian(k, g, config.latent_range, config.latent_prior, device)


def _read_inputs(config: TrainConfig):
    from ..io.particles import half_set_rows, read_particles

    if not config.particles:
        raise ValueError("TrainConfig.particles: no particle file given")
    if not config.map:
        raise ValueError("TrainConfig.map: no consensus map given")
    ps = read_particles(config.particles, passthrough=config.passthrough, root=config.root)
    if not ps.has_poses:
        raise ValueError(f"{config.particles}: particles have no poses (a consensus refinement is needed)")
    half = config.half_set
    if half:  # one half set only (independent flows per half map), in input order
        ps = ps.subset(half_set_rows(ps, half))
        if len(ps) == 0:
            raise ValueError(f"{config.particles}: half set {half} is empty")
    if config.max_particles is not None and config.max_particles < len(ps):
        ps = ps.subset(np.arange(config.max_particles))
    return ps


def _adam_for_canonical(model, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam on ``V`` with a step relative to the RMS of the initial map (its units are arbitrary)."""
    values = model.canonical.values
    rms = float(values.detach().pow(2).mean().sqrt()) or 1.0
    return torch.optim.Adam([values], lr=config.lr_canonical * rms)


def _new_run(config: TrainConfig, out_dir: Path, device: torch.device, write_files: bool = True) -> RunState:
    from ..mesh.build import save_mesh
    from .setup import build_mask_and_mesh, build_model, consensus_at_box, estimate_spectra, split_train_val, training_box

    ps = _read_inputs(config)
    box = training_box(config.box, int(ps.box))
    # settings refused before anything is built or written (the schedule's checks run on the first step too)
    if config.latent_box is not None:
        _checked_latent_box(config.latent_box, box)
    band_limit(0.0, config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    lr_factor(0.0, config.epochs, config.lr_final, config.band_ramp_epochs)
    apix = float(ps.apix) * ps.box / box
    consensus = consensus_at_box(config.map, int(ps.box), float(ps.apix), box)
    mask, mesh = build_mask_and_mesh(consensus, apix, config)
    if write_files:  # rank 0 only under torchrun
        save_mesh(mesh, out_dir / "mesh.npz")
    torch.manual_seed(config.seed)  # the flow generator's initial weights
    model = build_model(consensus, apix, mask, mesh, config).to(device)
    train_idx, val_idx = split_train_val(len(ps), config.val_fraction, config.seed)
    spectrum_idx = np.arange(min(len(ps), 2048))
    spectra = estimate_spectra(ps, spectrum_idx, box, device)  # (n_groups, n_shells) on the device
    if config.latent_init == "variability":
        z0 = _variability_init(ps, model, spectra, box, device, config)
    else:
        z0 = initial_latents(config.latent_init, len(ps), config.latent_dim, config.seed, config.latent_column, ps.table)
    generator = torch.Generator().manual_seed(config.seed)
    return RunState(
        config=config,
        out_dir=out_dir,
        device=device,
        ps=ps,
        model=model,
        spectra=spectra,
        latents=torch.as_tensor(z0).to(device),
        train_idx=train_idx,
        val_idx=val_idx,
        opt_flow=torch.optim.Adam(model.flow.parameters(), lr=config.lr_flow),
        opt_canonical=_adam_for_canonical(model, config),
        generator=generator,
        consensus=torch.as_tensor(consensus, device=device),
        latent_view=_latent_view(config, model, ps, device),
        latent_prior=_empirical_prior(config, device),
    )


def _variability_init(ps, model, spectra, box: int, device, config: TrainConfig) -> np.ndarray:
    """Initial latents from the principal directions of variability (:mod:`.variability`)."""
    from ..model.flex import batch_from_particles
    from .variability import variability_latents

    chunk = max(config.batch, 256)
    fit_idx = np.arange(min(len(ps), 4000))

    def batches(idx):
        def gen():
            for s in range(0, len(idx), chunk):
                part = idx[s : s + chunk]
                yield part, batch_from_particles(ps, part, box=box, device=device)

        return gen

    return variability_latents(
        model, batches(fit_idx), spectra, config.latent_dim, band=config.latent_init_band, seed=config.seed,
        final_batches=batches(np.arange(len(ps))),
    )


def _state_dict(run: RunState) -> dict:
    """The checkpoint: plain tensors, numbers and strings (``torch.load(weights_only=True)`` reads it)."""
    from .. import __version__

    return {
        "package_version": __version__,
        "config_json": json.dumps(to_dict(run.config)),
        "epoch": run.epoch,
        "global_step": run.global_step,
        "box": run.box,
        "apix": run.apix,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "latents": run.latents.detach().cpu().clone(),
        "spectra": run.spectra.detach().cpu(),
        "train_idx": torch.as_tensor(run.train_idx),
        "val_idx": torch.as_tensor(run.val_idx),
        "opt_flow": run.opt_flow.state_dict(),
        "opt_canonical": run.opt_canonical.state_dict(),
        "rng_torch": run.generator.get_state(),
        "history_json": json.dumps(run.history),
        **({} if run.latent_prior is None else {"latent_prior": run.latent_prior.log_density.detach().cpu()}),
    }


def _optimizer_to(opt: torch.optim.Optimizer, device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


def _restored_run(config: TrainConfig | None, out_dir: Path) -> RunState:
    from ..io.checkpoint import load_checkpoint
    from .setup import consensus_at_box, resolve_device

    state = load_checkpoint(checkpoint_path(out_dir))
    config, model = config_and_model(state, checkpoint_path(out_dir), config)
    device = resolve_device(config.device)
    model = model.to(device)
    ps = _read_inputs(config)
    box, apix = int(state["box"]), float(state["apix"])
    consensus = consensus_at_box(config.map, int(ps.box), float(ps.apix), box)
    latents = state["latents"].to(torch.float32)
    if latents.shape != (len(ps), config.latent_dim):
        raise ValueError(f"{out_dir}: checkpoint has latents {tuple(latents.shape)} for {len(ps)} particles")
    generator = torch.Generator()
    generator.set_state(state["rng_torch"])
    run = RunState(
        config=config,
        out_dir=out_dir,
        device=device,
        ps=ps,
        model=model,
        spectra=state["spectra"].to(device),
        latents=latents.to(device).clone(),
        train_idx=state["train_idx"].numpy(),
        val_idx=state["val_idx"].numpy(),
        opt_flow=torch.optim.Adam(model.flow.parameters(), lr=config.lr_flow),
        opt_canonical=torch.optim.Adam([model.canonical.values], lr=config.lr_canonical),
        generator=generator,
        consensus=torch.as_tensor(consensus, device=device),
        epoch=int(state["epoch"]),
        global_step=int(state["global_step"]),
        history=json.loads(state["history_json"]),
        latent_view=_latent_view(config, model, ps, device),
        latent_prior=_empirical_prior(config, device, state.get("latent_prior")),
    )
    run.opt_flow.load_state_dict(state["opt_flow"])
    run.opt_canonical.load_state_dict(state["opt_canonical"])  # carries the scaled learning rate
    _optimizer_to(run.opt_flow, device)
    _optimizer_to(run.opt_canonical, device)
    return run


# --------------------------------------------------------------------------- one step


@contextlib.contextmanager
def _trainable(model: torch.nn.Module, params: list):
    """Only ``params`` require gradients inside the block."""
    keep = [p.requires_grad for p in model.parameters()]
    ids = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in ids)
    try:
        yield
    finally:
        for p, k in zip(model.parameters(), keep):
            p.requires_grad_(k)


def _data_terms(
    run: RunState, batch: dict, z: torch.Tensor, max_freq_px: float, view: LatentView | None = None
) -> torch.Tensor:
    """Whitened data loss per particle ``(b,)`` of the model (or of ``view``, with a batch at its box) at ``z (b, K)``."""
    from ..model.loss import data_loss

    model, spectra = (run.model, run.spectra) if view is None else (view.model, view.spectra)
    pred = model.project(z, batch["rotations"], batch["shifts_a"], ctf=batch["ctf"])  # (b, N, N)
    noise = spectra[batch["optics_group"]]  # (b, n_shells)
    return data_loss(pred, batch["images"], noise, max_freq_px=max_freq_px, scale="fit")


def _infer(run: RunState, batch: dict, z0: torch.Tensor, max_freq_px: float) -> torch.Tensor:
    """Latents ``(b, K)`` refined with the model frozen (at ``run.latent_view``'s box if there is one)."""
    cfg, view = run.config, run.latent_view
    if cfg.latent_inference == "none":
        return z0
    if view is not None:
        view.model.copy_canonical_from(run.model)  # the training map as it is now, cropped
        batch = view.batch(batch)
        max_freq_px = min(max_freq_px, view.max_freq_px)

    def loss_fn(z):
        return _data_terms(run, batch, z, max_freq_px, view)

    with _trainable(run.model, []), (contextlib.nullcontext() if view is None else _trainable(view.model, [])):
        if cfg.latent_inference == "grid":
            if run.latent_prior is not None and run.latent_mass is None:
                run.latent_mass = torch.zeros_like(run.latent_prior.log_density)
            return infer_latents_grid(
                loss_fn, z0, sweeps=cfg.latent_steps, n_grid=cfg.latent_grid, z_range=cfg.latent_range,
                prior_weight=cfg.latent_prior, estimate=cfg.latent_estimate, prior=run.latent_prior,
                grid_mass=run.latent_mass,
            )
        return infer_latents_gradient(loss_fn, z0, steps=cfg.latent_steps, lr=cfg.lr_latent, prior_weight=cfg.latent_prior)


def _batch(run: RunState, idx: np.ndarray) -> dict:
    from ..model.flex import batch_from_particles

    return batch_from_particles(run.ps, idx, box=run.box, device=run.device)


def _local_idx(run: RunState, idx: np.ndarray) -> np.ndarray:
    """This rank's share of a global minibatch (all of it in one process)."""
    if not run.dist.active:
        return idx
    from .distributed import shard

    return idx[shard(idx, run.dist)]


def _step(run: RunState, idx: np.ndarray, phase: str, band: float, batch: dict | None = None) -> torch.Tensor:
    """One minibatch: latent inference (after warm-up), noise injection, one Adam step.

    Returns the per-particle ``(total, data, rigidity)`` losses as a ``(3,)`` float64 tensor
    on the run's device: reading it is left to the caller, so that nothing in the step
    waits for the device (the loop reads a step's losses after queuing the next step).

    ``idx (B,)`` is the global minibatch; under torchrun this rank takes its share
    (``batch``, if given, holds that share's images, e.g. from the prefetcher), the
    loss is its per-particle sum over ``B`` and the gradients are summed over ranks.
    """
    from ..model.loss import total_loss

    cfg, model, ctx = run.config, run.model, run.dist
    max_freq_px = band * run.box / 2
    model.max_freq_px = max_freq_px
    b_global = len(idx)
    if ctx.active:
        from .distributed import all_reduce_grads, all_reduce_sum, shard

        pos = shard(idx, ctx)
        idx = idx[pos]
    if batch is None and len(idx):
        batch = _batch(run, idx)
    rows = host_to_device(torch.as_tensor(idx, dtype=torch.long), run.device)
    z = run.latents[rows]
    if phase != WARMUP and len(idx):
        z = _infer(run, batch, z, max_freq_px)
        run.latents[rows] = z.detach()
    noise = torch.randn((b_global, z.shape[1]), generator=run.generator) * cfg.latent_noise  # CPU generator: same on any device
    if ctx.active:
        noise = noise[torch.as_tensor(pos)]
    z_noisy = z + host_to_device(noise, run.device)
    if phase == WARMUP:
        params, opts = list(model.flow.parameters()) + [model.canonical.values], [run.opt_flow, run.opt_canonical]
    elif phase == FLOW:
        params, opts = list(model.flow.parameters()), [run.opt_flow]
    else:
        params, opts = [model.canonical.values], [run.opt_canonical]
    with _trainable(model, params):
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        if len(idx):
            data = _data_terms(run, batch, z_noisy, max_freq_px)  # (b,)
            if phase == STRUCTURE:
                with torch.no_grad():
                    rigid = model.rigidity(z_noisy)
                lam = 0.0
            else:
                rigid = model.rigidity(z_noisy)  # (b,)
                lam = cfg.rigidity_lambda
            if ctx.active:  # this rank's part of the global batch mean
                loss = total_loss(data, rigid, lam, reduction="sum") / b_global
            else:
                loss = total_loss(data) if phase == STRUCTURE else total_loss(data, rigid, lam)
            loss.backward()
        else:  # a rank with no particles in a short last batch still joins the reduction
            data = rigid = torch.zeros(0, device=run.device)
        if ctx.active:
            all_reduce_grads(params)
        for opt in opts:
            opt.step()
    sums = torch.stack([data.detach().sum(), rigid.detach().sum()]).to(torch.float64)  # (2,)
    if ctx.active:
        sums = all_reduce_sum(sums)
    data_m, rigid_m = sums / b_global
    return torch.stack([data_m + cfg.rigidity_lambda * rigid_m, data_m, rigid_m])


def _set_learning_rates(run: RunState, factor: float) -> None:
    """Both optimisers' learning rates at ``factor`` times their start (kept as ``initial_lr``
    in each parameter group, so it travels with the optimiser's state into a checkpoint)."""
    for opt in (run.opt_flow, run.opt_canonical):
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def _validate(run: RunState, band: float) -> float:
    """Mean data loss per held-out particle at inferred latents (which are stored); ``nan`` without any.

    Under torchrun each rank takes ``val_idx[rank::world]`` and the sums are added over ranks.
    """
    if len(run.val_idx) == 0:
        return float("nan")
    max_freq_px = band * run.box / 2
    run.model.max_freq_px = max_freq_px
    total = torch.zeros(1, dtype=torch.float64, device=run.device)  # summed on the device, read once
    val_idx = _local_idx(run, run.val_idx)
    for s in range(0, len(val_idx), run.config.batch):
        idx = val_idx[s : s + run.config.batch]
        batch = _batch(run, idx)
        rows = host_to_device(torch.as_tensor(idx, dtype=torch.long), run.device)
        z = _infer(run, batch, run.latents[rows], max_freq_px)
        run.latents[rows] = z.detach()
        with torch.no_grad():
            total += _data_terms(run, batch, z, max_freq_px).sum().double()
    if run.dist.active:
        from .distributed import all_reduce_sum

        total = all_reduce_sum(total)
    return float(total) / len(run.val_idx)


def _update_latent_prior(run: RunState, epoch: int) -> None:
    """End of an epoch: the learned prior takes one EM step from the epoch's posterior weights
    (summed over ranks under torchrun), and the next epoch collects afresh. Warm-up epochs
    (only the validation particles inferred) leave it as it is."""
    mass, run.latent_mass = run.latent_mass, None
    if run.latent_prior is None or epoch < run.config.warmup_epochs:
        return
    if mass is None:  # this rank inferred nothing; it still joins the sum
        mass = torch.zeros_like(run.latent_prior.log_density)
    if run.dist.active:
        from .distributed import all_reduce_sum

        mass = all_reduce_sum(mass)
    run.latent_prior = run.latent_prior.updated(mass)


# --------------------------------------------------------------------------- epoch news


def latent_agreement(before: np.ndarray, after: np.ndarray) -> float:
    """The smallest canonical correlation between two latent tables ``(n, K)`` of the same
    particles: 1 when one is an affine map of the other (a latent space that only moved as a
    whole), lower as particles move against each other; nan with fewer than ``K + 2``
    particles or a constant axis."""
    from .recovery import canonical_correlations

    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    k = before.shape[1]
    if len(before) < k + 2 or np.any(before.std(0) < 1e-8) or np.any(after.std(0) < 1e-8):
        return float("nan")
    return float(canonical_correlations(before, after).min())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except ImportError:  # pragma: no cover (Windows)
        return float("nan")


@torch.no_grad()
def preview_volumes(model, latents: torch.Tensor, sigmas=(-1.0, 1.0)) -> np.ndarray:
    """Convected maps at ``mean + s * std`` along each latent axis: ``(K, len(sigmas), N, N, N)``."""
    mean = latents.mean(0)
    std = latents.std(0) if len(latents) > 1 else torch.ones(latents.shape[1], device=latents.device)
    out = []
    for k in range(latents.shape[1]):
        row = []
        for s in sigmas:
            z = mean.clone()
            z[k] = mean[k] + s * std[k]
            row.append(model.volume(z.to(model.vertices_a)).cpu().numpy())
        out.append(np.stack(row))
    return np.stack(out).astype(np.float32)


@torch.no_grad()
def _model_fsc(run: RunState) -> ev.FSCCurve:
    from ..ops.fsc import fsc, fsc_resolution, shell_frequencies_inv_a

    vol = run.model.canonical.to_volume(run.model.canonical_values())
    curve = fsc(vol, run.consensus).cpu().numpy()
    return ev.FSCCurve(
        epoch=run.epoch - 1,
        kind="model",
        frequencies_per_a=shell_frequencies_inv_a(run.box, run.apix),
        fsc=curve,
        resolution_a=fsc_resolution(curve, run.box, run.apix),
    )


def _write_progress(run: RunState) -> None:
    """Files refreshed every epoch: ``latents.npy`` and ``history.json`` (each written atomically)."""
    from ..io.checkpoint import atomic_write_bytes

    atomic_write_bytes(run.out_dir / "latents.npy", lambda fh: np.save(fh, run.latents.cpu().numpy().astype(np.float32)))
    atomic_write_bytes(run.out_dir / "history.json", lambda fh: fh.write(json.dumps(run.history, indent=1).encode()))


def write_final_outputs(run: RunState) -> None:
    """``canonical.mrc``, ``particles.star`` (+ ``particles.cs`` for a ``.cs`` input), latents and history."""
    from ..io.mrc import write_map
    from ..io.particles import write_cs, write_star

    _write_progress(run)
    with torch.no_grad():
        vol = run.model.canonical.to_volume(run.model.canonical_values()).cpu().numpy()
    write_map(run.out_dir / "canonical.mrc", vol.astype(np.float32), run.apix, label="napari-flex3d canonical map")
    z = run.latents.cpu().numpy().astype(np.float32)
    write_star(run.ps, run.out_dir / "particles.star", extra_columns={"rlnFlex3dLatent": z})
    if run.ps.fmt == "cryosparc":
        write_cs(run.ps, run.out_dir / "particles.cs", extra_fields={f"flex3d/latent_{k}": z[:, k] for k in range(z.shape[1])})


def _write_config(run: RunState, cli_argv, resumed: bool) -> None:
    path = run.out_dir / "config.json"
    doc = {"kind": "TrainConfig", "settings": to_dict(run.config), "provenance": provenance(cli_argv)}
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        doc["provenance"] = old.get("provenance", doc["provenance"])
        doc["resumed"] = old.get("resumed", []) + [{**provenance(cli_argv), "from_epoch": run.epoch}]
    doc["training_box"] = run.box
    doc["training_apix"] = run.apix
    path.write_text(json.dumps(doc, indent=2, default=str))


# --------------------------------------------------------------------------- the generator


def train_run(config: TrainConfig | None, out_dir, resume: bool = False, cli_argv=None) -> Iterator[ev.Event]:
    """Train 3DFlex, yielding :mod:`.events` as it goes; stop iterating at any time.

    Args:
        config: the settings (a resumed run takes its own from the checkpoint, but
            ``epochs``, ``device``, ``threads`` and ``preview_every`` from here if given).
        out_dir: run folder (created). A new run refuses a folder holding a checkpoint.
        resume: continue from ``out_dir/checkpoints/last.pt``.
        cli_argv: the command line to record in ``config.json``.
    """
    from ..io.checkpoint import save_checkpoint
    from ..io.prefetch import Prefetcher
    from . import distributed
    from .setup import resolve_device

    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    ctx = distributed.context_from_env()  # torchrun's RANK/WORLD_SIZE; inactive in one process
    if resume:
        if not checkpoint_path(out_dir).is_file():
            raise ValueError(f"{out_dir}: no checkpoint to resume (checkpoints/{CHECKPOINT_NAME} missing)")
        run = _restored_run(config, out_dir)
    else:
        if config is None:
            raise ValueError("train_run needs a TrainConfig for a new run")
        if checkpoint_path(out_dir).is_file():
            raise ValueError(f"{out_dir}: holds a training run already; resume it or choose another folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        run = _new_run(config, out_dir, resolve_device(config.device), write_files=ctx.is_main)
    run.dist = ctx
    own_group = False
    if ctx.active:
        import torch.distributed as tdist

        own_group = not tdist.is_initialized()
        distributed.init_process_group(ctx, run.device)
        if not resume:  # every rank built the same run; make sure, then take rank 0's numbers
            distributed.check_same(
                [(k, tuple(v.shape)) for k, v in run.model.state_dict().items()] + [tuple(run.latents.shape)],
                "the model's shapes (mesh) and latents",
            )
            distributed.broadcast_tensors(
                list(run.model.state_dict().values()) + [run.latents, run.spectra], run.device
            )
    cfg = run.config
    if resume and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if ctx.is_main:
        _write_config(run, cli_argv, resumed=resume)
    yield ev.RunStarted(
        run_dir=str(out_dir), n_particles=len(run.ps), n_train=len(run.train_idx), n_val=len(run.val_idx),
        box=run.box, apix=run.apix, device=str(run.device), epochs=cfg.epochs, steps_per_epoch=run.steps_per_epoch,
        start_epoch=run.epoch, n_vertices=int(run.model.vertices_a.shape[0]),
        latent_prior="gaussian" if run.latent_prior is None else f"learned ({cfg.latent_grid}^{cfg.latent_dim} grid)",
    )
    spe = run.steps_per_epoch
    while run.epoch < cfg.epochs:
        epoch, t0, c0 = run.epoch, time.perf_counter(), time.process_time()
        latents_before = run.latents.cpu().numpy().copy()  # once per epoch, for the latent agreement
        order = torch.randperm(len(run.train_idx), generator=run.generator).numpy()
        losses, residuals = [], []
        step_idx = [run.train_idx[np.sort(order[s * cfg.batch : (s + 1) * cfg.batch])] for s in range(spe)]

        def read_batch(idx):  # this rank's images of the next minibatch, read while the current one computes
            local = _local_idx(run, idx)
            return _batch(run, local) if len(local) else None

        def step_news(pending) -> ev.StepLoss:  # reads the step's losses off the device
            step, global_step, phase, band, values = pending
            loss, data, rigid = values.tolist()
            losses.append(loss)
            residual = 2.0 * data / band_coefficients(run.box, band * run.box / 2)
            residuals.append(residual)
            return ev.StepLoss(
                epoch=epoch, step=step, global_step=global_step, phase=phase, loss=loss, data_loss=data,
                rigidity_loss=rigid, band_limit=band, steps_per_epoch=spe, residual=residual,
            )

        pending = None  # the previous step, announced once the next one is queued: the device never idles for it
        with Prefetcher(read_batch, step_idx) as batches:
            for step, (idx, batch) in enumerate(zip(step_idx, batches)):
                band = band_limit(epoch + step / spe, cfg.epochs, cfg.band_start, cfg.band_end, cfg.band_ramp_epochs)
                phase = phase_of_step(
                    epoch, run.global_step - cfg.warmup_epochs * spe, cfg.warmup_epochs, cfg.flow_batches,
                    cfg.structure_batches,
                )
                # the rate a step uses is the one at its end: the last step runs at lr_final
                _set_learning_rates(run, lr_factor(epoch + (step + 1) / spe, cfg.epochs, cfg.lr_final, cfg.band_ramp_epochs))
                values = _step(run, idx, phase, band, batch=batch)
                run.global_step += 1
                if pending is not None:
                    yield step_news(pending)
                pending = (step, run.global_step, phase, band, values)
        if pending is not None:
            yield step_news(pending)
        band = band_limit(epoch + 1, cfg.epochs, cfg.band_start, cfg.band_end, cfg.band_ramp_epochs)
        val_loss = _validate(run, band)
        _update_latent_prior(run, epoch)
        if ctx.active:  # each particle was processed by one rank this epoch: assemble the full table
            owned = np.zeros(len(run.latents), bool)
            for idx in step_idx:
                owned[_local_idx(run, idx)] = True
            owned[_local_idx(run, run.val_idx)] = True
            run.latents = distributed.gather_rows(run.latents, owned, run.device)
        run.epoch += 1
        seconds = time.perf_counter() - t0
        std = tuple(run.latents.std(0).tolist()) if len(run.latents) > 1 else (0.0,) * cfg.latent_dim
        latents_after = run.latents.cpu().numpy().copy()
        summary = ev.EpochSummary(
            epoch=epoch, train_loss=float(np.mean(losses)), val_loss=val_loss, seconds=seconds,
            cpu_seconds=time.process_time() - c0, band_limit=band,
            latent_std=std, peak_memory_mb=_peak_memory_mb(run.device),
            train_residual=float(np.mean(residuals)) if residuals else float("nan"),
            val_residual=2.0 * val_loss / band_coefficients(run.box, band * run.box / 2),
            latent_agreement=latent_agreement(latents_before, latents_after),
        )
        run.history.append({k: v for k, v in dataclasses.asdict(summary).items()})
        path = checkpoint_path(out_dir)
        if ctx.is_main:
            path = save_checkpoint(path, _state_dict(run))  # atomic: a kill leaves the old one
            _write_progress(run)
        distributed.barrier(ctx)
        yield summary
        yield ev.LatentSnapshot(epoch=epoch, latents=latents_after)
        yield _model_fsc(run)
        if cfg.preview_every and (run.epoch % cfg.preview_every == 0 or run.epoch == cfg.epochs):
            yield ev.PreviewVolumes(
                epoch=epoch, sigmas=(-1.0, 1.0), volumes=preview_volumes(run.model, run.latents), apix=run.apix
            )
        yield ev.CheckpointWritten(epoch=run.epoch, path=str(path))
    if ctx.is_main:
        write_final_outputs(run)
    distributed.barrier(ctx)
    if own_group:
        import torch.distributed as tdist

        tdist.destroy_process_group()
    yield ev.RunFinished(run_dir=str(out_dir), epochs=run.epoch, seconds=time.perf_counter() - t_start)
