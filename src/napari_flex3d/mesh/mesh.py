"""The tetrahedral mesh as data: the :class:`Mesh` dataclass, its geometry (cell volumes and
orientation, edges, boundary faces) and its file format (``.npz`` of plain arrays).

A room of ``mesh``; it imports numpy only, so every other mesh module (build, barycentric,
rigidity) can import it. Coordinates are xyz Å, centred: voxel ``i`` of an ``N``-box sits at
``(i - N//2) * apix`` (docs/conventions.md). Every cell is positively oriented:
``det[x1 - x0, x2 - x0, x3 - x0] > 0``.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import save_npz

__all__ = [
    "Mesh",
    "orient_cells",
    "cell_signed_volumes",
    "mesh_edges",
    "surface_triangles",
    "save_mesh",
    "load_mesh",
    "MESH_FORMAT_VERSION",
]

MESH_FORMAT_VERSION = 1

# Faces of a positively oriented tetrahedron (x0, x1, x2, x3), ordered so that their
# right-hand normals point out of it; face k is the one opposite vertex k.
_OUTWARD_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]], dtype=np.int64)
_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], dtype=np.int64)


@dataclass(eq=False)
class Mesh:
    """A tetrahedral mesh in the canonical frame.

    Attributes:
        vertices_a: ``(v, 3)`` float64 vertex positions, xyz Å, centred (docs/conventions.md).
        cells: ``(t, 4)`` int64 vertex indices, every cell positively oriented.
        box: edge of the cubic box, voxels, of the map the mesh was built for.
        apix: voxel size of that map, Å.
        rigidity_weights: optional ``(t,)`` float32 per-cell rigidity weights ``w_j``.
        motion_mask: optional ``(v,)`` float32 per-vertex mask ``m`` in [0, 1]
            (0 where motion is forbidden).
        method: how it was built (``"tetgen"``, ``"grid"`` or ``"user"``).
        cell_size_a: the target cell size (edge length) it was built with, Å.
    """

    vertices_a: np.ndarray
    cells: np.ndarray
    box: int
    apix: float
    rigidity_weights: np.ndarray | None = None
    motion_mask: np.ndarray | None = None
    method: str = "user"
    cell_size_a: float | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.vertices_a = np.ascontiguousarray(self.vertices_a, dtype=np.float64)
        self.cells = np.ascontiguousarray(self.cells, dtype=np.int64)
        if self.vertices_a.ndim != 2 or self.vertices_a.shape[1] != 3:
            raise ValueError(f"vertices_a must be (v, 3), got {self.vertices_a.shape}")
        if self.cells.ndim != 2 or self.cells.shape[1] != 4:
            raise ValueError(f"cells must be (t, 4), got {self.cells.shape}")
        if self.cells.size and (self.cells.min() < 0 or self.cells.max() >= len(self.vertices_a)):
            raise ValueError(f"cells index vertices outside 0..{len(self.vertices_a) - 1}")
        self.box = int(self.box)
        self.apix = float(self.apix)
        if self.rigidity_weights is not None:
            self.rigidity_weights = np.asarray(self.rigidity_weights, dtype=np.float32)
            if self.rigidity_weights.shape != (self.n_cells,):
                raise ValueError(f"rigidity_weights must be ({self.n_cells},), got {self.rigidity_weights.shape}")
        if self.motion_mask is not None:
            self.motion_mask = np.asarray(self.motion_mask, dtype=np.float32)
            if self.motion_mask.shape != (self.n_vertices,):
                raise ValueError(
                    f"motion_mask must be ({self.n_vertices},), got {self.motion_mask.shape}"
                )

    @property
    def n_vertices(self) -> int:
        return int(self.vertices_a.shape[0])

    @property
    def n_cells(self) -> int:
        return int(self.cells.shape[0])

    def cell_volumes_a3(self) -> np.ndarray:
        """``(t,)`` cell volumes in Å³ (positive for positively oriented cells)."""
        return cell_signed_volumes(self.vertices_a, self.cells)

    def centroids_a(self) -> np.ndarray:
        """``(t, 3)`` cell centroids, xyz Å."""
        return self.vertices_a[self.cells].mean(axis=1)

    def vertices_zyx_vox(self) -> np.ndarray:
        """``(v, 3)`` vertex positions as fractional (z, y, x) voxel indices (for napari layers)."""
        return (self.vertices_a / self.apix + self.box // 2)[:, ::-1].copy()

    def replace(self, **changes) -> "Mesh":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def summary(self) -> dict:
        """Counts and sizes, JSON-able: vertices, cells, boundary faces, edges, volumes."""
        vols = self.cell_volumes_a3()
        edges = mesh_edges(self)
        lengths = np.linalg.norm(self.vertices_a[edges[:, 0]] - self.vertices_a[edges[:, 1]], axis=1)
        out = {
            "n_vertices": self.n_vertices,
            "n_cells": self.n_cells,
            "n_boundary_faces": int(len(surface_triangles(self))),
            "n_edges": int(len(edges)),
            "method": self.method,
            "box": self.box,
            "apix": self.apix,
            "cell_size_a": self.cell_size_a,
            "total_volume_a3": float(vols.sum()),
            "cell_volume_a3_min": float(vols.min()) if len(vols) else 0.0,
            "cell_volume_a3_max": float(vols.max()) if len(vols) else 0.0,
            "edge_length_a_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "has_rigidity_weights": self.rigidity_weights is not None,
            "has_motion_mask": self.motion_mask is not None,
        }
        if self.motion_mask is not None:
            out["n_fixed_vertices"] = int((self.motion_mask == 0).sum())
        return out

    def __repr__(self) -> str:
        return (
            f"Mesh({self.n_vertices} vertices, {self.n_cells} cells, method={self.method!r}, "
            f"box={self.box}, apix={self.apix}, cell_size_a={self.cell_size_a})"
        )


# ----------------------------------------------------------------------------- geometry


def cell_signed_volumes(vertices_a: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``(t,)`` signed volumes ``det[x1 - x0, x2 - x0, x3 - x0] / 6`` of ``(t, 4)`` cells."""
    x = np.asarray(vertices_a, dtype=np.float64)[cells]  # (t, 4, 3)
    edges = x[:, 1:] - x[:, :1]  # (t, 3, 3) rows = edges
    return np.linalg.det(edges) / 6.0


