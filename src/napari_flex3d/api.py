"""The facade: what the CLI and the napari widgets call. Thin; the work lives in the modules.

Layer L3: may import every room below it (config, core, features); only ``cli`` and
``_napari`` import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import RIGIDITY_FLOOR, check_box, check_number


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
             device="cpu", force=False, closure_deg=40.0, second_domain_fraction=0.3, occupancy="bimodal", pdb=None,
             domain=None, second_domain=None, hinge=None):
    """Write a synthetic flexible dataset (see :mod:`napari_flex3d.simulate`); ``device`` (auto, cpu,
    cuda[:i]) reconstructs the consensus half maps. An existing dataset in ``out_dir`` is kept
    unless ``force``. The closure motion's options (``closure_deg`` ... ``hinge``, see
    :class:`~napari_flex3d.simulate.closure.ClosureSpec`) apply to ``motion="closure"``."""
    from .io.lock import folder_lock
    from .simulate.closure import ClosureSpec
    from .simulate.dataset import simulate_dataset, validate_args
    from .training.setup import resolve_device

    validate_args(n_particles, box, apix, snr, motion)  # before an existing dataset is looked for
    check_number("seed", seed, low=0, integer=True)
    closure = ClosureSpec(closure_deg, second_domain_fraction, occupancy, pdb, domain, second_domain, hinge)
    existing = Path(out_dir) / "particles.star"
    if existing.exists() and not force:
        raise ValueError(f"{out_dir}: already holds a dataset ({existing}); pass --force to overwrite it")
    with folder_lock(out_dir, "flex3d simulate"):
        return simulate_dataset(
            Path(out_dir), n_particles=n_particles, box=box, apix=apix, snr=snr, motion=motion, seed=seed,
            progress=progress, device=resolve_device(device), closure=closure if motion == "closure" else None,
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
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports, logs and holds the lock
        for _ in events:
            pass
        return []
    with _run_lock(out_dir, "flex3d train"):
        return consume_events(events, log_path=Path(out_dir) / "train.log", progress=progress)


def _run_lock(out_dir, command):
    """The output folder's lock (:mod:`.io.lock`): a second job into a held folder is refused."""
    from .io.lock import folder_lock

    return folder_lock(out_dir, command)


def generate(run_dir, *, z, out, box=None):
    """Write the convected map at latent point ``z`` to ``out`` (MRC); returns the path."""
    from .config import GenerateConfig
    from .explore.generate import generate_volume
    from .io.mrc import write_map
    from .io.values import require_informative_map

    GenerateConfig(run=str(run_dir), out=str(out), z=tuple(float(v) for v in z), box=box)  # validates the options
    vol, apix = generate_volume(run_dir, z, box=box)
    require_informative_map(vol, f"{out}: the convected map at z={','.join(f'{v:g}' for v in z)}")
    write_map(out, vol, apix, label="napari-flex3d convected map z=" + ",".join(f"{v:g}" for v in z))
    return Path(out)


def generate_series(run_dir, *, axis, frames=41, out_dir, box=None, sigma_range=1.5, movie=False) -> dict:
    """A volume series along latent ``axis`` with a ChimeraX ``.cxc`` (and optionally an mp4)."""
    from .config import GenerateConfig
    from .explore.generate import generate_axis_series

    GenerateConfig(run=str(run_dir), out=str(out_dir), axis=axis, frames=frames, sigma_range=sigma_range, box=box)
    return generate_axis_series(run_dir, axis=axis, frames=frames, out_dir=out_dir, box=box,
                                sigma_range=sigma_range, movie=movie)


def reconstruct(run_dir, particles, out_dir, *, run_b=None, progress=True, **kwargs) -> dict:
    """Flex and rigid half maps, FSC and sharpened maps (see :mod:`.reconstruct.halfmaps`).

    ``run_b``: independent half flows; ``run_dir`` trained with ``--half-set A``, ``run_b`` with
    ``--half-set B``, each half map solved with its own half's flow and latents."""
    import contextlib

    from .reconstruct.halfmaps import consume, reconstruct_run

    check_reconstruct_options(**kwargs)
    quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun, rank 0 reports and holds the lock
    with contextlib.nullcontext() if quiet else _run_lock(out_dir, "flex3d reconstruct"):
        return consume(reconstruct_run(run_dir, particles, out_dir, run_b=run_b, **kwargs),
                       progress=progress and not quiet)


def check_reconstruct_options(*, iterations=20, chunk=256, box=None, randomise_from_a="auto",
                              max_bad_image_fraction=0.05, **_) -> None:
    """``ValueError`` naming the option for a reconstruction setting out of range."""
    check_number("iterations", iterations, low=1, integer=True)
    check_number("max_bad_image_fraction", max_bad_image_fraction, low=0, high=1)
    check_number("chunk", chunk, low=1, integer=True)
    check_box("box", box)
    if randomise_from_a not in ("auto", None):
        check_number("randomise_from", randomise_from_a, low=0, low_open=True)


