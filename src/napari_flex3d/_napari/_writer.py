"""npe2 writer: an image layer to an MRC map with its voxel size. Imports ``napari_flex3d.io.mrc``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.mrc import write_map


def layer_apix(meta: dict) -> float:
    """The voxel size of a layer: its ``apix`` metadata, else its (isotropic) scale."""
    md = meta.get("metadata") or {}
    if md.get("apix"):
        return float(md["apix"])
    scale = np.asarray(meta.get("scale", (1.0,)), dtype=float)
    spatial = scale[-3:] if scale.size >= 3 else scale
    if not np.allclose(spatial, spatial[0]):
        raise ValueError(f"layer {meta.get('name')!r}: anisotropic scale {tuple(spatial)} cannot be one MRC voxel size")
    return float(spatial[0])


def write_mrc(path: str, data, meta: dict) -> list[str]:
    """Write one image layer as ``path`` (.mrc/.map) with the voxel size from the layer."""
    out = Path(path)
    if out.suffix.lower() not in (".mrc", ".map"):
        out = out.with_suffix(".mrc")
    arr = np.asarray(data, dtype=np.float32)
    write_map(out, arr, layer_apix(meta), label=f"napari-flex3d: {meta.get('name', '')}")
    return [str(out)]
