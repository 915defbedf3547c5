"""Half-set plumbing for the half maps: which particles go to which half, and independent
half flows (``--run`` trained on half A, ``--run-b`` on half B).

A room of ``reconstruct``; it may import ``io`` and ``model`` (the run loader) and
:mod:`.rigid`'s split. Also the particle subset of ``flex3d reconstruct --subset``. Half sets are ``ps.half_set`` int8 (0 = A, 1 = B, -1 = unknown);
``"A"``/``"B"`` appear only where a user names a half (``--half-set``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch

from ..io.particles import half_set_rows, read_particles
from ..model.run import final_latents, load_run
from .rigid import half_set_indices

__all__ = ["FrozenRun", "HalfFlows", "load_frozen_run", "half_run_rows", "half_flows", "check_latent_rows", "split_halves",
           "usable_particles", "select_subset"]


class FrozenRun(NamedTuple):
    """A finished run's flow model, ``latents (m, K)`` and the half set it was trained on
    (``"A"``/``"B"``, or ``""`` for all particles)."""

    model: torch.nn.Module
    latents: torch.Tensor
    half_set: str


class HalfFlows(NamedTuple):
    """What :func:`~.halfmaps.solve_half_maps` needs of the runs: half A's (or the only) model and
    ``latents (n, K)`` on the rows of the full set, half B's when the halves have their own flows
    (else ``None``), and the sources named in the report."""

    model: torch.nn.Module
    latents: torch.Tensor
    model_b: torch.nn.Module | None
    latents_b: torch.Tensor | None
    sources: dict


def load_frozen_run(run_dir) -> FrozenRun:
    """A finished run: its last checkpoint's model (CPU), its ``latents.npy`` and its half set."""
    config, _, model = load_run(run_dir, device="cpu")
    latents = torch.as_tensor(final_latents(Path(run_dir)), dtype=torch.float32)
    return FrozenRun(model, latents, config.half_set)  # "" for runs older than the field (from_dict fills it)


def half_run_rows(ps, half: str, n_run: int, run_dir) -> np.ndarray:
    """The rows of the full particle set ``ps`` that a run trained with ``--half-set half`` holds,
    in its order (input order; ``(n_run,)``); ``ValueError`` if the counts or the split disagree."""
    rows = half_set_rows(ps, half)
    if rows.size != n_run:
        raise ValueError(
            f"{run_dir}: trained on {n_run} particles of half set {half}, but {ps.source} has {rows.size} "
            f"particles in half set {half} (the runs must be trained on halves A and B of these particles, "
            "without --max-particles)"
        )
    run_star = Path(run_dir) / "particles.star"
    if run_star.exists():  # the same images, not only the same count
        run_ps = read_particles(run_star)
        if len(run_ps) == rows.size and not np.array_equal(run_ps.image_indices, ps.image_indices[rows]):
            raise ValueError(
                f"{run_dir}: its particles.star is not half set {half} of {ps.source} in input order "
                "(image indices differ)"
            )
    return rows


def usable_particles(ps, out_dir, max_fraction: float) -> tuple[object, dict]:
    """``(ps without its unusable images, report entry)``: images of NaN/Inf or constant pixels left
    out (:mod:`~napari_flex3d.io.image_check`, the record kept in ``out_dir`` for ``--resume``), as
    training leaves them out, so the rows still match the run's latents."""
    from ..io.image_check import exclude_unusable_images

    usable, found = exclude_unusable_images(ps, out_dir, max_fraction=max_fraction)
    return usable, {"unusable_images": {"count": found.count, "of": found.n_images, "first": list(found.names[:3])}}


def select_subset(flows: HalfFlows, ps, subset) -> tuple[HalfFlows, object]:
    """``(flows, ps)`` cut to the particles a STAR or ``.cs`` file ``subset`` lists, matched by
    image name (``io.particle_names``), not by row: the subset may come in any order and from
    any folder. The rows keep ``ps``'s order, half sets and metadata. ``ValueError`` when a
    listed particle is not in ``ps`` (or is one of its unusable images), or none is."""
    from ..io.particle_names import match_by_name, names_from_file, particle_names

    wanted = names_from_file(subset)
    rows, their_rows = match_by_name(particle_names(ps), wanted, what=str(subset))
    if rows.size == 0:
        raise ValueError(f"--subset {subset}: none of its {len(wanted)} particles is in {ps.source} "
                         "(particles are matched by image name: stack file name and index)")
    if rows.size < len(wanted):
        missing = np.setdiff1d(np.arange(len(wanted)), their_rows)
        raise ValueError(f"--subset {subset}: {missing.size} of its {len(wanted)} particles are not among the usable "
                         f"particles of {ps.source} (first: {', '.join(map(str, wanted[missing[:3]]))})")
    take = torch.as_tensor(rows)
    sources = {**flows.sources, "subset": str(subset), "subset_particles": int(rows.size)}
    cut = HalfFlows(flows.model, flows.latents[take], flows.model_b,
                    None if flows.latents_b is None else flows.latents_b[take], sources)
    return cut, ps.subset(rows)


