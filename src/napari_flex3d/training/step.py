"""One minibatch of training: read it, infer its latents with the model frozen, take one Adam step.

:func:`train_step` is the loop's inner step (latent inference after warm-up, latent noise,
one Adam step of the flow or of the canonical map as the schedule's phase says), its work
in micro-batches that halve on a CUDA out-of-memory error (:mod:`.micro_batch`). It never
reads the device: its losses come back as a tensor the loop reads one step later, so the
GPU is never idle waiting for the host (``tests/test_host_sync.py`` checks this). Imports
config, core (io, model) and training's :mod:`.latents`, :mod:`.latent_state`, :mod:`.micro_batch`,
:mod:`.schedule`, :mod:`.distributed`.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..io.prefetch import host_to_device
from .latent_state import LatentView
from .latents import infer_latents_gradient, infer_latents_grid
from .memory import STACK_ELEMENTS
from .micro_batch import in_micro_batches, rows_of
from .run_state import RunState
from .schedule import FLOW, STRUCTURE, WARMUP

__all__ = ["train_step", "infer_batch_latents", "data_terms", "model_data_terms", "stacked_data_terms", "read_batch",
           "with_spectrum", "local_rows", "set_learning_rates"]


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


def data_terms(
    run: RunState, batch: dict, z: torch.Tensor, max_freq_px: float, view: LatentView | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whitened data loss per particle ``(b,)`` of the model (or of ``view``, with a batch at its box) at ``z (b, K)``.

    ``values (n_vox,)``: the band-limited canonical values to project, if already at hand
    (``model.canonical_values()``, recomputed otherwise). Without gradients (validation)
    the particles go through in micro-batches (:mod:`.micro_batch`) that halve on a CUDA
    out-of-memory error; with gradients the caller makes the pieces.
    """
    if torch.is_grad_enabled():
        return model_data_terms(run, batch, z, max_freq_px, view, values)
    pieces = in_micro_batches(
        run, z.shape[0], lambda rows: model_data_terms(run, rows_of(batch, rows), z[rows], max_freq_px, view, values),
        "validation",
    )
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def model_data_terms(
    run: RunState, batch: dict, z: torch.Tensor, max_freq_px: float, view: LatentView | None = None,
    values: torch.Tensor | None = None, displacements: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`data_terms` of the whole ``batch`` in one piece (``displacements (b, v, 3)``: the flow
    generator's at ``z``, if the caller made them for its rigidity term too).

    With ``batch``'s poses tiled ``g`` times (:func:`_tiled`: row ``c * b + i`` is particle ``i`` of
    ``b``) and ``z (g * b, K)``, the ``g`` candidates of each particle: ``(g, b)``, its CTF, spectrum
    and noise not tiled but broadcast (the same numbers as a tiled batch's)."""
    from ..model.loss import spectral_data_loss

    model, spectra = (run.model, run.spectra) if view is None else (view.model, view.spectra)
    ctf = batch["ctf"]
    noise = spectra[batch["optics_group"]]  # (b, n_shells)
    if batch["rotations"].shape[0] == ctf.shape[0]:
        # the model's spectrum, CTF applied there: no transform back to images and forward again
        pred = model.project_spectrum(z, batch["rotations"], batch["shifts_a"], ctf=ctf, values=values,
                                      displacements=displacements)  # (b, N, N//2+1)
    else:
        pred = model.project_spectrum(z, batch["rotations"], batch["shifts_a"], values=values)  # (g * b, N, N//2+1)
        if ctf.shape[1:] != pred.shape[1:] or pred.shape[0] % ctf.shape[0]:
            raise ValueError(f"ctf {tuple(ctf.shape)} does not fit {pred.shape[0]} model spectra of {tuple(pred.shape[1:])}")
        pred = pred.view((-1,) + tuple(ctf.shape)) * ctf.to(pred.dtype.to_real())  # (g, b, N, N//2+1)
    return spectral_data_loss(pred, _target_spectrum(batch), noise, model.box, max_freq_px=max_freq_px)


def _target_spectrum(batch: dict) -> torch.Tensor:
    """The particles' orthonormal ``rfft2`` ``(b, N, N//2+1)``: ``batch["spectrum"]`` if a caller made it once."""
    spectrum = batch.get("spectrum")
    return torch.fft.rfft2(batch["images"], norm="ortho") if spectrum is None else spectrum


def with_spectrum(batch: dict) -> dict:
    """``batch`` with its particles' ``rfft2`` as ``"spectrum"``, for callers that evaluate it more than once
    (inference, then the loss at the latents found); a latent view crops the images and drops it."""
    return dict(batch, spectrum=_target_spectrum(batch))


def _tiled(batch: dict, copies: int) -> dict:
    """``batch`` with its poses (rotations, shifts) repeated ``copies`` times along the first axis: row
    ``c * b + i`` is particle ``i`` (``b`` particles), for one splat of every candidate; the rest as it is."""
    if copies == 1:
        return batch
    # cat: 4 operator calls, repeat 33
    return dict(batch, **{key: torch.cat([batch[key]] * copies) for key in ("rotations", "shifts_a")})


def stacked_data_terms(
    run: RunState, batch: dict, max_freq_px: float, view: LatentView | None, values: torch.Tensor
):
    """``z (g, b, K) -> (g, b)``: :func:`data_terms` at ``g`` candidate latents per particle, as few
    calls of the model as :data:`.memory.STACK_ELEMENTS` allows. The poses are tiled once per call size and
    reused; the particles' spectra, CTFs and noise spectra are not tiled (:func:`model_data_terms`)."""
    model = run.model if view is None else view.model
    b = batch["images"].shape[0]
    batch = with_spectrum(batch)  # the particles transformed once
    per_row = 3 * values.shape[0] + 12 * model.box**2  # the moved points and the image-sized temporaries
    rows = STACK_ELEMENTS // per_row
    tiles: dict = {}

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        g, k_dim = z.shape[0], z.shape[2]
        per_call = max(1, min(g, rows // max(b, 1)))
        out = []
        for start in range(0, g, per_call):
            c = min(per_call, g - start)
            if c not in tiles:
                tiles[c] = _tiled(batch, c)
            flat = z[start : start + c].reshape(c * b, k_dim)
            out.append(model_data_terms(run, tiles[c], flat, max_freq_px, view, values=values).view(c, b))
        return torch.cat(out) if len(out) > 1 else out[0]

    return loss_fn


def infer_batch_latents(
    run: RunState, batch: dict, z0: torch.Tensor, max_freq_px: float, values: torch.Tensor | None = None
) -> torch.Tensor:
    """Latents ``(b, K)`` refined with the model frozen (at ``run.latent_view``'s box if there is one),
    in micro-batches (:mod:`.micro_batch`): each particle's latents depend on its own images alone.
    ``values``: the model's :meth:`canonical_values` at ``max_freq_px``, if the caller has them (without a view)."""
    cfg, view = run.config, run.latent_view
    if cfg.latent_inference == "none":
        return z0
    if view is not None:
        view.model.copy_canonical_from(run.model)  # the training map as it is now, cropped
        batch = view.batch({key: value for key, value in batch.items() if key != "spectrum"})  # at the view's box
        max_freq_px = min(max_freq_px, view.max_freq_px)

    with _trainable(run.model, []), (contextlib.nullcontext() if view is None else _trainable(view.model, [])):
        if cfg.latent_inference == "grid":
            if run.latent_prior is not None and run.latent_mass is None:
                run.latent_mass = torch.zeros_like(run.latent_prior.log_density)
            if values is None or view is not None:
                with torch.no_grad():  # the map is frozen: band-limit it once, not once per candidate
                    values = (run.model if view is None else view.model).canonical_values()

            # a warm start once every particle has had an epoch of inference (the first after warm-up)
            window = cfg.latent_window if run.epoch > cfg.warmup_epochs else None

            def infer(part: dict, z_part: torch.Tensor) -> torch.Tensor:
                return infer_latents_grid(
                    stacked_data_terms(run, part, max_freq_px, view, values), z_part, sweeps=cfg.latent_steps,
                    n_grid=cfg.latent_grid, z_range=cfg.latent_range, prior_weight=cfg.latent_prior,
                    estimate=cfg.latent_estimate, prior=run.latent_prior, grid_mass=run.latent_mass, stacked=True,
                    window=window,
                )
        else:

            def infer(part: dict, z_part: torch.Tensor) -> torch.Tensor:
                def loss_fn(z):
                    return model_data_terms(run, part, z, max_freq_px, view)

                return infer_latents_gradient(
                    loss_fn, z_part, steps=cfg.latent_steps, lr=cfg.lr_latent, prior_weight=cfg.latent_prior
                )

        # a piece adds to the prior's grid mass only once it is done: one redone after running out of memory counts once
        pieces = in_micro_batches(run, z0.shape[0], lambda rows: infer(rows_of(batch, rows), z0[rows]), "latent inference")
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def read_batch(run: RunState, idx: np.ndarray) -> dict:
    """Particles ``idx`` as a model batch at the training box, on the run's device."""
    from ..model.flex import batch_from_particles

    return batch_from_particles(run.ps, idx, box=run.box, device=run.device)


def local_rows(run: RunState, idx: np.ndarray) -> np.ndarray:
    """This rank's share of a global minibatch (all of it in one process)."""
    if not run.dist.active:
        return idx
    from .distributed import shard

    return idx[shard(idx, run.dist)]


def path_latents(z: torch.Tensor, generator: torch.Generator, pos: np.ndarray | None = None,
                 n_global: int | None = None) -> torch.Tensor:
    """``(m, K)`` latents on the segments between each of ``z (m, K)`` and a random other row,
    at a uniform random fraction of the way: where ``--rigidity-path`` evaluates half the
    rigidity prior, so that the states between the particles' own (few, when most particles sit
    at two ends) are held locally rigid too; a chord between the ends of a rotation is not.
    Drawn once a step from the run's CPU ``generator`` for the global minibatch of ``n_global``
    rows (default ``m``) and taken at this rank's rows ``pos``, so every rank's generator stays in
    step; under torchrun each rank pairs its rows among its own share."""
    m, n = len(z), len(z) if n_global is None else n_global
    offset = torch.randint(1, max(n, 2), (n,), generator=generator)  # drawn on every rank, its share or none
    u = torch.rand((n, 1), generator=generator)
    if m == 0:  # a rank with no particles in a short last batch
        return z.detach()
    if pos is not None:
        offset, u = offset[torch.as_tensor(pos)], u[torch.as_tensor(pos)]
    partner = (torch.arange(m) + offset) % m  # another row where m > 1 (in a short share, possibly itself)
    partner, u = host_to_device(partner, z.device), host_to_device(u, z.device).to(z.dtype)
    return (z + u * (z[partner] - z)).detach()


def train_step(run: RunState, idx: np.ndarray, phase: str, band: float, batch: dict | None = None) -> torch.Tensor:
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
        batch = read_batch(run, idx)
    rows = host_to_device(torch.as_tensor(idx, dtype=torch.long), run.device)
    z = run.latents[rows]
    if phase != WARMUP and len(idx):
        z = infer_batch_latents(run, batch, z, max_freq_px)
        run.latents[rows] = z.detach()
    noise = torch.randn((b_global, z.shape[1]), generator=run.generator) * cfg.latent_noise  # CPU generator: same on any device
    if ctx.active:
        noise = noise[torch.as_tensor(pos)]
    z_noisy = z + host_to_device(noise, run.device)
    z_path = None  # half the prior between the particles' latents (drawn once a step: micro-batches slice it)
    if cfg.rigidity_path and phase != STRUCTURE and b_global > 1:
        z_path = path_latents(z_noisy, run.generator, pos if ctx.active else None, b_global)
    if phase == WARMUP:
        params, opts = list(model.flow.parameters()) + [model.canonical.values], [run.opt_flow, run.opt_canonical]
    elif phase == FLOW:
        params, opts = list(model.flow.parameters()), [run.opt_flow]
    else:
        params, opts = [model.canonical.values], [run.opt_canonical]
    with _trainable(model, params):

        def zero_grad():
            for opt in opts:
                opt.zero_grad(set_to_none=True)

        def backward(rows: slice) -> torch.Tensor:  # one micro-batch: its share of the loss's gradient
            whole = rows.stop - rows.start == len(idx)
            part = rows_of(batch, rows)
            z_part = z_noisy[rows]
            d = model.displacements(z_part)  # (m, v, 3): once for both terms
            data = model_data_terms(run, part, z_part, max_freq_px, displacements=d)  # (m,)
            if phase == STRUCTURE:
                with torch.no_grad():
                    rigid = model.rigidity(z_part, displacements=d)
                lam = 0.0
            else:
                rigid = model.rigidity(z_part, displacements=d)  # (m,)
                lam = cfg.rigidity_weight()
                if z_path is not None:
                    rigid = 0.5 * (rigid + model.rigidity(z_path[rows]))
            if ctx.active or not whole:  # this piece's part of the global batch mean
                loss = total_loss(data, rigid, lam, reduction="sum") / b_global
            else:
                loss = total_loss(data) if phase == STRUCTURE else total_loss(data, rigid, lam)
            loss.backward()
            return torch.stack([data.detach().sum(), rigid.detach().sum()])  # (2,)

        zero_grad()
        if len(idx):  # an out-of-memory error drops the accumulated gradients and starts again with smaller pieces
            parts = in_micro_batches(run, len(idx), backward, "model update", restart=zero_grad)
            sums = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
        else:  # a rank with no particles in a short last batch still joins the reduction
            sums = torch.zeros(2, device=run.device)
        if ctx.active:
            all_reduce_grads(params)
        for opt in opts:
            opt.step()
    sums = sums.to(torch.float64)  # (2,)
    if ctx.active:
        sums = all_reduce_sum(sums)
    data_m, rigid_m = sums / b_global
    return torch.stack([data_m + cfg.rigidity_weight() * rigid_m, data_m, rigid_m])


def set_learning_rates(run: RunState, factor: float) -> None:
    """Both optimisers' learning rates at ``factor`` times their start (kept as ``initial_lr``
    in each parameter group, so it travels with the optimiser's state into a checkpoint)."""
    for opt in (run.opt_flow, run.opt_canonical):
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
