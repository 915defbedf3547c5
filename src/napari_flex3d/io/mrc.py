"""MRC maps and particle stacks: a small header parser over ``np.memmap``.

We parse the 1024-byte header ourselves (rather than through ``mrcfile``) so that
stacks can be memory-mapped at the right offset whatever their header faults
(blank ``MAP`` id, zero machine stamp, zero cell), and so that every fault
surfaces as a ``ValueError`` naming the file. ``write_map`` uses ``mrcfile``.

Voxel data start at byte ``1024 + nsymbt``. Supported modes: 0 (int8), 1 (int16),
2 (float32), 6 (uint16), 12 (float16). ``.gz`` files are decompressed in memory
(maps only; a stack must be uncompressed to be memory-mapped).

Pixel size: ``cell / m{x,y,z}``; a zero cell means "unknown" and ``read_map``
returns ``apix=None`` (callers that need it call :meth:`MapData.require_apix`,
which tells the user to pass ``--apix``). Stacks take their pixel size from the
STAR/.cs file, never from the stack header.

Imports NumPy (``mrcfile`` only to write).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .values import require_finite

__all__ = [
    "MODES",
    "MrcHeader",
    "MapData",
    "read_header",
    "read_map",
    "write_map",
    "open_stack",
    "is_mrc_path",
]

MODES: dict[int, np.dtype] = {
    0: np.dtype(np.int8),
    1: np.dtype(np.int16),
    2: np.dtype(np.float32),
    6: np.dtype(np.uint16),
    12: np.dtype(np.float16),
}
_MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".mrc.gz", ".mrcs.gz", ".map.gz")


def is_mrc_path(path) -> bool:
    """True if ``path`` has an MRC-like suffix (``.mrc``, ``.mrcs``, ``.map``, ``.map.gz``...)."""
    name = str(path).lower()
    return name.endswith(_MRC_SUFFIXES)


@dataclass(frozen=True)
class MrcHeader:
    """The fields of an MRC header we use. Extents are in file order (columns, rows, sections)."""

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    dtype: np.dtype  # with the file's byte order
    nstart: tuple[int, int, int]
    mxyz: tuple[int, int, int]
    cell_a: tuple[float, float, float]
    axis_order: tuple[int, int, int]  # mapc, mapr, maps (1 = X, 2 = Y, 3 = Z)
    dmin: float
    dmax: float
    dmean: float
    rms: float
    ispg: int
    nsymbt: int
    nversion: int
    origin_xyz_a: tuple[float, float, float]
    labels: tuple[str, ...]
    data_offset: int

    @property
    def voxel_size_xyz(self) -> tuple[float, float, float]:
        """Voxel size along X, Y, Z in Å (``cell / m``); 0 where unknown."""
        return tuple(float(c / m) if m > 0 and c > 0 else 0.0 for c, m in zip(self.cell_a, self.mxyz))

    @property
    def data_nbytes(self) -> int:
        return self.nx * self.ny * self.nz * self.dtype.itemsize


@dataclass
class MapData:
    """A map read into memory.

    data: ``(d, h, w)`` = ``(z, y, x)`` float32 (axes re-ordered by mapc/mapr/maps).
    apix: the X voxel size in Å, or ``None`` when the header's cell is 0 (unknown).
    voxel_size_xyz: per-axis voxel size (Å; 0 = unknown).
    """

    data: np.ndarray
    apix: float | None
    voxel_size_xyz: tuple[float, float, float]
    origin_xyz_a: tuple[float, float, float]
    nstart: tuple[int, int, int]
    mode: int
    ispg: int
    labels: tuple[str, ...] = ()
    path: str = ""
    header: MrcHeader | None = field(default=None, repr=False)

    def require_apix(self) -> float:
        """The pixel size, or a ValueError telling the user to pass ``--apix``."""
        if self.apix is None:
            raise ValueError(
                f"{self.path}: the MRC header gives no voxel size (cell is 0); pass the pixel size with --apix"
            )
        return self.apix


def _parse_header(raw: bytes, path: str, file_size: int | None) -> MrcHeader:
    if len(raw) < 1024:
        raise ValueError(f"{path}: not an MRC file: {len(raw)} bytes, shorter than the 1024-byte header")
    stamp = raw[212:214]
    if stamp[:1] == b"\x11":
        order = ">"
    elif stamp[:1] in (b"\x44", b"\x41"):
        order = "<"
    else:  # no (or a broken) machine stamp: guess the byte order from plausible extents and mode
        order = "<"
        for cand in ("<", ">"):
            nx, ny, nz, mode = np.frombuffer(raw[:16], dtype=f"{cand}i4")
            if mode in MODES and 0 < nx < 1 << 20 and 0 < ny < 1 << 20 and 0 < nz < 1 << 24:
                order = cand
                break
    i4 = np.frombuffer(raw[:1024], dtype=f"{order}i4")
    f4 = np.frombuffer(raw[:1024], dtype=f"{order}f4")
    nx, ny, nz, mode = (int(v) for v in i4[:4])
    if mode not in MODES:
        raise ValueError(f"{path}: unsupported MRC mode {mode} (supported: 0, 1, 2, 6, 12)")
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise ValueError(f"{path}: invalid MRC extents nx, ny, nz = {nx}, {ny}, {nz}")
    nsymbt = int(i4[23])
    if nsymbt < 0:
        raise ValueError(f"{path}: invalid MRC extended header size nsymbt = {nsymbt}")
    axis_order = tuple(int(v) for v in i4[16:19])
    if sorted(axis_order) != [1, 2, 3]:
        axis_order = (1, 2, 3)  # a broken mapc/mapr/maps: assume the standard order
    nlabl = int(np.clip(i4[55], 0, 10))
    labels = tuple(
        raw[224 + 80 * k : 304 + 80 * k].decode("ascii", errors="replace").rstrip(" \x00") for k in range(nlabl)
    )
    dtype = MODES[mode].newbyteorder(order)
    header = MrcHeader(
        path=path,
        nx=nx,
        ny=ny,
        nz=nz,
        mode=mode,
        dtype=dtype,
        nstart=tuple(int(v) for v in i4[4:7]),
        mxyz=tuple(int(v) for v in i4[7:10]),
        cell_a=tuple(float(v) for v in f4[10:13]),
        axis_order=axis_order,
        dmin=float(f4[19]),
        dmax=float(f4[20]),
        dmean=float(f4[21]),
        rms=float(f4[54]),
        ispg=int(i4[22]),
        nsymbt=nsymbt,
        nversion=int(i4[27]),
        origin_xyz_a=tuple(float(v) for v in f4[49:52]),
        labels=labels,
        data_offset=1024 + nsymbt,
    )
    if file_size is not None and file_size < header.data_offset + header.data_nbytes:
        raise ValueError(
            f"{path}: truncated MRC file: the header says {nz} x {ny} x {nx} voxels of mode {mode} "
            f"({header.data_offset + header.data_nbytes} bytes with the header), but the file has {file_size} bytes"
        )
    return header


def _is_gz(path: Path) -> bool:
    return str(path).lower().endswith(".gz")


def read_header(path) -> MrcHeader:
    """Parse the header of an MRC file (``.gz`` allowed); checks the file holds all its data."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not an MRC file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MRC file")
    if _is_gz(path):
        raw = _gunzip(path)
        return _parse_header(raw[:1024], str(path), len(raw))
    with open(path, "rb") as fh:
        raw = fh.read(1024)
    return _parse_header(raw, str(path), os.path.getsize(path))


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None


