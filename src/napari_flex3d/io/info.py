"""``flex3d info``: a JSON-able summary of a particle file or an MRC map/stack.

Imports ``conventions`` and ``io.mrc`` / ``io.particles``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..conventions import matrix_to_euler
from .mrc import is_mrc_path, read_header, read_map
from .particles import ParticleSet, read_particles

__all__ = ["describe", "describe_particles", "describe_map", "format_summary"]

_MAX_LISTED = 5


def describe(path: Path, passthrough=None, root=None) -> dict:
    """Summary of ``path``: a ``.star``/``.cs`` particle file or an MRC map/stack."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file (give a .star, .cs or MRC file inside it)")
    suffix = path.suffix.lower()
    if suffix in (".star", ".cs"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ps = read_particles(path, passthrough=passthrough, root=root)
        summary = describe_particles(ps)
        summary["warnings"] = [str(w.message) for w in caught]
        return summary
    if is_mrc_path(path):
        return describe_map(path)
    raise ValueError(f"{path}: unknown file suffix {suffix!r} (expected .star, .cs, .mrc, .mrcs, .map or .map.gz)")


def _f(x) -> float:
    return float(np.asarray(x))


def describe_particles(ps: ParticleSet) -> dict:
    """Counts, optics, half sets, the first particle and where the images are."""
    n = len(ps)
    counts = np.bincount(ps.optics_group, minlength=len(ps.optics))
    optics = [
        {
            "name": g.name,
            "number": g.number,
            "n_particles": int(counts[i]),
            "voltage_kv": g.voltage_kv,
            "cs_mm": g.cs_mm,
            "amplitude_contrast": g.amplitude_contrast,
            "apix": g.apix,
            "box": g.box,
            "inverted": g.inverted,
            "ctf_premultiplied": g.ctf_premultiplied,
        }
        for i, g in enumerate(ps.optics)
    ]
    used = [o for o in optics if o["n_particles"] > 0]
    apix_values = sorted({o["apix"] for o in used})
    box_values = sorted({o["box"] for o in used if o["box"] is not None})
    g0 = ps.optics[int(ps.optics_group[0])]
    first = {
        "image": f"{int(ps.image_indices[0]) + 1}@{ps.image_paths[0]}",
        "index_0based": int(ps.image_indices[0]),
        "optics_group": g0.number,
        "euler_deg": [float(v) for v in matrix_to_euler(ps.rotations[0])],
        "matrix": ps.rotations[0].tolist(),
        "shift_a": [float(v) for v in ps.shifts_a[0]],
        "shift_px": [float(v) / g0.apix for v in ps.shifts_a[0]],
        "defocus_u_a": _f(ps.defocus_u_a[0]),
        "defocus_v_a": _f(ps.defocus_v_a[0]),
        "defocus_angle_deg": _f(ps.defocus_angle_deg[0]),
        "phase_shift_deg": _f(ps.phase_shift_deg[0]),
        "voltage_kv": g0.voltage_kv,
        "cs_mm": g0.cs_mm,
        "amplitude_contrast": g0.amplitude_contrast,
        "apix": g0.apix,
        "half_set": int(ps.half_set[0]),
    }
    stacks = ps.image_stacks()
    missing = [p for p, ok in stacks.items() if not ok]
    folders = sorted({str(Path(p).parent) for p in stacks})
    images = {
        "n_stacks": len(stacks),
        "n_existing": len(stacks) - len(missing),
        "n_missing": len(missing),
        "missing_examples": missing[:_MAX_LISTED],
        "folders": folders[:_MAX_LISTED],
        "n_folders": len(folders),
    }
    return {
        "kind": "particles",
        "path": str(ps.source),
        "format": ps.fmt,
        "n_particles": n,
        "n_optics_groups": len(ps.optics),
        "optics_groups": optics,
        "apix": apix_values[0] if len(apix_values) == 1 else apix_values,
        "box": (box_values[0] if len(box_values) == 1 else box_values) if box_values else None,
        "has_poses": ps.has_poses,
        "half_sets": {
            "0": int(np.sum(ps.half_set == 0)),
            "1": int(np.sum(ps.half_set == 1)),
            "unknown": int(np.sum(ps.half_set < 0)),
        },
        "first_particle": first,
        "images": images,
    }


def describe_map(path) -> dict:
    """Shape, mode, voxel size and statistics (computed from the data) of an MRC file."""
    path = Path(path)
    header = read_header(path)
    if str(path).lower().endswith(".gz"):
        m = read_map(path)
        stats = _stats(m.data[None])
        vx, apix = m.voxel_size_xyz, m.apix
        shape = list(m.data.shape)
    else:  # stream the sections of a memory map: a stack can be larger than memory
        arr = np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_offset, shape=(header.nz, header.ny, header.nx))
        stats = _stats(arr)
        vx = header.voxel_size_xyz
        apix = vx[0] if vx[0] > 0 else None
        mapc, mapr, maps = header.axis_order
        extent = {mapc: header.nx, mapr: header.ny, maps: header.nz}
        shape = [extent[3], extent[2], extent[1]]
    return {
        "kind": "mrc",
        "path": str(path),
        "shape_zyx": shape,
        "mode": header.mode,
        "dtype": str(header.dtype.newbyteorder("=")),
        "voxel_size_xyz_a": [float(v) for v in vx],
        "apix": apix,
        "ispg": header.ispg,
        "axis_order": list(header.axis_order),
        "nstart": list(header.nstart),
        "origin_xyz_a": list(header.origin_xyz_a),
        **stats,
        "labels": list(header.labels),
    }


