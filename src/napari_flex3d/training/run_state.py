"""A training run's state, built new from its settings or restored from its last checkpoint.

:class:`RunState` is everything a run holds between minibatches; :func:`new_run` builds it
from a :class:`TrainConfig` (reading the particles, building mesh and model, the first
latents), :func:`restored_run` from ``checkpoints/last.pt`` (resume). What a checkpoint
holds is written by :func:`.outputs.checkpoint_state`. Both take ``progress(stage, done,
total, unit)``; :func:`prepared` runs either in a helper thread and yields those reports as
:class:`~.events.SetupProgress` events, so a set-up of minutes (the image check, the
variability start at 10^5-10^6 particles) shows where it is and can be stopped. Imports
config, core (io, mesh, model) and training's own modules below the loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..model.run import checkpoint_path, config_and_model
from . import events as ev
from .distributed import DistContext
from .latent_state import LatentView, checked_latent_box, empirical_prior, latent_view
from .latents import GridPrior, initial_latents
from .schedule import band_limit, lr_factor
from .setup import adam

__all__ = ["RunState", "SetupCancelled", "new_run", "restored_run", "prepared", "read_inputs", "adam_for_canonical"]


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
    latent_view: LatentView | None = None  # the model at config.latent_box for inference (None: the model itself)
    latent_prior: GridPrior | None = None  # the empirical prior (config.latent_prior_shape), None: the Gaussian
    latent_mass: torch.Tensor | None = None  # (grid**K,) this epoch's posterior weights on the grid, for the prior
    # the epoch in progress (a mid-epoch checkpoint holds them, so a resumed run continues the same epoch)
    epoch_order: np.ndarray | None = None  # (n_train,) the epoch's shuffle of train_idx positions; None between epochs
    epoch_step: int = 0  # its steps done
    epoch_losses: list = field(default_factory=list)  # its steps' losses so far
    epoch_residuals: list = field(default_factory=list)
    latents_before: np.ndarray | None = None  # (n_particles, K) the latents at its start (latent agreement)
    checkpoint_clock: float = field(default_factory=time.monotonic)  # when the last checkpoint was written
    notices: list = field(default_factory=list)  # events raised inside a step (micro-batch halved), for the loop to yield
    # (key, minibatches) of the held-out particles, read and transformed once (training.metrics); not checkpointed
    validation_batches: tuple | None = None

    @property
    def box(self) -> int:
        return self.model.box

    @property
    def apix(self) -> float:
        return self.model.apix

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train_idx) / self.config.batch))


def _no_progress(stage: str, done: int = 0, total: int = 0, unit: str = "") -> None:
    """A set-up's progress report that goes nowhere (see :func:`prepared`)."""


def read_inputs(config: TrainConfig, folder=None, read_only: bool = False, log=None, progress=None):
    """The particles a run trains on (an ``io.particles.ParticleSet``): the input file, cut to
    ``config.half_set`` and ``config.max_particles``, without its unusable images
    (:func:`~.setup.usable_particles`, the check's record kept in ``folder``, the run's);
    ``ValueError`` for a missing input or no poses. ``progress``: a set-up's report (the
    stages and the scan's images done), else the scan's own bar on a terminal."""
    from ..io.particles import half_set_rows, read_particles
    from .setup import usable_particles

    if not config.particles:
        raise ValueError("TrainConfig.particles: no particle file given")
    if not config.map:
        raise ValueError("TrainConfig.map: no consensus map given")
    if progress is not None:
        progress("reading particles")
    ps = read_particles(config.particles, passthrough=config.passthrough, root=config.root).require_images()
    if not ps.has_poses:
        raise ValueError(f"{config.particles}: particles have no poses (a consensus refinement is needed)")
    half = config.half_set
    if half:  # one half set only (independent flows per half map), in input order
        ps = ps.subset(half_set_rows(ps, half))
        if len(ps) == 0:
            raise ValueError(f"{config.particles}: half set {half} is empty")
    if config.max_particles is not None and config.max_particles < len(ps):
        ps = ps.subset(np.arange(config.max_particles))

    def scanned(done: int, total: int) -> None:
        progress("checking images", done, total, "images")

    return usable_particles(ps, config, folder, read_only=read_only, log=log,
                            progress=None if progress is None else scanned)


