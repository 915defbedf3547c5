"""cryoSPARC particle ``.cs`` files <-> :class:`ParticleSet`: :func:`read_cs_particles`, :func:`write_cs`.

Poses are cryoSPARC's rotation vectors ``alignments3D/pose`` (converted to our ``A``, see
docs/conventions.md), shifts ``alignments3D/shift`` in pixels of ``alignments3D/psize_A``,
CTF in ``ctf/*`` (radians), half sets ``alignments3D/split`` 0/1. A read ``.cs`` keeps its
records, so writing it back keeps every field (and ``uid``) it had.

Imports NumPy, ``conventions`` and the ``io`` modules it builds on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..conventions import cryosparc_pose_to_matrix, matrix_to_cryosparc_pose
from .cryosparc import load_cs, merge_fields, merge_passthrough, numeric_field, records_to_frame, save_cs
from .half_sets import half_set_from_cryosparc, half_set_to_cryosparc
from .image_source import output_stack_names, resolve_image_paths
from .optics import cs_optics
from .particle_set import ParticleSet

__all__ = ["read_cs_particles", "write_cs"]


# -------------------------------------------------------------------------- read
def read_cs_particles(path, passthrough=None, root=None) -> ParticleSet:
    """Read a cryoSPARC particle ``.cs`` (optionally merging a passthrough ``.cs`` by uid).

    ``root``: a folder to resolve image paths against first (a moved project).
    """
    path = Path(path)
    records = load_cs(path)
    if passthrough is not None:
        records = merge_passthrough(records, load_cs(passthrough), path, passthrough)
    n = len(records)
    if n == 0:
        raise ValueError(f"{path}: zero particles (the .cs file has no rows)")
    image_paths = resolve_image_paths(_blob_paths(records, path), path.parent, root)
    idx = numeric_field(records, "blob/idx", path)
    if np.any(idx < 0) or np.any(idx != np.round(idx)):
        raise ValueError(f"{path}: blob/idx must hold non-negative integers")
    optics, group, psize = cs_optics(records, image_paths, path)
    df1 = numeric_field(records, "ctf/df1_A", path)
    df2 = numeric_field(records, "ctf/df2_A", path, required=False)
    dang = numeric_field(records, "ctf/df_angle_rad", path, required=False, default=0.0)
    phase = numeric_field(records, "ctf/phase_shift_rad", path, required=False, default=0.0)
    has_poses = "alignments3D/pose" in records.dtype.names
    rotations, shifts_a = _poses_and_shifts(records, psize, path) if has_poses else (np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 2)))
    half = np.full(n, -1, np.int8)
    split = numeric_field(records, "alignments3D/split", path, required=False)
    if split is not None:
        half = half_set_from_cryosparc(split)
    return ParticleSet(
        rotations=rotations,
        shifts_a=shifts_a,
        defocus_u_a=df1,
        defocus_v_a=df1.copy() if df2 is None else df2,
        defocus_angle_deg=np.rad2deg(dang),
        phase_shift_deg=np.rad2deg(phase),
        optics_group=group,
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


def _blob_paths(records: np.ndarray, path) -> np.ndarray:
    """``blob/path`` as ``(n,)`` str (object), without cryoSPARC's ``>`` prefix."""
    if "blob/path" not in records.dtype.names:
        raise ValueError(f"{path}: missing field blob/path (not a particle file; try passing its passthrough .cs)")
    raw_paths = records["blob/path"]
    if raw_paths.dtype.kind not in "SU":
        raise ValueError(f"{path}: field blob/path must hold strings, got {raw_paths.dtype}")
    names = np.char.decode(raw_paths, "utf-8", errors="replace") if raw_paths.dtype.kind == "S" else raw_paths
    names = np.array([s[1:] if s.startswith(">") else s for s in names.tolist()], dtype=object)
    if any(len(s) == 0 for s in names):
        raise ValueError(f"{path}: empty blob/path at row {[len(s) for s in names].index(0)}")
    return names


