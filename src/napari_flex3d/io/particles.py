"""One particle type for RELION STAR and cryoSPARC ``.cs``: :class:`ParticleSet`.

Readers convert every convention at the boundary (DESIGN.md section 1): rotations
become our ``A`` (``(n, 3, 3)`` float64), shifts become Å in RELION's origin sign,
angles become degrees. Images stay on disk: :meth:`ParticleSet.images` memory-maps
the stacks (an LRU cache of open stacks shared by subsets) and reads only the rows
asked for.

Image paths are resolved once per distinct stack, trying in order: ``root/path``,
``root/<path without its first 1, 2, ... components>`` (a moved project), then the
metadata file's folder and up to three of its parents (RELION project-relative
paths, cryoSPARC ``J12/...`` paths next to ``J24/particles.cs``). A missing stack is
not an error at read time; ``images()`` raises ``ValueError`` naming it.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..conventions import cryosparc_pose_to_matrix, euler_to_matrix, matrix_to_cryosparc_pose, matrix_to_euler
from .cryosparc import load_cs, merge_fields, merge_passthrough, records_to_frame, save_cs
from .mrc import open_stack, read_header
from .star import numeric_column, read_star, write_star_blocks

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

DEFAULT_AMPLITUDE_CONTRAST = 0.1
_STACK_CACHE_SIZE = 128  # open memory maps each hold a file descriptor


@dataclass(frozen=True)
class OpticsGroup:
    """One optics group. ``apix`` is the particle image's pixel size (Å); ``box`` may be
    ``None`` when neither the metadata nor an existing stack says it."""

    name: str
    number: int
    voltage_kv: float
    cs_mm: float
    amplitude_contrast: float
    apix: float
    box: int | None
    inverted: bool = False
    ctf_premultiplied: bool = False


class _StackCache:
    """LRU cache ``path -> memory-mapped (n, h, w) stack``."""

    def __init__(self, maxsize: int = _STACK_CACHE_SIZE):
        self.maxsize = maxsize
        self._stacks: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, path: str) -> np.ndarray:
        if path in self._stacks:
            self._stacks.move_to_end(path)
            return self._stacks[path]
        stack = open_stack(path)
        self._stacks[path] = stack
        if len(self._stacks) > self.maxsize:
            self._stacks.popitem(last=False)
        return stack

    def __len__(self) -> int:
        return len(self._stacks)

    def __getstate__(self):  # pickling (DataLoader workers, spawn) must not copy the mapped data
        return {"maxsize": self.maxsize}

    def __setstate__(self, state):
        self.maxsize = state["maxsize"]
        self._stacks = OrderedDict()


@dataclass(eq=False)
class ParticleSet:
    """Particles with poses, shifts, CTF and lazily read images.

    rotations: ``(n, 3, 3)`` float64, our ``A`` (map point ``r`` -> image frame ``A r``).
    shifts_a: ``(n, 2)`` Å, RELION's origin (``rlnOriginXAngst/YAngst``) sign.
    defocus_u_a, defocus_v_a: ``(n,)`` Å; defocus_angle_deg, phase_shift_deg: ``(n,)`` degrees.
    optics_group: ``(n,)`` int64 index into ``optics``.
    half_set: ``(n,)`` int8, 0/1 or -1 (unknown).
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
    _cache: _StackCache = field(default_factory=_StackCache, repr=False)

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
        paths = self.image_paths[sel]
        inds = self.image_indices[sel]
        out = None
        for path in pd.unique(paths):
            mask = paths == path
            rows = sel[mask]
            try:
                stack = self._cache.get(str(path))
            except FileNotFoundError:
                raise ValueError(
                    f"{path}: particle image stack not found (needed by particle {int(rows[0])}"
                    f"{self._row_name(rows[0])}); pass root= (flex3d --root) if the data moved"
                ) from None
            ii = inds[mask]
            if ii.size and int(ii.max()) >= stack.shape[0]:
                k = int(np.argmax(ii))
                raise ValueError(
                    f"{path}: image {int(ii[k]) + 1} (1-based) is past the end of the stack, which holds "
                    f"{stack.shape[0]} image(s) (particle {int(rows[k])}{self._row_name(rows[k])})"
                )
            boxes = {self.optics[g].box for g in np.unique(self.optics_group[rows])} - {None}
            if any(tuple(stack.shape[1:]) != (b, b) for b in boxes):
                raise ValueError(
                    f"{path}: the stack holds {stack.shape[1]} x {stack.shape[2]} images but the particle "
                    f"metadata says box {sorted(boxes)}"
                )
            if out is None:
                out = np.empty((len(sel),) + tuple(stack.shape[1:]), dtype=np.float32)
            elif tuple(stack.shape[1:]) != out.shape[1:]:
                raise ValueError(
                    f"{path}: images are {stack.shape[1:]} but other stacks hold {out.shape[1:]}; select one box size"
                )
            out[mask] = stack[ii]
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
        half = np.full(n, -1, np.int8) if half_set is None else np.asarray(half_set).astype(np.int8).reshape(-1)
        if half.shape != (n,):
            raise ValueError(f"from_arrays: half_set has shape {half.shape}, expected {(n,)}")
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