def demo(out_dir, *, progress=True, **kwargs) -> dict:
    """Simulate, train, write a series and a movie, and print the recovery figures."""
    from .evaluate.demo import run_demo

    return run_demo(out_dir, progress=progress, **kwargs)


def build_mesh(map_path, out, *, apix=None, threshold=None, volume_fraction=None, lowpass_a=10.0, dilate_a=6.0,
               cell_size_a=None, rigidity_floor=RIGIDITY_FLOOR, rigid_labels=None, rigid_factor=10.0,
               no_motion_labels=None):
    """Solvent mask and tetrahedral mesh of a consensus map, with rigidity weights from its
    density (and raised in ``rigid_labels``) and a motion mask (0 in ``no_motion_labels``);
    saved to ``out`` (``.npz``). Returns ``(mesh, summary dict)``."""
    import numpy as np

    from .io.mrc import read_map
    from .io.values import require_informative_map
    from .mesh import save_mesh
    from .mesh.from_map import mesh_from_map
    from .training.setup import default_cell_size_a

    check_number("apix", apix, low=0, low_open=True, optional=True)
    check_number("threshold", threshold, optional=True)
    check_number("volume_fraction", volume_fraction, low=0, high=1, low_open=True, optional=True)
    check_number("lowpass_a", lowpass_a, low=0, optional=True)
    check_number("dilate_a", dilate_a, low=0)
    check_number("cell_size_a", cell_size_a, low=0, low_open=True, optional=True)
    check_number("rigidity_floor", rigidity_floor, low=0, high=1)
    if Path(out).is_dir():
        raise ValueError(f"{out} is a folder; give the mesh file's name (for example {Path(out) / 'mesh.npz'})")
    m = read_map(map_path, apix=apix)
    vol_apix = m.require_apix()
    vol = np.asarray(m.data, dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"{map_path}: a consensus map must be a cubic volume, got shape {vol.shape}")
    require_informative_map(vol, str(map_path))  # a constant map has no automatic threshold
    mesh, mask = mesh_from_map(
        vol, vol_apix, cell_size_a=default_cell_size_a(vol.shape[0], vol_apix, cell_size_a), threshold=threshold,
        volume_fraction=volume_fraction, lowpass_a=lowpass_a, dilate_a=dilate_a, rigidity_floor=rigidity_floor,
        rigid_labels=None if rigid_labels is None else _labels(rigid_labels, vol.shape, vol_apix),
        rigid_factor=rigid_factor,
        no_motion_labels=None if no_motion_labels is None else _labels(no_motion_labels, vol.shape, vol_apix),
    )
    save_mesh(mesh, out)
    summary = {"map": str(map_path), "out": str(out), "threshold": mask.threshold_used,
               "mask_fraction": float(mask.binary.mean()), **mesh.summary()}
    return mesh, summary


def _labels(path, shape, apix):
    """A label volume at the map's shape and voxel size (``ValueError`` naming both otherwise)."""
    import numpy as np

    from .io.mrc import read_map

    m = read_map(path)
    data = np.asarray(m.data)
    if data.shape != tuple(shape):
        raise ValueError(f"{path}: label volume is {data.shape}, the map is {tuple(shape)}")
    if m.apix is not None and abs(m.apix - apix) > 0.01 * apix:
        raise ValueError(f"{path}: label voxel size {m.apix:.4g} Å differs from the map's {apix:.4g} Å")
    return np.rint(data).astype(np.int64)


def analyze(run_dir, *, out_dir=None, particles=None, clusters="auto", compare=(), labels=None, residual_box=None,
            device="cpu", progress=None) -> dict:
    """Write ``RUN/analysis`` (or ``out_dir``): artefact flags, landscape and clusters, outliers,
    comparisons with other tools' latents, displacement and strain maps, and ``report.html``;
    returns the summary (see :mod:`.analyze.pipeline`)."""
    from .analyze.pipeline import analyze_run

    return analyze_run(run_dir, out_dir, particles=particles, clusters=clusters, compare=tuple(compare or ()),
                       labels=labels, residual_box=residual_box, device=device, progress=progress)


def particle_table(run_dir, *, particles=None, residual=False, residual_box=None):
    """The run's per-particle table (latents, defocus, angles, viewing direction, optics group,
    half set, file columns; ``residual=True`` adds the whitened residual): for colouring the
    latent scatter by anything."""
    from .analyze.covariates import particle_table as _table
    from .analyze.pipeline import read_run_particles, residual_box_for
    from .analyze.residuals import particle_residuals
    from .model.run import load_run

    run = load_run(run_dir)
    ps, _ = read_run_particles(run.config, particles, run_dir)
    z = run.latents.numpy()
    res = None
    if residual:
        res = particle_residuals(run_dir, ps, z, box=residual_box_for(run.config, run.model.box, residual_box))
    return _table(z, ps, res)