def _on_full_rows(latents: torch.Tensor, rows: np.ndarray, n: int) -> torch.Tensor:
    """``latents (m, K)`` of a half run placed at its ``rows`` of a zero ``(n, K)``: the other
    half's rows stay unused."""
    full = torch.zeros(n, latents.shape[1])
    full[torch.as_tensor(rows)] = latents
    return full


def half_flows(run: FrozenRun, ps, run_dir, particles, run_b=None) -> HalfFlows:
    """The flows of a trained run (or of two half runs, ``run_b`` trained on half B) over the
    full particle set ``ps``, checked against it."""
    run_dir = Path(run_dir)
    if run_b is not None:
        other = load_frozen_run(run_b)
        if run.half_set != "A" or other.half_set != "B":
            raise ValueError(
                f"independent half flows need --run trained with --half-set A and --run-b with --half-set B; "
                f"{run_dir} has half_set {run.half_set or 'none (all particles)'!r}, "
                f"{run_b} has {other.half_set or 'none (all particles)'!r}"
            )
        rows_a = half_run_rows(ps, "A", run.latents.shape[0], run_dir)
        rows_b = half_run_rows(ps, "B", other.latents.shape[0], run_b)
        return HalfFlows(
            run.model, _on_full_rows(run.latents, rows_a, len(ps)), other.model,
            _on_full_rows(other.latents, rows_b, len(ps)),
            {"run": str(run_dir), "run_b": str(run_b), "particles": str(particles)},
        )
    if run.half_set:
        raise ValueError(
            f"{run_dir} was trained on half set {run.half_set} only: pass the other half's run with --run-b "
            "(independent half flows)"
        )
    if len(ps) != run.latents.shape[0]:
        raise ValueError(
            f"{particles}: {len(ps)} particles, but the run's latents.npy has {run.latents.shape[0]} rows "
            "(the same particles, in the same order, are needed; images left out as unusable count as removed)"
        )
    return HalfFlows(run.model, run.latents, None, None, {"run": str(run_dir), "particles": str(particles)})


def check_latent_rows(ps, latents, latents_b, independent: bool, resplit: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``latents (n, K)`` (and half B's ``(n, K_b)``) as float32 tensors, one row per particle;
    ``ValueError`` if a count disagrees or independent halves are asked to re-split."""
    latents = torch.as_tensor(latents, dtype=torch.float32)
    if len(ps) != latents.shape[0]:
        raise ValueError(f"{len(ps)} particles but {latents.shape[0]} latent rows")
    if independent:
        if latents_b is None:
            raise ValueError("model_b needs latents_b (n, K_b): half B's latents on the rows of the full set")
        latents_b = torch.as_tensor(latents_b, dtype=torch.float32)
        if len(ps) != latents_b.shape[0]:
            raise ValueError(f"{len(ps)} particles but {latents_b.shape[0]} latent rows for half B")
        if resplit:
            raise ValueError("independent half flows use the input's split: resplit is not possible")
    return latents, latents_b


def split_halves(ps, resplit: bool, seed: int, independent: bool) -> tuple[np.ndarray, np.ndarray]:
    """Particle indices ``(m_a,)``, ``(m_b,)`` of half maps A and B.

    The input's split; a deterministic re-split (``seed``) when ``resplit`` or for unlabelled
    particles. Independent half flows need every particle labelled (their runs were trained
    on the labelled halves)."""
    labels = np.full(len(ps), -1) if resplit else np.asarray(ps.half_set)
    if independent:
        half_set_rows(ps, "A")  # raises unless every particle has a half set
    half_a, half_b = half_set_indices(SimpleNamespace(half_set=labels), np.arange(len(ps)), seed)
    if half_a.size == 0 or half_b.size == 0:
        raise ValueError(f"{ps.source}: a half set is empty ({half_a.size} / {half_b.size} particles)")
    return half_a, half_b