# -------------------------------------------------------------------- paths
def resolve_image_path(name: str, base_dir: Path, root: Path | None = None) -> tuple[str, bool]:
    """Find a stack named in a metadata file. Returns ``(path, exists)``; if nothing
    exists, the first candidate (``root/name`` or ``base_dir/name``)."""
    p = Path(name)
    parts = p.parts
    candidates: list[Path] = []
    if root is not None:
        root = Path(root)
        if not p.is_absolute():
            candidates.append(root / p)
        # a moved project: drop leading components (for an absolute path, "/" first)
        candidates += [root / Path(*parts[k:]) for k in range(1, len(parts))]
    if p.is_absolute():
        candidates.insert(0, p)
    else:
        d = Path(base_dir)
        for _ in range(4):
            candidates.append(d / p)
            if d.parent == d:
                break
            d = d.parent
    for c in candidates:
        if c.is_file():
            return str(c), True
    return str(candidates[0]), False


def _resolve_all(names: np.ndarray, base_dir: Path, root) -> np.ndarray:
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    resolved = np.array([resolve_image_path(u, base_dir, root)[0] for u in unique], dtype=object)
    return resolved[inverse.reshape(-1)]


def _stack_header_value(paths: np.ndarray, what: str):
    """Box (nx) or pixel size from the first existing stack among ``paths``, else None."""
    for p in pd.unique(paths):
        if os.path.isfile(p):
            try:
                h = read_header(p)
            except ValueError:
                continue
            if what == "box":
                return int(h.nx)
            apix = h.voxel_size_xyz[0]
            return float(apix) if apix > 0 else None
    return None


