"""Where particle images live: finding stacks on disk and reading rows from memory maps.

Images stay on disk. A :class:`StackCache` keeps the most recently used stacks open as
memory maps (each holds a file descriptor, so the cache is bounded), and
:func:`read_images` copies only the rows asked for.

Stack paths are resolved once per distinct stack (:func:`resolve_image_path`), trying in
order: ``root/path``, ``root/<path without its first 1, 2, ... components>`` (a moved
project), then the metadata file's folder and up to three of its parents (RELION
project-relative paths, cryoSPARC ``J12/...`` paths next to ``J24/particles.cs``), and with
no root, last, the metadata file's folder as the root of a moved project. This one resolver
serves every entry point (CLI, API, the napari reader), so a file opens the same way in each. A
missing stack is not an error at read time; :func:`read_images` raises ``ValueError``
naming it. :func:`output_stack_names` is the inverse, for writers.

Imports NumPy, pandas and ``io.mrc``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from .mrc import open_stack, read_header

__all__ = [
    "StackCache",
    "output_stack_names",
    "read_images",
    "resolve_image_path",
    "resolve_image_paths",
    "stack_header_value",
]

_STACK_CACHE_SIZE = 128  # open memory maps each hold a file descriptor


class StackCache:
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


def read_images(
    cache: StackCache,
    paths: np.ndarray,
    indices: np.ndarray,
    boxes: np.ndarray,
    rows: np.ndarray,
    describe_row,
) -> np.ndarray | None:
    """Images ``(b, h, w)`` float32 at ``indices`` (0-based) of the stacks ``paths``, both ``(b,)``.

    ``boxes (b,)``: the box the metadata promise for each image (-1: unknown); ``rows (b,)``
    and ``describe_row(row) -> str`` name the particle in errors. Raises ValueError naming a
    missing stack, an index past the end of a stack, stacks of different image sizes, or an
    image with NaN or infinite pixels (the last guard: jobs leave such images out beforehand,
    :mod:`.image_check`, so that no non-finite pixel ever reaches a kernel).
    Returns None when ``b == 0``.
    """
    out = None
    for path in pd.unique(paths):
        mask = paths == path
        at = rows[mask]
        try:
            stack = cache.get(str(path))
        except FileNotFoundError:
            raise ValueError(
                f"{path}: particle image stack not found (needed by particle {int(at[0])}"
                f"{describe_row(at[0])}); pass root= (flex3d --root) if the data moved"
            ) from None
        ii = indices[mask]
        if ii.size and int(ii.max()) >= stack.shape[0]:
            k = int(np.argmax(ii))
            raise ValueError(
                f"{path}: image {int(ii[k]) + 1} (1-based) is past the end of the stack, which holds "
                f"{stack.shape[0]} image(s) (particle {int(at[k])}{describe_row(at[k])})"
            )
        promised = {int(b) for b in np.unique(boxes[mask])} - {-1}
        if any(tuple(stack.shape[1:]) != (b, b) for b in promised):
            raise ValueError(
                f"{path}: the stack holds {stack.shape[1]} x {stack.shape[2]} images but the particle "
                f"metadata says box {sorted(promised)}"
            )
        if out is None:
            out = np.empty((len(paths),) + tuple(stack.shape[1:]), dtype=np.float32)
        elif tuple(stack.shape[1:]) != out.shape[1:]:
            raise ValueError(
                f"{path}: images are {stack.shape[1:]} but other stacks hold {out.shape[1:]}; select one box size"
            )
        block = np.asarray(stack[ii], dtype=np.float32)  # (m, h, w)
        if not np.isfinite(block).all():  # NaN/Inf would reach the splat as an index of -2^63
            k = int(np.argmax(~np.isfinite(block).reshape(len(block), -1).all(axis=1)))
            raise ValueError(
                f"{path}: image {int(ii[k]) + 1} (1-based) holds NaN or infinite pixels (particle {int(at[k])}"
                f"{describe_row(at[k])}); training, reconstruction and analysis leave such images out (train.log "
                "names them); elsewhere remove them from the input (for example in RELION or cryoSPARC)"
            )
        out[mask] = block
    return out


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
    if root is None:  # last: the metadata file's folder as the root of a moved project
        candidates += [Path(base_dir) / Path(*parts[k:]) for k in range(1, len(parts))]
    for c in candidates:
        if c.is_file():
            return str(c), True
    return str(candidates[0]), False


def resolve_image_paths(names: np.ndarray, base_dir: Path, root) -> np.ndarray:
    """:func:`resolve_image_path` of every name ``(n,)``, once per distinct name -> ``(n,)`` object."""
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    resolved = np.array([resolve_image_path(u, base_dir, root)[0] for u in unique], dtype=object)
    return resolved[inverse.reshape(-1)]


def stack_header_value(paths: np.ndarray, what: str):
    """Box (``what="box"``, nx) or pixel size from the first existing stack among ``paths``, else None."""
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


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def output_stack_names(image_paths: np.ndarray, out_dir: Path, original: np.ndarray | None) -> np.ndarray:
    """Stack names ``(n,)`` to write in ``out_dir`` so that, read from there, they reach the
    same files as ``image_paths (n,)``: the name the input used (``original (n,)``) where it
    still resolves to the same file, else a path relative to ``out_dir``, else absolute."""
    out_dir = Path(out_dir).resolve()
    result = np.empty(len(image_paths), dtype=object)
    keys = image_paths if original is None else np.array([f"{a}\0{b}" for a, b in zip(original, image_paths)], dtype=object)
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
