"""The particle container every reader returns and every writer takes: :class:`ParticleSet`.

One particle type for RELION STAR and cryoSPARC ``.cs``. Readers convert every
convention at the boundary (see docs/conventions.md): rotations become our ``A``
(``(n, 3, 3)`` float64), shifts become Å in RELION's origin sign, angles become degrees,
half sets become the int8 code of ``io.half_sets``. Images stay on disk:
:meth:`ParticleSet.images` reads only the rows asked for from memory-mapped stacks
(``io.image_source``; an LRU cache of open stacks shared by subsets).

Imports NumPy, pandas and the ``io`` modules ``optics``, ``image_source``, ``half_sets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from .half_sets import check_half_set
from .image_source import StackCache, read_images
from .optics import OpticsGroup

__all__ = ["ParticleSet"]


@dataclass(eq=False)
class ParticleSet:
    """Particles with poses, shifts, CTF and lazily read images.

    rotations: ``(n, 3, 3)`` float64, our ``A`` (map point ``r`` -> image frame ``A r``).
    shifts_a: ``(n, 2)`` Å, RELION's origin (``rlnOriginXAngst/YAngst``) sign.
    defocus_u_a, defocus_v_a: ``(n,)`` Å; defocus_angle_deg, phase_shift_deg: ``(n,)`` degrees.
    optics_group: ``(n,)`` int64 index into ``optics``.
    half_set: ``(n,)`` int8, 0 (half A), 1 (half B) or -1 (unknown); see ``io.half_sets``.
    image_paths: ``(n,)`` str (object array) resolved stack paths; image_indices: ``(n,)`` 0-based.
    table: the original rows (all columns); records: the original ``.cs`` records (or None).
    """

    rotations: np.ndarray
    shifts_a: np.ndarray
    defocus_u_a: np.ndarray
    defocus_v_a: np.ndarray
    defocus_angle_deg: np.ndarray
    phase_shift_deg: np.ndarray
    optics_group: np.ndarray
    optics: list[OpticsGroup]
    half_set: np.ndarray
    image_paths: np.ndarray
    image_indices: np.ndarray
    table: pd.DataFrame
    source: Path | None = None
    fmt: str = "relion3.1"
    has_poses: bool = True
    records: np.ndarray | None = field(default=None, repr=False)
    optics_table: pd.DataFrame | None = field(default=None, repr=False)
    _cache: StackCache = field(default_factory=StackCache, repr=False)

    # ---------------------------------------------------------------- basics
    def __len__(self) -> int:
        return int(self.image_indices.shape[0])

    def __repr__(self) -> str:
        return (
            f"ParticleSet(n={len(self)}, fmt={self.fmt!r}, optics_groups={len(self.optics)}, "
            f"has_poses={self.has_poses}, source={str(self.source) if self.source else None!r})"
        )

    def _select(self, idx) -> np.ndarray:
        """Normalise an int, slice, bool mask or index array to a 1D int64 index array."""
        n = len(self)
        if isinstance(idx, slice):
            return np.arange(n)[idx]
        arr = np.asarray(idx)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise ValueError(f"boolean mask of shape {arr.shape} for {n} particles")
            return np.flatnonzero(arr)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"particle indices must be integers, got dtype {arr.dtype}")
        arr = np.atleast_1d(arr).astype(np.int64).ravel()
        bad = (arr >= n) | (arr < -n)
        if bad.any():
            raise ValueError(f"particle index {int(arr[bad][0])} out of range for {n} particles")
        return np.where(arr < 0, arr + n, arr)

    def per_particle(self, name: str, idx=None) -> np.ndarray:
        """An optics-group field (``voltage_kv``, ``cs_mm``, ``amplitude_contrast``, ``apix``,
        ``box``, ``inverted``...) as a per-particle ``(b,)`` array."""
        if not self.optics or not hasattr(self.optics[0], name):
            raise ValueError(f"unknown optics field {name!r}")
        values = np.asarray([getattr(g, name) for g in self.optics])
        groups = self.optics_group if idx is None else self.optics_group[self._select(idx)]
        return values[groups]

    def voltage_kv(self, idx=None) -> np.ndarray:
        return self.per_particle("voltage_kv", idx).astype(np.float64)

    def cs_mm(self, idx=None) -> np.ndarray:
        return self.per_particle("cs_mm", idx).astype(np.float64)

    def amplitude_contrast(self, idx=None) -> np.ndarray:
        return self.per_particle("amplitude_contrast", idx).astype(np.float64)

    def apix_per_particle(self, idx=None) -> np.ndarray:
        return self.per_particle("apix", idx).astype(np.float64)

    def _used_groups(self) -> list[OpticsGroup]:
        # cached per optics_group array: apix/box are read for every minibatch, and a pass
        # over a million particles each time cost ~40 ms a batch
        key = (id(self.optics_group), len(self.optics_group), len(self.optics))
        cached = self.__dict__.get("_used_groups_cache")
        if cached is None or cached[0] != key:
            counts = np.bincount(np.asarray(self.optics_group, dtype=np.int64), minlength=len(self.optics))
            cached = (key, [self.optics[i] for i in np.flatnonzero(counts)] or list(self.optics))
            self.__dict__["_used_groups_cache"] = cached
        return cached[1]

    @property
    def apix(self) -> float:
        """The pixel size shared by all particles (Å); ValueError if optics groups disagree."""
        values = sorted({g.apix for g in self._used_groups()})
        if values[-1] - values[0] > 1e-4 * values[-1]:
            raise ValueError(f"{self.source}: optics groups have different pixel sizes {values} Å")
        return float(values[0])

    @property
    def box(self) -> int:
        """The box size shared by all particles; ValueError if unknown or groups disagree."""
        values = {g.box for g in self._used_groups()}
        if None in values:
            raise ValueError(f"{self.source}: box size unknown (no rlnImageSize/blob/shape and no stack found)")
        if len(values) != 1:
            raise ValueError(f"{self.source}: optics groups have different box sizes {sorted(values)}")
        return int(values.pop())

    # ---------------------------------------------------------------- images
    def images(self, idx) -> np.ndarray:
        """Images of the selected particles as float32 ``(b, h, w)``, read from memory maps.

        Raises ValueError naming a missing stack, an index past the end of a stack, or
        stacks of different image sizes.
        """
        sel = self._select(idx)
        boxes = np.array([-1 if g.box is None else g.box for g in self.optics])[self.optics_group[sel]]
        out = read_images(self._cache, self.image_paths[sel], self.image_indices[sel], boxes, sel, self._row_name)
        if out is None:
            side = self.optics[0].box or 0 if len(self.optics) == 1 else 0
            return np.zeros((0, side, side), dtype=np.float32)
        return out

    def _row_name(self, row) -> str:
        if "rlnImageName" in self.table.columns:
            return f", {self.table['rlnImageName'].iloc[int(row)]}"
        return f", blob/idx {int(self.image_indices[int(row)])}"

    def image_stacks(self) -> dict[str, bool]:
        """``{stack path: exists}`` for every distinct stack."""
        return {str(p): os.path.isfile(p) for p in pd.unique(self.image_paths)}

    def require_images(self, show: int = 3) -> "ParticleSet":
        """``self`` if every image stack exists; else ``ValueError`` with the count and the first ``show`` paths.

        Called before a long job starts, so that a moved or half-copied project fails in
        seconds rather than at the first minibatch that needs a missing stack.
        """
        stacks = self.image_stacks()
        missing = [p for p, ok in stacks.items() if not ok]
        if missing:
            more = f", ... ({len(missing) - show} more)" if len(missing) > show else ""
            raise ValueError(
                f"{self.source}: {len(missing)} of {len(stacks)} image stack(s) not found: "
                f"{', '.join(missing[:show])}{more}; pass --root FOLDER (root=) if the data moved"
            )
        return self

    def input_stack_names(self) -> np.ndarray | None:
        """``(n,)`` stack names as the input file wrote them (before resolution), or None
        for a set built in memory."""
        if "rlnImageName" in self.table.columns and self.fmt.startswith("relion"):
            names = self.table["rlnImageName"].astype(str)
            return names.str.partition("@")[2].where(names.str.contains("@", regex=False), names).to_numpy(dtype=object)
        if self.records is not None and "blob/path" in self.records.dtype.names:
            return np.array([s.lstrip(">") for s in np.char.decode(self.records["blob/path"], "utf-8", errors="replace").tolist()], dtype=object)
        return None

    # ---------------------------------------------------------------- subsets
    def subset(self, idx) -> "ParticleSet":
        """The selected particles (rows of ``table``/``records`` kept), sharing the stack cache."""
        sel = self._select(idx)
        return replace(
            self,
            rotations=self.rotations[sel],
            shifts_a=self.shifts_a[sel],
            defocus_u_a=self.defocus_u_a[sel],
            defocus_v_a=self.defocus_v_a[sel],
            defocus_angle_deg=self.defocus_angle_deg[sel],
            phase_shift_deg=self.phase_shift_deg[sel],
            optics_group=self.optics_group[sel],
            half_set=self.half_set[sel],
            image_paths=self.image_paths[sel],
            image_indices=self.image_indices[sel],
            table=self.table.iloc[sel].reset_index(drop=True),
            records=None if self.records is None else self.records[sel],
            _cache=self._cache,
        )

    @classmethod
    def from_arrays(
        cls,
        *,
        image_paths,
        image_indices,
        defocus_u_a,
        optics,
        rotations=None,
        shifts_a=None,
        defocus_v_a=None,
        defocus_angle_deg=None,
        phase_shift_deg=None,
        optics_group=None,
        half_set=None,
        has_poses: bool | None = None,
        source=None,
        table: pd.DataFrame | None = None,
    ) -> "ParticleSet":
        """Build a particle set in memory (e.g. a simulated dataset, then :func:`write_star`).

        image_paths: one path or ``(n,)``; image_indices ``(n,)`` 0-based; defocus_u_a ``(n,)``;
        optics: an :class:`OpticsGroup` or a list of them (``optics_group`` indexes it);
        rotations ``(n, 3, 3)`` (identity if None, then ``has_poses`` is False); shifts_a ``(n, 2)``.
        """
        image_indices = np.asarray(image_indices, dtype=np.int64).reshape(-1)
        n = image_indices.shape[0]

        def vec(v, default, name, shape=(n,)):
            a = np.broadcast_to(np.float64(default), shape) if v is None else np.asarray(v, dtype=np.float64)
            if a.shape != shape:
                raise ValueError(f"from_arrays: {name} has shape {a.shape}, expected {shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"from_arrays: {name} holds NaN or infinite values")
            return np.array(a)

        if isinstance(optics, OpticsGroup):
            optics = [optics]
        optics = list(optics)
        if not optics:
            raise ValueError("from_arrays: at least one optics group is needed")
        paths = np.asarray(image_paths, dtype=object)
        paths = np.array([str(p) for p in np.broadcast_to(paths, (n,))], dtype=object)
        if has_poses is None:
            has_poses = rotations is not None
        rot = np.broadcast_to(np.eye(3), (n, 3, 3)) if rotations is None else rotations
        du = vec(defocus_u_a, 0.0, "defocus_u_a")
        group = np.zeros(n, np.int64) if optics_group is None else np.asarray(optics_group, dtype=np.int64).reshape(-1)
        if group.shape != (n,) or (n and (group.min() < 0 or group.max() >= len(optics))):
            raise ValueError(f"from_arrays: optics_group must be (n,) indices into {len(optics)} optics group(s)")
        half = np.full(n, -1, np.int8) if half_set is None else check_half_set(half_set, n, "from_arrays")
        if np.any(image_indices < 0):
            raise ValueError("from_arrays: image_indices must be 0-based and non-negative")
        return cls(
            rotations=vec(rot, None, "rotations", (n, 3, 3)),
            shifts_a=vec(shifts_a, 0.0, "shifts_a", (n, 2)),
            defocus_u_a=du,
            defocus_v_a=du.copy() if defocus_v_a is None else vec(defocus_v_a, 0.0, "defocus_v_a"),
            defocus_angle_deg=vec(defocus_angle_deg, 0.0, "defocus_angle_deg"),
            phase_shift_deg=vec(phase_shift_deg, 0.0, "phase_shift_deg"),
            optics_group=group,
            optics=optics,
            half_set=half,
            image_paths=paths,
            image_indices=image_indices,
            table=pd.DataFrame(index=range(n)) if table is None else table.reset_index(drop=True),
            source=None if source is None else Path(source),
            fmt="relion3.1",
            has_poses=bool(has_poses),
        )