def _stats(arr, chunk_bytes: int = 1 << 26) -> dict:
    """min/max/mean/std of ``(n, ...)`` read a block of sections at a time (float64 sums)."""
    n = arr.shape[0]
    per = max(1, chunk_bytes // max(1, arr[0].nbytes))
    lo, hi, total, total2, count = np.inf, -np.inf, 0.0, 0.0, 0
    for start in range(0, n, per):
        block = np.asarray(arr[start : start + per], dtype=np.float64)
        lo, hi = min(lo, block.min()), max(hi, block.max())
        total += block.sum()
        total2 += np.square(block).sum()
        count += block.size
    mean = total / count
    return {"min": float(lo), "max": float(hi), "mean": float(mean), "std": float(np.sqrt(max(total2 / count - mean**2, 0.0)))}


def _num(x, digits=6) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_num(v, digits) for v in x) + "]"
    if x is None:
        return "unknown"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def format_summary(summary: dict) -> str:
    """Human-readable text for :func:`describe`'s dict."""
    if summary.get("kind") == "mrc":
        s = summary
        lines = [
            f"{s['path']}: MRC, mode {s['mode']} ({s['dtype']})",
            f"  shape (z, y, x): {tuple(s['shape_zyx'])}",
            f"  voxel size (x, y, z): {_num(s['voxel_size_xyz_a'])} Å" + ("" if s["apix"] else "  (unknown: pass --apix)"),
            f"  min / max / mean / std: {_num(s['min'])} / {_num(s['max'])} / {_num(s['mean'])} / {_num(s['std'])}",
            f"  space group {s['ispg']}, axis order {s['axis_order']}, start {s['nstart']}",
        ]
        if s["labels"]:
            lines.append(f"  label: {s['labels'][0]}")
        return "\n".join(lines)
    s = summary
    f = s["first_particle"]
    im = s["images"]
    lines = [
        f"{s['path']}: {s['n_particles']} particles ({s['format']}), {s['n_optics_groups']} optics group(s)",
        f"  box {_num(s['box'])}, pixel size {_num(s['apix'])} Å, poses: {'yes' if s['has_poses'] else 'no'}",
        f"  half sets: {s['half_sets']['0']} / {s['half_sets']['1']} (unknown {s['half_sets']['unknown']})",
    ]
    for o in s["optics_groups"]:
        lines.append(
            f"  optics {o['number']} {o['name']!r}: {o['n_particles']} particles, {_num(o['voltage_kv'])} kV, "
            f"Cs {_num(o['cs_mm'])} mm, AC {_num(o['amplitude_contrast'])}, {_num(o['apix'])} Å/px, box {_num(o['box'])}"
            + (", inverted" if o["inverted"] else "")
            + (", CTF-premultiplied" if o["ctf_premultiplied"] else "")
        )
    lines += [
        f"  first particle: {f['image']} (optics group {f['optics_group']}, half set {f['half_set']})",
        f"    euler rot/tilt/psi: {_num(f['euler_deg'], 8)} deg",
        "    matrix A: " + "; ".join(_num(r, 5) for r in f["matrix"]),
        f"    shift: {_num(f['shift_a'])} Å = {_num(f['shift_px'])} px",
        f"    defocus U/V/angle: {_num(f['defocus_u_a'], 9)} / {_num(f['defocus_v_a'], 9)} Å / {_num(f['defocus_angle_deg'])} deg, "
        f"phase shift {_num(f['phase_shift_deg'])} deg",
        f"  images: {im['n_stacks']} stack(s), {im['n_existing']} found, {im['n_missing']} missing",
    ]
    for folder in im["folders"]:
        lines.append(f"    in {folder}")
    for p in im["missing_examples"]:
        lines.append(f"    missing: {p}")
    for w in s.get("warnings", []):
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
