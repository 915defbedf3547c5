"""Volume series on disk: numbered MRC frames, a ChimeraX script that plays them, a movie.

ChimeraX opens numbered maps as one volume series with ``open frame_*.mrc vseries true``
and plays it with ``vseries play``. The ``.cxc`` names its frames relative to itself:
ChimeraX runs a command script from the script's own folder. The movie frames' images
(``projection_images``, ``to_uint8``) are shared with the napari explorer's movie export,
so both scale a series' grey levels the same way. Imports numpy and ``io.mrc``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, check_output_space, write_text

__all__ = [
    "write_volume_series", "write_chimerax_series_script", "cxc_quoted", "write_series_movie", "series_level", "projection_images",
    "to_uint8",
]


def series_level(volumes: np.ndarray) -> float:
    """A surface threshold for a series ``(f, n, n, n)``: where the middle frame holds its densest
    4 %, or, for maps that are zero outside a small mask, the median of its positive voxels."""
    mid = np.asarray(volumes[len(volumes) // 2], dtype=np.float64)
    level = float(np.quantile(mid, 0.96))
    positive = mid[mid > 1e-6 * max(float(mid.max()), 1e-30)]
    if positive.size:
        level = max(level, float(np.quantile(positive, 0.5)))
    return level


def cxc_quoted(name: str) -> str:
    """``name`` as one argument of a ChimeraX command, quoted unless plain (a name with spaces stays one).

    ChimeraX has no escape inside a quoted word, so a name holding a double quote, a
    semicolon (which separates commands), a newline or another control character could end
    the word and run the rest as commands: such names are refused (``ValueError``), not written.
    """
    bad = sorted({c for c in name if c in '";' or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"{name!r}: a file name with {' '.join(repr(c) for c in bad)} cannot be written into a "
                         "ChimeraX script safely; rename it")
    plain = all(c.isalnum() or c in "_-.*/+" for c in name)
    return name if plain and name else f'"{name}"'


def write_chimerax_series_script(path, frame_glob: str, level: float, frames: int) -> Path:
    """A ``.cxc`` that opens ``frame_glob`` as a volume series and plays it back and forth."""
    path = Path(path)
    frame_glob = cxc_quoted(frame_glob)
    text = "\n".join(
        [
            f"# napari-flex3d volume series: {frames} frames. Open this file in ChimeraX (open series.cxc).",
            f"open {frame_glob} vseries true",
            f"volume #1 style surface level {level:.6g}",
            "view",
            "vseries play #1 loop true direction oscillate",
            "",
        ]
    )
    return write_text(path, text)


def write_volume_series(volumes: np.ndarray, apix: float, out_dir, prefix: str = "frame", labels=None) -> tuple[list[Path], Path]:
    """Write ``volumes (f, n, n, n)`` as ``prefix_000.mrc``... and ``series.cxc`` in ``out_dir``.

    Refuses (``DiskFullError``, before the first frame) a series that cannot fit; each frame is
    written whole (``io.atomic``). Returns ``(frame paths, script path)``.
    """
    from ..io.mrc import write_map

    volumes = np.asarray(volumes, dtype=np.float32)
    if volumes.ndim != 4:
        raise ValueError(f"a volume series must be (frames, n, n, n), got shape {volumes.shape}")
    cxc_quoted(prefix)  # refused before any frame is written
    out_dir = Path(out_dir)
    f, n = volumes.shape[0], volumes.shape[1]
    check_output_space(out_dir, f * (volumes[0].nbytes + 1024), f"{f} frames of {n}^3")  # + an MRC header each
    width = max(3, len(str(len(volumes) - 1)))
    paths = []
    for i, vol in enumerate(volumes):
        p = out_dir / f"{prefix}_{i:0{width}d}.mrc"
        write_map(p, vol, apix, label=None if labels is None else labels[i])
        paths.append(p)
    script = write_chimerax_series_script(out_dir / "series.cxc", f"{prefix}_*.mrc", series_level(volumes), len(volumes))
    return paths, script


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``images (f, h, w)`` as uint8, one grey scale for all frames (0.5 and 99.5 percentiles)
    so that a moving density does not flicker in brightness."""
    lo, hi = np.percentile(images, [0.5, 99.5])
    scaled = (images - lo) / (hi - lo if hi > lo else 1.0)
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def projection_images(volumes: np.ndarray, view: str = "projection") -> np.ndarray:
    """``(f, h, w)`` float32 images of a series ``(f, n, n, n)``: projections along z (or
    central z slices), y up as in a plot."""
    volumes = np.asarray(volumes, dtype=np.float32)
    if view == "projection":
        images = volumes.sum(axis=1)  # (f, h, w): along z
    elif view == "slice":
        images = volumes[:, volumes.shape[1] // 2]
    else:
        raise ValueError(f"view must be 'projection' or 'slice', got {view!r}")
    return images[:, ::-1]


def write_series_movie(volumes: np.ndarray, path, fps: int = 10, view: str = "projection", scale: int = 4) -> Path | None:
    """An mp4 of a series ``(f, n, n, n)``: each frame's projection along z (or central z slice).

    Played forward then backward. Needs ``imageio`` with ``imageio-ffmpeg``; returns ``None``
    (writes nothing) when they are missing.
    """
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the mp4 writer)
    except ImportError:
        return None
    images = to_uint8(projection_images(volumes, view))
    images = np.kron(images, np.ones((1, scale, scale), np.uint8))  # nearest-neighbour enlargement
    pad = (-images.shape[1]) % 16  # codec-friendly size
    images = np.pad(images, ((0, 0), (0, pad), (0, pad)))
    frames = np.concatenate([images, images[-2:0:-1]])
    path = Path(path)
    with (
        atomic_path(path) as tmp,  # the mp4 appears whole or not at all
        imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=16, quality=7) as writer,
    ):
        for frame in frames:
            writer.append_data(np.repeat(frame[:, :, None], 3, axis=2))
    return path