def orient_cells(vertices_a: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Cells with vertices 2 and 3 swapped where needed so every signed volume is positive."""
    cells = np.array(cells, dtype=np.int64, copy=True)
    neg = cell_signed_volumes(vertices_a, cells) < 0
    cells[neg, 2], cells[neg, 3] = cells[neg, 3].copy(), cells[neg, 2].copy()
    return cells


def mesh_edges(mesh_or_cells) -> np.ndarray:
    """Unique undirected edges ``(e, 2)`` int64 (lower index first) of a mesh or ``(t, 4)`` cells."""
    cells = mesh_or_cells.cells if isinstance(mesh_or_cells, Mesh) else np.asarray(mesh_or_cells, np.int64)
    e = cells[:, _EDGES].reshape(-1, 2)  # (6t, 2)
    e = np.sort(e, axis=1)
    return np.unique(e, axis=0)


def surface_triangles(mesh_or_cells) -> np.ndarray:
    """Boundary faces ``(f, 3)`` int64 of a mesh, wound so their normals point outward.

    A face is on the boundary when exactly one cell holds it. Needs positively oriented
    cells (every :class:`Mesh` has them).
    """
    cells = mesh_or_cells.cells if isinstance(mesh_or_cells, Mesh) else np.asarray(mesh_or_cells, np.int64)
    faces = cells[:, _OUTWARD_FACES].reshape(-1, 3)  # (4t, 3) outward-wound
    key = np.sort(faces, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return faces[counts[inverse.ravel()] == 1]


# ----------------------------------------------------------------------------- save / load


def save_mesh(mesh: Mesh, path) -> Path:
    """Write a mesh as an ``.npz`` of plain arrays plus a JSON metadata string (no pickle)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    meta = {
        "format": "napari-flex3d mesh",
        "version": MESH_FORMAT_VERSION,
        "box": mesh.box,
        "apix": mesh.apix,
        "method": mesh.method,
        "cell_size_a": mesh.cell_size_a,
        "info": mesh.info,
    }
    arrays = {"vertices_a": mesh.vertices_a, "cells": mesh.cells, "meta_json": np.array(json.dumps(meta))}
    if mesh.rigidity_weights is not None:
        arrays["rigidity_weights"] = mesh.rigidity_weights
    if mesh.motion_mask is not None:
        arrays["deformation_mask"] = mesh.motion_mask  # the file's key since format 1: older readers keep reading it
    return save_npz(path, **arrays)


def load_mesh(path, box: int | None = None, apix: float | None = None) -> Mesh:
    """Read a mesh written by :func:`save_mesh` (``np.load(allow_pickle=False)``: a pickle is refused).

    Every failure is a ``ValueError`` naming the file: not an ``.npz``, missing or malformed
    arrays or metadata, non-finite vertices, degenerate or inverted cells (with their count).
    With ``box`` and ``apix`` (the run's), a mesh built for a box of another size in Å
    (``box * apix``) is refused naming both.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        # np.load raises OSError/ValueError; a damaged zip inside it the others
        raise ValueError(f"{path}: not a readable mesh .npz ({type(exc).__name__}: {exc})") from exc
    for key in ("vertices_a", "cells", "meta_json"):
        if key not in arrays:
            raise ValueError(f"{path}: mesh file lacks '{key}'")
    try:
        meta = json.loads(str(arrays["meta_json"]))
    except ValueError as exc:
        raise ValueError(f"{path}: mesh metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "napari-flex3d mesh":
        raise ValueError(f"{path}: not a napari-flex3d mesh (format={meta.get('format') if isinstance(meta, dict) else meta!r})")
    try:
        version, mesh_box, mesh_apix = int(meta.get("version", 0)), int(meta["box"]), float(meta["apix"])
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: mesh metadata lacks a valid version/box/apix ({exc!r})") from exc
    if version > MESH_FORMAT_VERSION:
        raise ValueError(f"{path}: mesh format version {version} is newer than {MESH_FORMAT_VERSION}")
    if mesh_box < 1 or not np.isfinite(mesh_apix) or mesh_apix <= 0:
        raise ValueError(f"{path}: mesh box {mesh_box} / voxel size {mesh_apix} Å is not valid")
    numeric = {k: arrays[k] for k in ("vertices_a", "cells", "rigidity_weights", "deformation_mask") if k in arrays}
    for key, arr in numeric.items():
        if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
            raise ValueError(f"{path}: mesh array '{key}' must hold finite numbers (dtype {arr.dtype})")
    try:
        mesh = Mesh(
            vertices_a=arrays["vertices_a"], cells=arrays["cells"], box=mesh_box, apix=mesh_apix,
            rigidity_weights=arrays.get("rigidity_weights"), motion_mask=arrays.get("deformation_mask"),
            method=str(meta.get("method", "user")), cell_size_a=meta.get("cell_size_a"), info=meta.get("info", {}),
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if mesh.n_cells == 0:
        raise ValueError(f"{path}: the mesh has no cells")
    volumes = mesh.cell_volumes_a3()
    # A cell thinner than 1e-6 of a voxel's volume is degenerate: its barycentric coordinates divide by ~0.
    bad = volumes <= 1e-6 * mesh.apix**3
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} of {mesh.n_cells} cells are degenerate or inverted "
                         f"(volume <= 0); rebuild the mesh (flex3d mesh)")
    if box is not None and apix is not None and abs(mesh.box * mesh.apix - box * apix) > 0.01 * box * apix:
        raise ValueError(f"{path}: the mesh was built for a {mesh.box}-voxel box at {mesh.apix:.4g} Å "
                         f"({mesh.box * mesh.apix:.1f} Å), the run's is {box} voxels at {apix:.4g} Å "
                         f"({box * apix:.1f} Å); build it from this run's map (flex3d mesh --map)")
    return mesh