def _file_order_array(path: Path, header: MrcHeader) -> np.ndarray:
    """The voxel data in file order ``(sections, rows, columns)``, native dtype."""
    shape = (header.nz, header.ny, header.nx)
    if _is_gz(path):
        raw = _gunzip(path)
        arr = np.frombuffer(raw, dtype=header.dtype, count=header.nx * header.ny * header.nz, offset=header.data_offset)
        return arr.reshape(shape)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=header.data_offset, shape=shape)


def read_map(path, apix: float | None = None) -> MapData:
    """Read an MRC map/stack into memory as float32 ``(z, y, x)``.

    Axes are re-ordered by the header's mapc/mapr/maps so the result is always
    ``(z, y, x)``. ``apix`` overrides the header's voxel size (use it when the header
    cell is 0, in which case ``MapData.apix`` is ``None`` unless given here). A map with
    NaN or infinite voxels is refused (``ValueError`` naming the file and the count).
    """
    path = Path(path)
    header = read_header(path)
    arr = np.asarray(_file_order_array(path, header), dtype=np.float32)  # (sections, rows, cols)
    require_finite(arr, f"{path}: MRC data")  # a NaN voxel would poison every FSC and threshold downstream
    # file axis 0 holds spatial axis maps, axis 1 mapr, axis 2 mapc; we want (Z, Y, X) = (3, 2, 1)
    mapc, mapr, maps = header.axis_order
    file_axis = {maps: 0, mapr: 1, mapc: 2}
    arr = np.ascontiguousarray(arr.transpose(file_axis[3], file_axis[2], file_axis[1]))  # (z, y, x)
    vx = header.voxel_size_xyz
    if apix is None:
        apix = vx[0] if np.isfinite(vx[0]) and vx[0] > 0 else None
    return MapData(
        data=arr,
        apix=None if apix is None else float(apix),
        voxel_size_xyz=vx,
        origin_xyz_a=header.origin_xyz_a,
        nstart=header.nstart,
        mode=header.mode,
        ispg=header.ispg,
        labels=header.labels,
        path=str(path),
        header=header,
    )


