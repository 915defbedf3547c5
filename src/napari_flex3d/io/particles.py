"""Particle files, the entry point: :func:`read_particles` reads a RELION ``.star`` or a
cryoSPARC ``.cs`` into a :class:`ParticleSet`; ``write_star`` / ``write_cs`` write one.

The work lives in modules of one job each, re-exported here so that callers need only
this one import:

- ``io.particle_set``: the :class:`ParticleSet` container;
- ``io.star_particles`` / ``io.cs_particles``: each format's columns <-> the container;
- ``io.optics``: :class:`OpticsGroup` and how each format groups particles into them;
- ``io.image_source``: finding image stacks and reading rows from memory maps;
- ``io.half_sets``: the one half-set encoding and its converters.

Imports only those ``io`` modules.
"""

from __future__ import annotations

from pathlib import Path

from .cs_particles import read_cs_particles, write_cs
from .half_sets import half_set_rows
from .image_source import resolve_image_path
from .optics import DEFAULT_AMPLITUDE_CONTRAST, OpticsGroup
from .particle_set import ParticleSet
from .star_particles import read_star_particles, write_star

__all__ = [
    "OpticsGroup",
    "ParticleSet",
    "read_particles",
    "read_star_particles",
    "read_cs_particles",
    "write_star",
    "write_cs",
    "resolve_image_path",
    "half_set_rows",
    "DEFAULT_AMPLITUDE_CONTRAST",
]


def read_particles(path, passthrough=None, root=None) -> ParticleSet:
    """Read a RELION ``.star`` or cryoSPARC ``.cs`` particle file (dispatch on suffix).

    ``passthrough``: a cryoSPARC passthrough ``.cs`` merged by uid. ``root``: a folder to
    resolve image paths against first (a moved project).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a particle file (give the .star or .cs inside it)")
    root = None if root is None else Path(root)
    if suffix == ".star":
        if passthrough is not None:
            raise ValueError(f"{path}: a passthrough file only applies to cryoSPARC .cs input")
        return read_star_particles(path, root=root)
    if suffix == ".cs":
        return read_cs_particles(path, passthrough=passthrough, root=root)
    raise ValueError(f"{path}: unknown particle file suffix {suffix!r} (expected .star or .cs)")