# -------------------------------------------------------------------- RELION
_POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def _parse_image_names(table: pd.DataFrame, path) -> tuple[np.ndarray, np.ndarray]:
    """``rlnImageName`` ``N@stack`` -> (stack names ``(n,)`` str, 0-based indices ``(n,)``)."""
    names = table["rlnImageName"]
    if names.isna().any():
        row = int(np.flatnonzero(names.isna().to_numpy())[0])
        raise ValueError(f"{path}: empty rlnImageName at data row {row + 1}")
    names = names.astype(str)
    has_at = names.str.contains("@", regex=False)
    head = names.str.partition("@")
    idx_str = head[0].where(has_at, "1")
    stack = head[2].where(has_at, names)
    idx = pd.to_numeric(idx_str, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(idx) | (idx < 1) | (idx != np.round(idx))
    bad |= (stack.str.len() == 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: rlnImageName {names.iloc[row]!r} at data row {row + 1} is not 'N@stack' with N >= 1"
        )
    return stack.to_numpy(dtype=object), idx.astype(np.int64) - 1


def _amplitude_contrast(table, path, where) -> np.ndarray:
    if "rlnAmplitudeContrast" in table.columns:
        return numeric_column(table, "rlnAmplitudeContrast", path)
    warnings.warn(
        f"{path}: no rlnAmplitudeContrast in the {where}; using the default {DEFAULT_AMPLITUDE_CONTRAST}",
        stacklevel=3,
    )
    return np.full(len(table), DEFAULT_AMPLITUDE_CONTRAST)


def _pixel_size_columns(table, path) -> np.ndarray | None:
    for col in ("rlnImagePixelSize", "rlnPixelSize"):
        if col in table.columns:
            return numeric_column(table, col, path)
    if "rlnDetectorPixelSize" in table.columns and "rlnMagnification" in table.columns:
        det_um = numeric_column(table, "rlnDetectorPixelSize", path)
        mag = numeric_column(table, "rlnMagnification", path)
        if np.any(mag <= 0):
            raise ValueError(f"{path}: rlnMagnification must be positive")
        return det_um * 1e4 / mag
    return None


def _check_positive(values, path, column):
    if np.any(values <= 0):
        row = int(np.flatnonzero(values <= 0)[0])
        raise ValueError(f"{path}: {column} must be positive, got {values[row]} at row {row + 1}")


def _optics_from_table(optics_df: pd.DataFrame, path) -> tuple[list[OpticsGroup], np.ndarray]:
    """RELION 3.1+ ``data_optics`` -> groups and their rlnOpticsGroup numbers."""
    if len(optics_df) == 0:
        raise ValueError(f"{path}: the data_optics block has no rows")
    n_opt = len(optics_df)
    numbers = (
        numeric_column(optics_df, "rlnOpticsGroup", path, dtype=np.int64)
        if "rlnOpticsGroup" in optics_df.columns
        else np.arange(1, n_opt + 1)
    )
    if len(set(numbers.tolist())) != n_opt:
        raise ValueError(f"{path}: data_optics repeats an rlnOpticsGroup number ({numbers.tolist()})")
    volt = numeric_column(optics_df, "rlnVoltage", path)
    cs = numeric_column(optics_df, "rlnSphericalAberration", path)
    ac = _amplitude_contrast(optics_df, path, "data_optics block")
    apix = _pixel_size_columns(optics_df, path)
    if apix is None:
        raise ValueError(f"{path}: data_optics has no rlnImagePixelSize (nor rlnDetectorPixelSize and rlnMagnification)")
    _check_positive(apix, path, "rlnImagePixelSize")
    _check_positive(volt, path, "rlnVoltage")
    box = numeric_column(optics_df, "rlnImageSize", path, dtype=np.int64, allow_missing=True)
    premult = numeric_column(optics_df, "rlnCtfDataAreCtfPremultiplied", path, dtype=np.int64, allow_missing=True)
    names = (
        optics_df["rlnOpticsGroupName"].astype(str).to_numpy()
        if "rlnOpticsGroupName" in optics_df.columns
        else [f"opticsGroup{k}" for k in numbers]
    )
    groups = [
        OpticsGroup(
            name=str(names[i]),
            number=int(numbers[i]),
            voltage_kv=float(volt[i]),
            cs_mm=float(cs[i]),
            amplitude_contrast=float(ac[i]),
            apix=float(apix[i]),
            box=None if box is None else int(box[i]),
            inverted=False,
            ctf_premultiplied=bool(premult[i]) if premult is not None else False,
        )
        for i in range(n_opt)
    ]
    return groups, numbers


def _pick_particle_block(blocks: dict, path) -> tuple[str, pd.DataFrame]:
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in loops:
        return "particles", loops["particles"]
    for name, df in loops.items():
        if name != "optics" and "rlnImageName" in df.columns:
            return name, df
    names = ", ".join(f"data_{k}" for k in blocks) or "none"
    raise ValueError(
        f"{path}: not a particle STAR file: no data_particles block and no loop with an rlnImageName column "
        f"(blocks: {names})"
    )


def read_star_particles(path, root=None) -> ParticleSet:
    """Read a RELION 3.0 / 3.1 / 4 / 5 particle STAR file (2D particle images only)."""
    path = Path(path)
    blocks = read_star(path)
    block_name, table = _pick_particle_block(blocks, path)
    table = table.reset_index(drop=True)
    optics_df = blocks.get("optics") if isinstance(blocks.get("optics"), pd.DataFrame) else None
    if len(table) == 0:
        raise ValueError(f"{path}: zero particles (data_{block_name} has no rows)")
    if "rlnImageName" not in table.columns:
        raise ValueError(f"{path}: missing column rlnImageName in data_{block_name}")
    missing = table.isna().to_numpy()
    if missing[-1].any() and not missing[:-1].any():
        raise ValueError(
            f"{path}: the last data row of data_{block_name} has only {int((~missing[-1]).sum())} of "
            f"{table.shape[1]} fields (a truncated file?)"
        )
    dims = None
    if optics_df is not None and "rlnImageDimensionality" in optics_df.columns:
        dims = pd.to_numeric(optics_df["rlnImageDimensionality"], errors="coerce")
    if (dims is not None and (dims == 3).any()) or "rlnTomoName" in table.columns:
        raise ValueError(
            f"{path}: sub-tomogram particles (rlnImageDimensionality 3 / rlnTomoName) are not supported; "
            "napari-flex3d needs 2D particle images"
        )
    n = len(table)
    stack_names, image_indices = _parse_image_names(table, path)
    image_paths = _resolve_all(stack_names, path.parent, root)

    # CTF and pose columns (each raises a ValueError naming itself when bad)
    du = numeric_column(table, "rlnDefocusU", path)
    dv = numeric_column(table, "rlnDefocusV", path) if "rlnDefocusV" in table.columns else du.copy()
    dang = numeric_column(table, "rlnDefocusAngle", path, allow_missing=True)
    phase = numeric_column(table, "rlnPhaseShift", path, allow_missing=True)
    has_poses = all(c in table.columns for c in _POSE_COLUMNS)
    if has_poses:
        angles = [numeric_column(table, c, path) for c in _POSE_COLUMNS]
        rotations = euler_to_matrix(*angles)
    else:
        rotations = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()

    if optics_df is not None:
        fmt = "relion3.1"
        optics, numbers = _optics_from_table(optics_df, path)
        if "rlnOpticsGroup" in table.columns:
            part_numbers = numeric_column(table, "rlnOpticsGroup", path, dtype=np.int64)
        elif len(optics) == 1:
            part_numbers = np.full(n, numbers[0])
        else:
            raise ValueError(f"{path}: missing column rlnOpticsGroup with {len(optics)} optics groups")
        lookup = {int(k): i for i, k in enumerate(numbers)}
        unknown = sorted(set(np.unique(part_numbers).tolist()) - set(lookup))
        if unknown:
            raise ValueError(f"{path}: rlnOpticsGroup {unknown[0]} is not in the data_optics block ({sorted(lookup)})")
        group = np.array([lookup[int(k)] for k in part_numbers], dtype=np.int64)
        for col, attr in (("rlnVoltage", "voltage_kv"), ("rlnSphericalAberration", "cs_mm"), ("rlnAmplitudeContrast", "amplitude_contrast")):
            if col in table.columns:
                vals = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                ref = np.array([getattr(g, attr) for g in optics])[group]
                if not np.allclose(vals, ref, rtol=1e-4, equal_nan=False):
                    warnings.warn(f"{path}: particle column {col} disagrees with data_optics; using data_optics", stacklevel=2)
        optics_table = optics_df.reset_index(drop=True)
    else:
        fmt = "relion3.0"
        volt = numeric_column(table, "rlnVoltage", path)
        cs = numeric_column(table, "rlnSphericalAberration", path)
        ac = _amplitude_contrast(table, path, "particle table")
        apix = _pixel_size_columns(table, path)
        if apix is None:
            header_apix = _stack_header_value(image_paths, "apix")
            if header_apix is None:
                raise ValueError(
                    f"{path}: no pixel size: needs rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification"
                )
            warnings.warn(
                f"{path}: no pixel size column; using the first stack's header ({header_apix:g} Å), "
                "which is often wrong in RELION-written stacks",
                stacklevel=2,
            )
            apix = np.full(n, header_apix)
        _check_positive(apix, path, "pixel size")
        _check_positive(volt, path, "rlnVoltage")
        keys = np.stack([volt, cs, ac, np.round(apix, 6)], axis=1)
        uniq, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1).astype(np.int64)
        box = _stack_header_value(image_paths, "box")
        optics = [
            OpticsGroup(f"opticsGroup{k + 1}", k + 1, float(u[0]), float(u[1]), float(u[2]), float(u[3]), box)
            for k, u in enumerate(uniq)
        ]
        optics_table = None

    if any(g.box is None for g in optics):
        box = _stack_header_value(image_paths, "box")
        if box is not None:
            optics = [replace(g, box=box) if g.box is None else g for g in optics]

    apix_pp = np.array([g.apix for g in optics])[group]
    if "rlnOriginXAngst" in table.columns or "rlnOriginYAngst" in table.columns:
        shifts_a = np.stack([numeric_column(table, "rlnOriginXAngst", path), numeric_column(table, "rlnOriginYAngst", path)], 1)
    elif "rlnOriginX" in table.columns or "rlnOriginY" in table.columns:
        shifts_px = np.stack([numeric_column(table, "rlnOriginX", path), numeric_column(table, "rlnOriginY", path)], 1)
        shifts_a = shifts_px * apix_pp[:, None]
    else:
        shifts_a = np.zeros((n, 2))
    half = np.full(n, -1, np.int8)
    if "rlnRandomSubset" in table.columns:
        subset = numeric_column(table, "rlnRandomSubset", path)
        half[subset == 1] = 0
        half[subset == 2] = 1
    return ParticleSet(
        rotations=np.asarray(rotations, dtype=np.float64),
        shifts_a=shifts_a,
        defocus_u_a=du,
        defocus_v_a=dv,
        defocus_angle_deg=np.zeros(n) if dang is None else dang,
        phase_shift_deg=np.zeros(n) if phase is None else phase,
        optics_group=group,
        optics=optics,
        half_set=half,
        image_paths=image_paths,
        image_indices=image_indices,
        table=table,
        source=path,
        fmt=fmt,
        has_poses=has_poses,
        optics_table=optics_table,
    )