def write_map(path, data, apix: float, label: str | None = None, origin_xyz_a=None) -> None:
    """Write a float32 map ``(z, y, x)`` (or a stack ``(n, h, w)`` if ``path`` ends in ``.mrcs``), atomically."""
    import mrcfile

    data = np.asarray(data, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise ValueError(f"{path}: write_map needs a 2D or 3D array, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: refusing to write a map with NaN or infinite values")
    if not (apix is not None and np.isfinite(apix) and apix > 0):
        raise ValueError(f"{path}: invalid voxel size {apix!r}")
    from .atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, mrcfile.new(tmp, overwrite=True, compression="gzip" if _is_gz(path) else None) as mrc:
        mrc.set_data(data)
        if str(path).lower().endswith(".mrcs") and data.ndim == 3:
            mrc.set_image_stack()
            mrc.voxel_size = (apix, apix, 1.0)
        else:
            if data.ndim == 3:
                mrc.set_volume()
            mrc.voxel_size = apix
        if origin_xyz_a is not None:
            mrc.header.origin = tuple(float(v) for v in origin_xyz_a)
        if label:
            mrc.header.label[0] = label[:80].encode("ascii", errors="replace")
            mrc.header.nlabl = 1
        mrc.update_header_stats()


def open_stack(path) -> np.ndarray:
    """Memory-map a particle stack as ``(n, h, w)`` in its file dtype (nothing is read yet).

    A single image (nz = 1) is a stack of one. Raises ValueError for ``.gz`` stacks,
    unsupported modes and truncated files, FileNotFoundError if absent.
    """
    path = Path(path)
    if _is_gz(path):
        raise ValueError(f"{path}: compressed stacks cannot be memory-mapped; decompress it first (gunzip)")
    header = read_header(path)
    if header.axis_order != (1, 2, 3):
        raise ValueError(f"{path}: particle stacks must have the standard axis order 1, 2, 3 (got {header.axis_order})")
    return _file_order_array(path, header)
