"""Synthetic flexible molecules with ground truth.

``simulate_dataset(out_dir, ...)`` writes particles (``.mrcs`` + RELION 3.1 STAR), the rigid
consensus map with its half maps and a ``truth/`` folder; ``make_sample()`` is the small
dataset napari's sample data opens. See :mod:`napari_flex3d.simulate.dataset`.
The room may import config/conventions, core (io, ops, mesh, model) and reconstruct's rigid
solver (for the consensus map); scoring a run against this truth is :mod:`napari_flex3d.evaluate`.
"""

from .dataset import SimulationResult, make_sample, simulate_dataset
from .molecule import Molecule, build_molecule, deform, sample_motion_coords
from .render import project_atoms, render_volume

__all__ = [
    "SimulationResult",
    "simulate_dataset",
    "make_sample",
    "Molecule",
    "build_molecule",
    "deform",
    "sample_motion_coords",
    "project_atoms",
    "render_volume",
]
