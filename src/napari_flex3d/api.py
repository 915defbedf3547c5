"""The facade: what the CLI and the napari widgets call. Thin; the work lives in the modules.

Layer L3: may import every room below it (config, core, features); only ``cli`` and
``_napari`` import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import RIGIDITY_FLOOR


def read_particles(path, *, passthrough=None, root=None):
    """Read a RELION STAR or cryoSPARC ``.cs`` particle file into a ``ParticleSet``."""
    from .io.particles import read_particles as _read

    return _read(path, passthrough=passthrough, root=root)


def info(path, *, passthrough=None, root=None) -> dict:
    """A JSON-able summary of a particle file or an MRC map/stack."""
    from .io.info import describe

    return describe(Path(path), passthrough=passthrough, root=root)


def format_info(summary: dict) -> str:
    from .io.info import format_summary

    return format_summary(summary)


def simulate(out_dir, *, n_particles=5000, box=64, apix=3.0, snr=0.1, motion="hinge", seed=0, progress=False,
             device="cpu", closure_deg=40.0, second_domain_fraction=0.3, occupancy="bimodal", pdb=None, domain=None,
             second_domain=None, hinge=None):
    """Write a synthetic flexible dataset (see :mod:`napari_flex3d.simulate`); ``device`` (auto, cpu,
    cuda[:i]) reconstructs the consensus half maps. The closure motion's options (``closure_deg``
    ... ``hinge``, see :class:`~napari_flex3d.simulate.closure.ClosureSpec`) apply to ``motion="closure"``."""
    from .simulate.closure import ClosureSpec
    from .simulate.dataset import simulate_dataset
    from .training.setup import resolve_device

    closure = ClosureSpec(closure_deg, second_domain_fraction, occupancy, pdb, domain, second_domain, hinge)
    return simulate_dataset(
        Path(out_dir), n_particles=n_particles, box=box, apix=apix, snr=snr, motion=motion, seed=seed, progress=progress,
        device=resolve_device(device), closure=closure if motion == "closure" else None,
    )


def train(config, out_dir, *, resume=False, cli_argv=None, progress=True, overrides=None):
    """Train (or resume) a run, printing progress; returns the per-epoch summaries."""
    import dataclasses

    from .training.loop import train_run
    from .training.progress import consume_events

    if resume and overrides:  # the run's own settings, with only these changed
        from .config import TrainConfig, read_config_json

        saved = config or read_config_json(Path(out_dir) / "config.json", TrainConfig)
        config = dataclasses.replace(saved, **overrides)
    events = train_run(config, out_dir, resume=resume, cli_argv=cli_argv)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports and logs
        for _ in events:
            pass
        return []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return consume_events(events, log_path=Path(out_dir) / "train.log", progress=progress)


def generate(run_dir, *, z, out, box=None):
    """Write the convected map at latent point ``z`` to ``out`` (MRC); returns the path."""
    from .explore.generate import generate_volume
    from .io.mrc import write_map

    vol, apix = generate_volume(run_dir, z, box=box)
    write_map(out, vol, apix, label="napari-flex3d convected map z=" + ",".join(f"{v:g}" for v in z))
    return Path(out)


def generate_series(run_dir, *, axis, frames=41, out_dir, box=None, sigma_range=1.5, movie=False) -> dict:
    """A volume series along latent ``axis`` with a ChimeraX ``.cxc`` (and optionally an mp4)."""
    from .explore.generate import generate_axis_series

    return generate_axis_series(run_dir, axis=axis, frames=frames, out_dir=out_dir, box=box,
                                sigma_range=sigma_range, movie=movie)


def reconstruct(run_dir, particles, out_dir, *, run_b=None, progress=True, **kwargs) -> dict:
    """Flex and rigid half maps, FSC and sharpened maps (see :mod:`.reconstruct.halfmaps`).

    ``run_b``: independent half flows; ``run_dir`` trained with ``--half-set A``, ``run_b`` with
    ``--half-set B``, each half map solved with its own half's flow and latents."""
    from .reconstruct.halfmaps import consume, reconstruct_run

    quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 reports
    return consume(reconstruct_run(run_dir, particles, out_dir, run_b=run_b, **kwargs), progress=progress and not quiet)


def demo(out_dir, *, progress=True, **kwargs) -> dict:
    """Simulate, train, write a series and a movie, and print the recovery figures."""
    from .evaluate.demo import run_demo

    return run_demo(out_dir, progress=progress, **kwargs)


def build_mesh(map_path, out, *, apix=None, threshold=None, volume_fraction=None, dilate_a=6.0, cell_size_a=None,
               rigidity_floor=RIGIDITY_FLOOR, rigid_labels=None, rigid_factor=10.0, no_motion_labels=None):
    """Solvent mask and tetrahedral mesh of a consensus map, with rigidity weights from its
    density (and raised in ``rigid_labels``) and a motion mask (0 in ``no_motion_labels``);
    saved to ``out`` (``.npz``). Returns ``(mesh, summary dict)``."""
    import numpy as np

    from .io.mrc import read_map
    from .mesh import (
        build_mesh as _build,
        cell_density_weights,
        motion_mask_from_labels,
        raise_rigid_cells,
        save_mesh,
        solvent_mask,
    )
    from .training.setup import default_cell_size_a

    m = read_map(map_path, apix=apix)
    vol_apix = m.require_apix()
    vol = np.asarray(m.data, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"{map_path}: a consensus map must be a cubic volume, got shape {vol.shape}")
    mask = solvent_mask(vol, vol_apix, threshold=threshold, volume_fraction=volume_fraction, dilate_a=dilate_a)
    mesh = _build(mask.binary, vol_apix, cell_size_a=default_cell_size_a(vol.shape[0], vol_apix, cell_size_a))
    weights = cell_density_weights(mesh, mask.lowpassed, min_weight=rigidity_floor)
    if rigid_labels is not None:
        weights = raise_rigid_cells(mesh, weights, _labels(rigid_labels, vol.shape), factor=rigid_factor)
    motion = None
    if no_motion_labels is not None:
        motion = motion_mask_from_labels(mesh, _labels(no_motion_labels, vol.shape))
    mesh = mesh.replace(rigidity_weights=weights, motion_mask=motion)
    save_mesh(mesh, out)
    summary = {"map": str(map_path), "out": str(out), "threshold": mask.threshold_used,
               "mask_fraction": float(mask.binary.mean()), **mesh.summary()}
    return mesh, summary


def _labels(path, shape):
    import numpy as np

    from .io.mrc import read_map

    data = np.asarray(read_map(path).data)
    if data.shape != tuple(shape):
        raise ValueError(f"{path}: label volume is {data.shape}, the map is {tuple(shape)}")
    return np.rint(data).astype(np.int64)