# -------------------------------------------------------------------- cryoSPARC
def _cs_field(records, name, path, *, shape=(), required=True, default=None):
    if name not in records.dtype.names:
        if required:
            raise ValueError(f"{path}: missing field {name}")
        return None if default is None else np.full((len(records),) + shape, default, dtype=np.float64)
    values = records[name]
    if values.dtype.kind not in "iuf" or values.shape[1:] != shape:
        raise ValueError(f"{path}: field {name} has dtype {values.dtype} and shape {values.shape[1:]}, expected numbers of shape {shape}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values.reshape(len(records), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: field {name} has a NaN or infinite value at row {int(np.flatnonzero(bad)[0])}")
    return values


def read_cs_particles(path, passthrough=None, root=None) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` (optionally merging a passthrough ``.cs`` by uid)."""
    path = Path(path)
    records = load_cs(path)
    if passthrough is not None:
        records = merge_passthrough(records, load_cs(passthrough), path, passthrough)
    n = len(records)
    if n == 0:
        raise ValueError(f"{path}: zero particles (the .cs file has no rows)")
    if "blob/path" not in records.dtype.names:
        raise ValueError(f"{path}: missing field blob/path (not a particle file; try passing its passthrough .cs)")
    raw_paths = records["blob/path"]
    if raw_paths.dtype.kind not in "SU":
        raise ValueError(f"{path}: field blob/path must hold strings, got {raw_paths.dtype}")
    names = np.char.decode(raw_paths, "utf-8", errors="replace") if raw_paths.dtype.kind == "S" else raw_paths
    names = np.array([s[1:] if s.startswith(">") else s for s in names.tolist()], dtype=object)
    if any(len(s) == 0 for s in names):
        raise ValueError(f"{path}: empty blob/path at row {[len(s) for s in names].index(0)}")
    image_paths = _resolve_all(names, path.parent, root)
    idx = _cs_field(records, "blob/idx", path)
    if np.any(idx < 0) or np.any(idx != np.round(idx)):
        raise ValueError(f"{path}: blob/idx must hold non-negative integers")
    psize = _cs_field(records, "blob/psize_A", path, required=False)
    if psize is None:
        psize = _cs_field(records, "alignments3D/psize_A", path)
    _check_positive(psize, path, "blob/psize_A")
    shape = _cs_field(records, "blob/shape", path, shape=(2,), required=False)
    volt = _cs_field(records, "ctf/accel_kv", path)
    cs = _cs_field(records, "ctf/cs_mm", path)
    if "ctf/amp_contrast" in records.dtype.names:
        ac = _cs_field(records, "ctf/amp_contrast", path)
    else:
        warnings.warn(f"{path}: no ctf/amp_contrast; using the default {DEFAULT_AMPLITUDE_CONTRAST}", stacklevel=2)
        ac = np.full(n, DEFAULT_AMPLITUDE_CONTRAST)
    df1 = _cs_field(records, "ctf/df1_A", path)
    df2 = _cs_field(records, "ctf/df2_A", path, required=False)
    df2 = df1.copy() if df2 is None else df2
    dang = _cs_field(records, "ctf/df_angle_rad", path, required=False, default=0.0)
    phase = _cs_field(records, "ctf/phase_shift_rad", path, required=False, default=0.0)
    sign = _cs_field(records, "blob/sign", path, required=False, default=1.0)
    exp = _cs_field(records, "ctf/exp_group_id", path, required=False, default=0.0)
    if shape is None:
        box_stack = _stack_header_value(image_paths, "box")
        box_all = np.full(n, -1.0 if box_stack is None else float(box_stack))
    else:
        box_all = shape[:, 1]
    keys = np.stack([exp, volt, cs, ac, psize, box_all, sign < 0], axis=1)
    uniq, group = np.unique(keys, axis=0, return_inverse=True)
    optics = [
        OpticsGroup(
            name=f"exp_group_{int(u[0])}",
            number=k + 1,
            voltage_kv=float(u[1]),
            cs_mm=float(u[2]),
            amplitude_contrast=float(u[3]),
            apix=float(u[4]),
            box=None if u[5] < 0 else int(u[5]),
            inverted=bool(u[6]),
        )
        for k, u in enumerate(uniq)
    ]
    has_poses = "alignments3D/pose" in records.dtype.names
    if has_poses:
        pose = _cs_field(records, "alignments3D/pose", path, shape=(3,))
        rotations = cryosparc_pose_to_matrix(pose)
        shift_px = _cs_field(records, "alignments3D/shift", path, shape=(2,), required=False, default=0.0)
        align_psize = _cs_field(records, "alignments3D/psize_A", path, required=False)
        shifts_a = shift_px * (psize if align_psize is None else align_psize)[:, None]
    else:
        rotations = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
        shifts_a = np.zeros((n, 2))
    half = np.full(n, -1, np.int8)
    split = _cs_field(records, "alignments3D/split", path, required=False)
    if split is not None:
        half[split == 0] = 0
        half[split == 1] = 1
    return ParticleSet(
        rotations=rotations,
        shifts_a=shifts_a,
        defocus_u_a=df1,
        defocus_v_a=df2,
        defocus_angle_deg=np.rad2deg(dang),
        phase_shift_deg=np.rad2deg(phase),
        optics_group=group.reshape(-1).astype(np.int64),
        optics=optics,
        half_set=half,
        image_paths=image_paths,
        image_indices=idx.astype(np.int64),
        table=records_to_frame(records),
        source=path,
        fmt="cryosparc",
        has_poses=has_poses,
        records=records,
    )


# -------------------------------------------------------------------- dispatch
def read_particles(path, passthrough=None, root=None) -> ParticleSet:
    """Read a RELION ``.star`` or cryoSPARC ``.cs`` particle file (dispatch on suffix).

    ``passthrough``: a cryoSPARC passthrough ``.cs`` merged by uid. ``root``: a folder to
    resolve image paths against first (a moved project).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    root = None if root is None else Path(root)
    if suffix == ".star":
        if passthrough is not None:
            raise ValueError(f"{path}: a passthrough file only applies to cryoSPARC .cs input")
        return read_star_particles(path, root=root)
    if suffix == ".cs":
        return read_cs_particles(path, passthrough=passthrough, root=root)
    raise ValueError(f"{path}: unknown particle file suffix {suffix!r} (expected .star or .cs)")


# -------------------------------------------------------------------- writers
def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _output_stack_names(ps: ParticleSet, out_dir: Path, original: np.ndarray | None) -> np.ndarray:
    """Stack names to write so that, read from ``out_dir``, they reach the same files."""
    out_dir = Path(out_dir).resolve()
    result = np.empty(len(ps), dtype=object)
    keys = ps.image_paths if original is None else np.array([f"{a}\0{b}" for a, b in zip(original, ps.image_paths)], dtype=object)
    uniq, inverse = np.unique(keys.astype(str), return_inverse=True)
    names = []
    for key in uniq:
        orig, resolved = (key.split("\0") + [key])[:2] if original is not None else (key, key)
        chosen = None
        if original is not None:
            cand, exists = resolve_image_path(orig, out_dir)
            if exists and _same_file(cand, resolved):
                chosen = orig
        if chosen is None:
            res = Path(resolved)
            absolute = res if res.is_absolute() else (Path.cwd() / res)
            absolute = Path(os.path.normpath(absolute))
            try:
                chosen = str(absolute.relative_to(out_dir))
            except ValueError:
                chosen = str(absolute) if absolute.exists() or original is None else orig
        names.append(chosen)
    result[:] = np.array(names, dtype=object)[inverse.reshape(-1)]
    return result


def _original_stack_names(ps: ParticleSet) -> np.ndarray | None:
    if "rlnImageName" in ps.table.columns and ps.fmt.startswith("relion"):
        names = ps.table["rlnImageName"].astype(str)
        return names.str.partition("@")[2].where(names.str.contains("@", regex=False), names).to_numpy(dtype=object)
    if ps.records is not None and "blob/path" in ps.records.dtype.names:
        return np.array([s.lstrip(">") for s in np.char.decode(ps.records["blob/path"], "utf-8", errors="replace").tolist()], dtype=object)
    return None


def _extra_table(extra, n, where) -> dict[str, np.ndarray]:
    """``{name: (n,) or (n, k)}`` -> flat ``{name or name1..namek: (n,)}``."""
    out = {}
    for name, values in (extra or {}).items():
        values = np.asarray(values)
        if values.shape[0] != n or values.ndim > 2:
            raise ValueError(f"{where}: extra column {name} has shape {values.shape}, expected ({n},) or ({n}, k)")
        if values.ndim == 2:
            for j in range(values.shape[1]):
                out[f"{name}{j + 1}"] = values[:, j]
        else:
            out[name] = values
    return out


def write_star(ps: ParticleSet, path, extra_columns: dict | None = None) -> Path:
    """Write a RELION 3.1 STAR (``data_optics`` + ``data_particles``).

    Every column of a STAR input is kept; poses, origins (Å and, if present, px),
    defocus, phase shift, optics group, half set and image names are rewritten from
    the arrays. ``extra_columns``: ``{label: (n,) | (n, k)}`` (a 2D value becomes
    ``label1..labelk``, e.g. ``rlnFlex3dLatent`` -> ``rlnFlex3dLatent1..K``).
    """
    path = Path(path)
    n = len(ps)
    if n == 0:
        raise ValueError(f"{path}: refusing to write zero particles")
    keep_table = ps.fmt.startswith("relion") and ps.records is None
    table = ps.table.copy() if keep_table else pd.DataFrame(index=range(n))
    table = table.reset_index(drop=True)
    stack_names = _output_stack_names(ps, path.parent, _original_stack_names(ps))
    table["rlnImageName"] = [f"{i + 1:06d}@{s}" for i, s in zip(ps.image_indices.tolist(), stack_names.tolist())]
    numbers = np.array([g.number for g in ps.optics])[ps.optics_group]
    table["rlnOpticsGroup"] = numbers.astype(np.int64)
    if ps.has_poses or any(c in table.columns for c in _POSE_COLUMNS):
        euler = matrix_to_euler(ps.rotations)  # (n, 3) rot, tilt, psi
        for j, col in enumerate(_POSE_COLUMNS):
            table[col] = euler[:, j]
    apix_pp = ps.apix_per_particle()
    table["rlnOriginXAngst"] = ps.shifts_a[:, 0]
    table["rlnOriginYAngst"] = ps.shifts_a[:, 1]
    if "rlnOriginX" in table.columns:
        table["rlnOriginX"] = ps.shifts_a[:, 0] / apix_pp
    if "rlnOriginY" in table.columns:
        table["rlnOriginY"] = ps.shifts_a[:, 1] / apix_pp
    table["rlnDefocusU"] = ps.defocus_u_a
    table["rlnDefocusV"] = ps.defocus_v_a
    table["rlnDefocusAngle"] = ps.defocus_angle_deg
    table["rlnPhaseShift"] = ps.phase_shift_deg
    if np.any(ps.half_set >= 0):
        table["rlnRandomSubset"] = np.where(ps.half_set >= 0, ps.half_set.astype(np.int64) + 1, 0)
    for name, values in _extra_table(extra_columns, n, path).items():
        table[name.lstrip("_")] = values
    optics_rows = []
    used = sorted(set(ps.optics_group.tolist()))
    for i in used:
        g = ps.optics[i]
        row = {}
        if ps.optics_table is not None and "rlnOpticsGroup" in ps.optics_table.columns:
            match = ps.optics_table[pd.to_numeric(ps.optics_table["rlnOpticsGroup"], errors="coerce") == g.number]
            if len(match):
                row.update(match.iloc[0].to_dict())
        row.update(
            rlnOpticsGroup=g.number,
            rlnOpticsGroupName=g.name,
            rlnVoltage=g.voltage_kv,
            rlnSphericalAberration=g.cs_mm,
            rlnAmplitudeContrast=g.amplitude_contrast,
            rlnImagePixelSize=g.apix,
            rlnImageDimensionality=2,
            rlnCtfDataAreCtfPremultiplied=int(g.ctf_premultiplied),
        )
        if g.box is not None:
            row["rlnImageSize"] = g.box
        optics_rows.append(row)
    optics_df = pd.DataFrame(optics_rows)
    write_star_blocks(path, {"optics": optics_df, "particles": table})
    return path


_CS_CTF_VECTORS = {"ctf/shift_A": 2, "ctf/tilt_A": 2, "ctf/trefoil_A": 2, "ctf/tetra_A": 4, "ctf/anisomag": 4}
_CS_ALIGN_SCALARS = (
    "error", "error_min", "resid_pow", "slice_pow", "image_pow", "cross_cor", "alpha", "alpha_min",
    "weight", "pose_ess", "shift_ess", "class_posterior", "class_ess",
)


def write_cs(ps: ParticleSet, path, extra_fields: dict | None = None) -> Path:
    """Write a cryoSPARC ``.cs``.

    From a ``.cs`` input: the original records of these particles (uid, paths and every
    field kept) with CTF, poses and shifts rewritten from the arrays. From a STAR or
    in-memory input: a fresh table with ``uid``, ``blob/*``, ``ctf/*`` and (with poses)
    ``alignments3D/*``. ``extra_fields``: ``{name: (n,) | (n, k)}`` appended.
    """
    path = Path(path)
    n = len(ps)
    if n == 0:
        raise ValueError(f"{path}: refusing to write zero particles")
    f4 = np.float32
    apix_pp = ps.apix_per_particle()
    fields: dict[str, np.ndarray] = {
        "ctf/df1_A": ps.defocus_u_a.astype(f4),
        "ctf/df2_A": ps.defocus_v_a.astype(f4),
        "ctf/df_angle_rad": np.deg2rad(ps.defocus_angle_deg).astype(f4),
        "ctf/phase_shift_rad": np.deg2rad(ps.phase_shift_deg).astype(f4),
    }
    if ps.records is not None:
        base = ps.records
        if ps.has_poses and "alignments3D/pose" in base.dtype.names:
            align_psize = base["alignments3D/psize_A"].astype(np.float64) if "alignments3D/psize_A" in base.dtype.names else apix_pp
            # a rotation vector and its 2*pi-complement are the same rotation: keep the original
            # vector wherever the rotation did not change
            old_pose = base["alignments3D/pose"]
            same = np.abs(cryosparc_pose_to_matrix(old_pose) - ps.rotations).max(axis=(1, 2)) < 1e-5
            fields["alignments3D/pose"] = np.where(same[:, None], old_pose, matrix_to_cryosparc_pose(ps.rotations)).astype(f4)
            fields["alignments3D/shift"] = (ps.shifts_a / align_psize[:, None]).astype(f4)
        for name in list(fields):
            if name in base.dtype.names and base[name].shape == fields[name].shape:
                old = base[name].astype(np.float64)
                keep = np.isclose(fields[name].astype(np.float64), old, rtol=1e-6, atol=1e-6)
                fields[name] = np.where(keep, base[name], fields[name]).astype(base.dtype[name].base)
    else:
        rng = np.random.default_rng()
        uid = rng.integers(1, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)
        stack_names = _output_stack_names(ps, path.parent, _original_stack_names(ps))
        box = np.array([-1 if g.box is None else g.box for g in ps.optics])[ps.optics_group]
        if np.any(box < 0):
            raise ValueError(f"{path}: box size unknown for some particles; cannot write blob/shape")
        width = max(1, max(len(s.encode()) for s in stack_names))
        base = np.zeros(n, dtype=[("uid", "<u8")])
        base["uid"] = uid
        fields = {
            "blob/path": np.array([s.encode() for s in stack_names], dtype=f"S{width}"),
            "blob/idx": ps.image_indices.astype(np.uint32),
            "blob/shape": np.stack([box, box], 1).astype(np.uint32),
            "blob/psize_A": apix_pp.astype(f4),
            "blob/sign": np.where(ps.per_particle("inverted"), -1.0, 1.0).astype(f4),
            "ctf/type": np.full(n, b"imported", dtype="S9"),
            "ctf/exp_group_id": ps.optics_group.astype(np.uint32),
            "ctf/accel_kv": ps.voltage_kv().astype(f4),
            "ctf/cs_mm": ps.cs_mm().astype(f4),
            "ctf/amp_contrast": ps.amplitude_contrast().astype(f4),
            **fields,
            "ctf/scale": np.ones(n, f4),
            "ctf/scale_const": np.zeros(n, f4),
            **{k: np.zeros((n, m), f4) for k, m in _CS_CTF_VECTORS.items()},
            "ctf/bfactor": np.zeros(n, f4),
        }
        if ps.has_poses:
            fields.update(
                {
                    "alignments3D/split": np.clip(ps.half_set, 0, 1).astype(np.uint32),
                    "alignments3D/shift": (ps.shifts_a / apix_pp[:, None]).astype(f4),
                    "alignments3D/pose": matrix_to_cryosparc_pose(ps.rotations).astype(f4),
                    "alignments3D/psize_A": apix_pp.astype(f4),
                    **{f"alignments3D/{k}": np.zeros(n, f4) for k in _CS_ALIGN_SCALARS},
                    "alignments3D/class": np.zeros(n, np.uint32),
                }
            )
            fields["alignments3D/alpha"][:] = 1
            fields["alignments3D/weight"][:] = 1
            fields["alignments3D/class_posterior"][:] = 1
    for name, values in (extra_fields or {}).items():
        values = np.asarray(values)
        if values.shape[0] != n:
            raise ValueError(f"{path}: extra field {name} has {values.shape[0]} rows for {n} particles")
        fields[name] = values
    save_cs(path, merge_fields(base, fields))
    return path


def half_set_rows(ps: ParticleSet, half: str) -> np.ndarray:
    """Rows of half set ``"A"`` (RELION rlnRandomSubset 1, cryoSPARC alignments3D/split 0)
    or ``"B"`` (the other) in input order, ``(m,)`` int64.

    ``ValueError`` naming the file and the columns if any particle has no half set: a
    half taken from a partial split would not be the refinement's gold-standard half.
    """
    if half not in ("A", "B"):
        raise ValueError(f"half set must be 'A' or 'B', got {half!r}")
    labels = np.asarray(ps.half_set)
    unknown = int(np.count_nonzero(labels < 0))
    if unknown:
        raise ValueError(
            f"{ps.source}: {unknown} of {len(ps)} particles have no half set (STAR column rlnRandomSubset 1/2, "
            "cryoSPARC field alignments3D/split 0/1); independent half sets need the refinement's split"
        )
    return np.flatnonzero(labels == (0 if half == "A" else 1))
