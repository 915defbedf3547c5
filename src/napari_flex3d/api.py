"""The facade: what the CLI and the napari widgets call. Thin; the work lives in the modules."""

from __future__ import annotations

from pathlib import Path


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


def simulate(out_dir, *, n_particles=5000, box=64, apix=3.0, snr=0.1, motion="hinge", seed=0, progress=False):
    """Write a synthetic flexible dataset (see :mod:`napari_flex3d.simulate`)."""
    from .simulate.dataset import simulate_dataset

    return simulate_dataset(
        Path(out_dir), n_particles=n_particles, box=box, apix=apix, snr=snr, motion=motion, seed=seed, progress=progress
    )