def adam_for_canonical(model, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam on ``V`` with a step relative to the RMS of the initial map (its units are arbitrary)."""
    values = model.canonical.values
    rms = float(values.detach().pow(2).mean().sqrt()) or 1.0
    return adam([values], lr=config.lr_canonical * rms)


def new_run(config: TrainConfig, out_dir: Path, device: torch.device, write_files: bool = True,
            progress=_no_progress) -> RunState:
    """A fresh run: inputs read, settings checked before anything is built, mesh and model
    built (``mesh.npz`` written unless ``write_files`` is false: ranks other than 0), the
    train/validation split, noise spectra and first latents; each stage reported to
    ``progress(stage, done, total, unit)``. A micro-batch halved by the variability start
    (out of GPU memory) is kept in the run's settings, its events in ``run.notices``."""
    from ..mesh.mesh import save_mesh
    from .micro_batch import MicroBatchState
    from .setup import build_mask_and_mesh, build_model, consensus_at_box, estimate_spectra, split_train_val, training_box

    # other ranks read rank 0's record if it is there
    ps = read_inputs(config, out_dir, read_only=not write_files, progress=progress)
    box = training_box(config.box, int(ps.box))
    # settings refused before anything is built or written (the schedule's checks run on the first step too)
    if config.latent_box is not None:
        checked_latent_box(config.latent_box, box)
    band_limit(0.0, config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    lr_factor(0.0, config.epochs, config.lr_final, config.band_ramp_epochs)
    apix = float(ps.apix) * ps.box / box
    progress("consensus map and mesh")
    consensus = consensus_at_box(config.map, int(ps.box), float(ps.apix), box, resample=config.resample_map)
    mask, mesh = build_mask_and_mesh(consensus, apix, config)
    if write_files:  # rank 0 only under torchrun
        save_mesh(mesh, out_dir / "mesh.npz")
    progress("model")
    torch.manual_seed(config.seed)  # the flow generator's initial weights
    model = build_model(consensus, apix, mask, mesh, config).to(device)
    train_idx, val_idx = split_train_val(len(ps), config.val_fraction, config.seed)
    # the minibatch chosen from the training particles (``batch=None``); the run's settings keep the number
    config = dataclasses.replace(config, batch=config.minibatch(len(train_idx)))
    spectrum_idx = np.arange(min(len(ps), 2048))
    progress("noise spectra")
    spectra = estimate_spectra(ps, spectrum_idx, box, device)  # (n_groups, n_shells) on the device
    micro = MicroBatchState(config, device, box)
    if config.latent_init == "variability":
        z0 = _variability_init(ps, model, spectra, box, device, config, micro, progress)
        config = micro.config  # the micro-batch it fell back to, if it ran out of memory
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
        opt_flow=adam(model.flow.parameters(), lr=config.lr_flow),
        opt_canonical=adam_for_canonical(model, config),
        generator=generator,
        consensus=torch.as_tensor(consensus, device=device),
        latent_view=latent_view(config, model, ps, device),
        latent_prior=empirical_prior(config, device),
        notices=micro.notices,
    )


def _variability_init(ps, model, spectra, box: int, device, config: TrainConfig, micro, progress) -> np.ndarray:
    """Initial latents from the principal directions of variability (:mod:`.variability`), in
    ``micro``'s micro-batches; the particles done (of every pass) reported to ``progress``."""
    from ..model.flex import batch_from_particles
    from .variability import ITERATIONS, variability_latents

    chunk = max(config.batch, 256)
    fit_idx = np.arange(min(len(ps), 4000))
    total = ITERATIONS * len(fit_idx) + len(ps)  # the fitting passes, then every particle's coefficients
    done = [0]

    def batches(idx):
        def gen():
            for s in range(0, len(idx), chunk):
                part = idx[s : s + chunk]
                progress("latent initialisation", done[0], total, "particles")
                yield part, batch_from_particles(ps, part, box=box, device=device)
                done[0] += len(part)

        return gen

    z0 = variability_latents(
        model, batches(fit_idx), spectra, config.latent_dim, band=config.latent_init_band, seed=config.seed,
        final_batches=batches(np.arange(len(ps))), micro=micro,
    )
    progress("latent initialisation", total, total, "particles")
    return z0


def _optimizer_to(opt: torch.optim.Optimizer, device) -> None:
    for st in opt.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and k != "step":
                st[k] = v.to(device)


def _smaller_micro_batch(saved: TrainConfig, given: TrainConfig | None) -> TrainConfig:
    """The checkpoint's settings with the smaller of its micro-batch and ``given``'s (``None``: the whole
    minibatch): a resumption may lower it (a smaller GPU) but never undoes a halving after running out of memory."""
    want = None if given is None else given.micro_batch
    if want is None or (saved.micro_batch is not None and saved.micro_batch <= want):
        return saved
    return dataclasses.replace(saved, micro_batch=want)


def restored_run(config: TrainConfig | None, out_dir: Path, progress=_no_progress) -> RunState:
    """The run in ``out_dir`` as its last checkpoint left it (model, latents, optimisers, RNG,
    schedule position, learned prior and, from a mid-epoch checkpoint, the epoch's particle
    order, steps done and losses so far); ``config`` may change only what
    :func:`~napari_flex3d.model.run.config_and_model` lets a resumption change, and lower the micro-batch.
    Its stages are reported to ``progress`` as :func:`new_run`'s."""
    from ..io.checkpoint import load_checkpoint
    from .setup import consensus_at_box, resolve_device

    state = load_checkpoint(checkpoint_path(out_dir))
    given = config
    config, model = config_and_model(state, checkpoint_path(out_dir), config)
    config = _smaller_micro_batch(config, given)
    device = resolve_device(config.device)
    model = model.to(device)
    ps = read_inputs(config, out_dir, progress=progress)
    box, apix = int(state["box"]), float(state["apix"])
    progress("consensus map and mesh")
    consensus = consensus_at_box(config.map, int(ps.box), float(ps.apix), box, resample=config.resample_map)
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
        opt_flow=adam(model.flow.parameters(), lr=config.lr_flow),
        opt_canonical=adam([model.canonical.values], lr=config.lr_canonical),
        generator=generator,
        consensus=torch.as_tensor(consensus, device=device),
        epoch=int(state["epoch"]),
        global_step=int(state["global_step"]),
        history=json.loads(state["history_json"]),
        latent_view=latent_view(config, model, ps, device),
        latent_prior=empirical_prior(config, device, state.get("latent_prior")),
        latent_mass=state["latent_mass"].to(device) if "latent_mass" in state else None,
    )
    if "epoch_order" in state:  # written in the middle of an epoch
        run.epoch_order = state["epoch_order"].numpy()
        run.epoch_step = int(state["epoch_step"])
        run.epoch_losses = state["epoch_losses"].tolist()
        run.epoch_residuals = state["epoch_residuals"].tolist()
        run.latents_before = state["latents_before"].numpy()
    run.opt_flow.load_state_dict(state["opt_flow"])
    run.opt_canonical.load_state_dict(state["opt_canonical"])  # carries the scaled learning rate
    _optimizer_to(run.opt_flow, device)
    _optimizer_to(run.opt_canonical, device)
    return run


