"""What the widgets of one viewer share: the data, the mesh, the training run.

Widgets never reach into each other; they read and write one ``Session`` per viewer and
listen to its ``changed`` signal (the name of what changed). Imports numpy and psygnal only.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal


class Session:
    """Shared state of the napari-flex3d widgets docked on one viewer.

    Attributes:
        particles: the ``ParticleSet`` in use (``None`` until loaded).
        consensus: ``(d, h, w)`` float32 consensus map, ``apix`` its voxel size in Å.
        mask: the solvent ``MaskResult`` used for the mesh.
        mesh: the tetrahedral ``Mesh`` (vertices in xyz Å).
        run_dir: folder of the current training run; ``checkpoint`` its last checkpoint.
        latents: ``(n, K)`` float32 per-particle latents of the last epoch.
    """

    changed = Signal(str)

    def __init__(self) -> None:
        self.particles: Any = None
        self.particles_path: str = ""
        self.passthrough_path: str = ""
        self.root: str = ""
        self.consensus: np.ndarray | None = None
        self.apix: float = 1.0
        self.map_path: str = ""
        self.mask: Any = None
        self.mask_threshold: float | None = None
        self.mask_dilate_a: float | None = None
        self.mesh: Any = None
        self.run_dir: Path | None = None
        self.checkpoint: Path | None = None
        self.latents: np.ndarray | None = None

    def set(self, **values) -> None:
        """Set attributes and emit ``changed`` once per name."""
        for name, value in values.items():
            if not hasattr(self, name):
                raise AttributeError(f"Session has no field {name!r}")
            setattr(self, name, value)
        for name in values:
            self.changed.emit(name)


_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


def session_for(viewer) -> Session:
    """The one ``Session`` of ``viewer`` (created on first use, dropped with the viewer).

    napari hands plugin widgets a proxy of the viewer (a new one per widget): the session
    is keyed on the viewer behind it.
    """
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = Session()
    _SESSIONS[key] = (weakref.ref(viewer, lambda _r, k=key: _SESSIONS.pop(k, None)), session)
    return session


def xyz_a_to_layer_zyx(xyz_a: np.ndarray, box: int, apix: float) -> np.ndarray:
    """Points ``(n, 3)`` xyz Å (centre at voxel ``box//2``) to napari world ``(n, 3)`` zyx Å.

    A map layer has ``scale = apix`` and no translate, so voxel ``i`` sits at world ``i * apix``.
    """
    xyz = np.asarray(xyz_a, dtype=np.float64)
    return (xyz[:, ::-1] + (box // 2) * apix).astype(np.float32)