def _poses_and_shifts(records: np.ndarray, psize: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """Rotations ``(n, 3, 3)`` (our ``A``) and shifts ``(n, 2)`` Å; ``psize (n,)`` Å is the
    image pixel size, used when the alignment's own ``alignments3D/psize_A`` is absent."""
    pose = numeric_field(records, "alignments3D/pose", path, shape=(3,))
    shift_px = numeric_field(records, "alignments3D/shift", path, shape=(2,), required=False, default=0.0)
    align_psize = numeric_field(records, "alignments3D/psize_A", path, required=False)
    return cryosparc_pose_to_matrix(pose), shift_px * (psize if align_psize is None else align_psize)[:, None]


# ------------------------------------------------------------------------- write
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
    ctf = {
        "ctf/df1_A": ps.defocus_u_a.astype(f4),
        "ctf/df2_A": ps.defocus_v_a.astype(f4),
        "ctf/df_angle_rad": np.deg2rad(ps.defocus_angle_deg).astype(f4),
        "ctf/phase_shift_rad": np.deg2rad(ps.phase_shift_deg).astype(f4),
    }
    if ps.records is not None:
        base, fields = ps.records, _updated_fields(ps, ctf)
    else:
        base, fields = _fresh_fields(ps, ctf, path)
    for name, values in (extra_fields or {}).items():
        values = np.asarray(values)
        if values.shape[0] != n:
            raise ValueError(f"{path}: extra field {name} has {values.shape[0]} rows for {n} particles")
        fields[name] = values
    save_cs(path, merge_fields(base, fields))
    return path


def _updated_fields(ps: ParticleSet, ctf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTF, pose and shift fields of a ``.cs`` input's records, rewritten from the arrays.

    A value that did not change keeps its original bits (and dtype), so reading and
    writing a ``.cs`` does not perturb it by a float32 round trip."""
    base, fields = ps.records, dict(ctf)
    if ps.has_poses and "alignments3D/pose" in base.dtype.names:
        align_psize = base["alignments3D/psize_A"].astype(np.float64) if "alignments3D/psize_A" in base.dtype.names else ps.apix_per_particle()
        # a rotation vector and its 2*pi-complement are the same rotation: keep the original
        # vector wherever the rotation did not change
        old_pose = base["alignments3D/pose"]
        same = np.abs(cryosparc_pose_to_matrix(old_pose) - ps.rotations).max(axis=(1, 2)) < 1e-5
        fields["alignments3D/pose"] = np.where(same[:, None], old_pose, matrix_to_cryosparc_pose(ps.rotations)).astype(np.float32)
        fields["alignments3D/shift"] = (ps.shifts_a / align_psize[:, None]).astype(np.float32)
    for name in list(fields):
        if name in base.dtype.names and base[name].shape == fields[name].shape:
            old = base[name].astype(np.float64)
            keep = np.isclose(fields[name].astype(np.float64), old, rtol=1e-6, atol=1e-6)
            fields[name] = np.where(keep, base[name], fields[name]).astype(base.dtype[name].base)
    return fields


def _fresh_fields(ps: ParticleSet, ctf: dict[str, np.ndarray], path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A new ``uid`` table and the ``blob/*``, ``ctf/*`` (and, with poses, ``alignments3D/*``)
    fields cryoSPARC expects of an imported particle set."""
    n, f4 = len(ps), np.float32
    apix_pp = ps.apix_per_particle()
    uid = np.random.default_rng().integers(1, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)
    stack_names = output_stack_names(ps.image_paths, path.parent, ps.input_stack_names())
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
        **ctf,
        "ctf/scale": np.ones(n, f4),
        "ctf/scale_const": np.zeros(n, f4),
        **{k: np.zeros((n, m), f4) for k, m in _CS_CTF_VECTORS.items()},
        "ctf/bfactor": np.zeros(n, f4),
    }
    if ps.has_poses:
        fields.update(
            {
                "alignments3D/split": half_set_to_cryosparc(ps.half_set),
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
    return base, fields