class SetupCancelled(Exception):
    """Raised in a set-up's thread at its next progress report once its consumer stopped iterating."""


_FINISHED = object()


def prepared(build: Callable[[Callable], RunState], poll_s: float = 0.1) -> Generator[ev.Event, None, RunState]:
    """``build(progress)`` (:func:`new_run` or :func:`restored_run`) in a helper thread, its progress
    yielded as :class:`~.events.SetupProgress` events; returns its run, raises its error.

    A generator can yield only between calls, and a set-up is a few long calls (reading and
    checking 10^6 images, the variability start); in a thread, its reports reach the consumer
    while it works: at most one per stage every ``poll_s`` (the newest), every stage's first.
    Stopping the iteration (``close()``, a napari worker's ``quit()``) makes the set-up stop at
    its next report (:class:`SetupCancelled`, swallowed). The thread uses the caller's CUDA
    device (``torch.cuda.set_device`` is per thread; torchrun's ranks set theirs).
    """
    reports: queue.SimpleQueue = queue.SimpleQueue()
    cancelled = threading.Event()
    outcome: dict = {}
    cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def progress(stage: str, done: int = 0, total: int = 0, unit: str = "") -> None:
        if cancelled.is_set():
            raise SetupCancelled(stage)
        reports.put(ev.SetupProgress(stage=stage, done=int(done), total=int(total), unit=unit))

    def work() -> None:
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            outcome["run"] = build(progress)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer's thread
            outcome["error"] = exc
        finally:
            reports.put(_FINISHED)

    thread = threading.Thread(target=work, name="flex3d-setup", daemon=True)
    thread.start()
    finished, last_stage = False, None
    try:
        while not finished:
            try:
                got = [reports.get(timeout=poll_s)]
            except queue.Empty:
                continue
            while True:
                try:
                    got.append(reports.get_nowait())
                except queue.Empty:
                    break
            finished = got[-1] is _FINISHED
            news: list = []  # (report, a stage's first): a stage's later reports replace each other
            for report in got[:-1] if finished else got:
                first, last_stage = report.stage != last_stage, report.stage
                if news and not news[-1][1] and news[-1][0].stage == report.stage:
                    news[-1] = (report, first)
                else:
                    news.append((report, first))
            for report, _ in news:
                yield report
            if not finished:
                time.sleep(poll_s)
    finally:
        cancelled.set()  # a consumer that stopped early: the set-up stops at its next report
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["run"]
