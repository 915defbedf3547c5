"""Particle images no job can use: NaN or infinite pixels, or every pixel the same (all zero, say).

Such images come from damaged micrographs, interrupted copies or extraction at the edge of a
micrograph. A non-finite pixel would reach the splat as an index of -2^63 and a constant
image carries no signal, so training, reconstruction and analysis leave them out: the job
names how many and the first few (the image names of the STAR/``.cs`` file), and goes on
with the rest, unless more than a fraction of the images is unusable
(:data:`MAX_UNUSABLE_FRACTION`, the option ``--max-bad-image-fraction``), which points to a
systematic fault rather than a few damaged images.

:func:`scan_images` reads every image once, stack by stack in file order (sequential reads,
the fastest a memory-mapped stack allows) with a progress bar; it also finds, before any
work starts, the stacks that hold fewer images than the metadata name.
:func:`exclude_unusable_images` keeps its result in the job's folder
(:data:`RECORD_NAME`, keyed by the image names and the stacks' sizes), so a resumed job, or
the analysis of a run, does not read the stacks again and leaves out the same rows.

Imports NumPy, ``io.atomic`` and the ``io.particle_set`` container.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_json

__all__ = [
    "MAX_UNUSABLE_FRACTION",
    "RECORD_NAME",
    "UnusableImages",
    "exclude_unusable_images",
    "image_names",
    "scan_images",
]

#: Largest fraction of unusable images a job leaves out before it refuses the input instead.
#: Stacks written by RELION or cryoSPARC hold none, so each one is a fault; a few per cent
#: are what a handful of damaged micrographs give (a few hundred images among 10^4-10^6),
#: and leaving them out costs under 5 % of the signal. Many more mean the stacks themselves are
#: wrong (another data type or byte order, a half-copied project, a wrong file), and a result
#: from the rest would mislead.
MAX_UNUSABLE_FRACTION = 0.05

#: The scan's result in a job's folder (JSON: the rows, image names and reasons, and the key).
RECORD_NAME = "unusable_images.json"

_CHUNK_BYTES = 64 * 2**20  # float32 images per read: 256 at box 256, 4096 at box 64
_SHOW = 3  # images named in a message


@dataclass(frozen=True)
class UnusableImages:
    """The unusable images among ``n_images``: sorted ``rows (m,)`` int64 of the particle set,
    their ``names`` as the metadata file gives them and ``reasons`` (one each)."""

    n_images: int
    rows: np.ndarray
    names: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def count(self) -> int:
        return int(self.rows.size)

    @property
    def fraction(self) -> float:
        return self.count / max(self.n_images, 1)

    def summary(self, source, show: int = _SHOW) -> str:
        """One line: the count of each kind (non-finite, constant) and the first ``show`` images named."""
        kinds = pd.Series([r.split(":")[0] for r in self.reasons], dtype=object).value_counts()
        per_reason = ", ".join(f"{int(c)} {'with ' if r.startswith('NaN') else ''}{r}" for r, c in kinds.items())
        first = "; ".join(f"{n} ({r})" for n, r in zip(self.names[:show], self.reasons[:show]))
        more = f"; ... ({self.count - show} more)" if self.count > show else ""
        return (f"{source}: {self.count} of {self.n_images} images ({100 * self.fraction:.3g} %) are unusable "
                f"({per_reason}): {first}{more}")


def image_names(ps) -> np.ndarray:
    """``(n,)`` each particle's image as its metadata file names it: RELION's ``rlnImageName``
    (``000012@Extract/stack.mrcs``), cryoSPARC's ``blob/path`` with ``blob/idx``."""
    if "rlnImageName" in ps.table.columns:
        return ps.table["rlnImageName"].astype(str).to_numpy(dtype=object)
    stacks = ps.input_stack_names()
    stacks = ps.image_paths if stacks is None else stacks
    return np.array([f"{s} (blob/idx {int(i)})" for s, i in zip(stacks, ps.image_indices)], dtype=object)


def _stack_groups(ps) -> list[tuple[str, np.ndarray]]:
    """``[(stack path, rows (m,) in file order)]`` for every stack: one sort of all particles
    (grouping by comparing every path with every stack would cost ``n * stacks``)."""
    codes, stacks = pd.factorize(np.asarray(ps.image_paths, dtype=object))
    order = np.lexsort((ps.image_indices, codes))  # by stack, then by image within it
    cuts = np.flatnonzero(np.diff(codes[order])) + 1
    return [(str(stacks[codes[rows[0]]]), rows) for rows in np.split(order, cuts) if rows.size]


def _check_lengths(ps, groups, names: np.ndarray) -> None:
    """``ValueError`` naming every stack that holds fewer images than the metadata name (count, first
    few), or images of another box than the metadata say."""
    short = []
    boxes = np.array([-1 if g.box is None else g.box for g in ps.optics])[ps.optics_group]
    for path, rows in groups:
        stack = ps._cache.get(path)
        held = stack.shape[0]
        promised = {int(b) for b in np.unique(boxes[rows])} - {-1}
        if any(tuple(stack.shape[1:]) != (b, b) for b in promised):
            raise ValueError(f"{path}: the stack holds {stack.shape[1]} x {stack.shape[2]} images but the particle "
                             f"metadata says box {sorted(promised)}")
        past = rows[ps.image_indices[rows] >= held]
        if past.size:
            short.append((path, held, int(ps.image_indices[rows].max()) + 1, past))
    if short:
        n_past = sum(p.size for *_, p in short)
        first = "; ".join(f"{path} holds {held} image(s), {names[p[0]]} asks for image {want}"
                          for path, held, want, p in short[:_SHOW])
        more = f"; ... ({len(short) - _SHOW} more stacks)" if len(short) > _SHOW else ""
        raise ValueError(
            f"{ps.source}: {n_past} particle(s) in {len(short)} stack(s) point past the end of their stack "
            f"(stacks shorter than the metadata say; a copy cut short?): {first}{more}"
        )


def _unusable_in_block(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(which (m,) bool, reasons (k,) object)`` for images ``block (m, h, w)``: NaN/Inf or constant."""
    low, high = block.min(axis=(1, 2)), block.max(axis=(1, 2))  # a NaN propagates into both
    finite = np.isfinite(low) & np.isfinite(high)
    which = ~finite | (low == high)
    reasons = [f"constant: every pixel {v:g}" if ok else "NaN or infinite pixels"
               for ok, v in zip(finite[which], low[which])]
    return which, np.array(reasons, dtype=object)


def scan_images(ps, chunk_bytes: int = _CHUNK_BYTES, progress=None) -> UnusableImages:
    """Read every image of ``ps`` once and find the unusable ones (see the module docstring).

    Stacks are read in file order, ``chunk_bytes`` of float32 images at a time. Stacks shorter
    than the metadata say, or of another box than the optics group's, raise ``ValueError`` with
    the count and the first few. ``progress``: a tqdm bar (``None``: only on a terminal), or a
    callable ``progress(images done, images)`` called before the first read and after each one
    (a training run's set-up events).
    """
    from tqdm.auto import tqdm

    report = progress if callable(progress) else None
    if report is not None:
        progress = False
    n = len(ps)
    names = image_names(ps)
    ps.require_images()
    groups = _stack_groups(ps)
    _check_lengths(ps, groups, names)
    bad_rows: list[np.ndarray] = []
    bad_reasons: list[np.ndarray] = []
    done = 0
    if report is not None:
        report(0, n)
    with tqdm(total=n, unit="image", desc="checking images", disable=(not progress) if progress is not None else None,
              leave=False) as bar:
        for path, rows in groups:
            stack = ps._cache.get(path)
            chunk = max(1, chunk_bytes // (4 * stack.shape[1] * stack.shape[2]))
            for s in range(0, rows.size, chunk):
                part = rows[s : s + chunk]
                ii = ps.image_indices[part]
                if ii[-1] - ii[0] + 1 == ii.size:  # a contiguous run of images: one slice
                    block = np.asarray(stack[int(ii[0]) : int(ii[-1]) + 1], dtype=np.float32)
                else:
                    block = np.asarray(stack[ii], dtype=np.float32)  # (m, h, w)
                which, reasons = _unusable_in_block(block)
                if which.any():
                    bad_rows.append(part[which])
                    bad_reasons.append(reasons)
                bar.update(part.size)
                done += part.size
                if report is not None:
                    report(done, n)
    if not bad_rows:
        return UnusableImages(n, np.zeros(0, np.int64), (), ())
    rows = np.concatenate(bad_rows)
    reasons = np.concatenate(bad_reasons)
    order = np.argsort(rows)
    rows = rows[order].astype(np.int64)
    return UnusableImages(n, rows, tuple(names[rows].tolist()), tuple(str(r) for r in reasons[order]))


def _fingerprint(ps, names: np.ndarray) -> str:
    """What the record is valid for: the image names in order and the size of every stack."""
    digest = hashlib.sha256()
    digest.update(str(len(names)).encode())
    digest.update("\n".join(names.tolist()).encode("utf-8", "surrogateescape"))
    for path in sorted(str(p) for p in pd.unique(ps.image_paths)):
        try:
            size = os.path.getsize(path)
        except OSError:
            size = -1
        digest.update(f"\n{Path(path).name}:{size}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _read_record(path: Path, key: str, n: int) -> UnusableImages | None:
    """The record at ``path`` if it is one for these images, else None (absent, stale or damaged)."""
    try:
        doc = json.loads(path.read_text())
        if doc.get("fingerprint") != key or int(doc["n_images"]) != n:
            return None
        rows = np.asarray(doc["rows"], dtype=np.int64).reshape(-1)
        names, reasons = tuple(str(s) for s in doc["names"]), tuple(str(s) for s in doc["reasons"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if len(names) != rows.size or len(reasons) != rows.size or (rows.size and (rows.min() < 0 or rows.max() >= n)):
        return None
    return UnusableImages(n, rows, names, reasons)


def exclude_unusable_images(ps, folder=None, *, max_fraction: float = MAX_UNUSABLE_FRACTION, read_only: bool = False,
                            log=None, progress=None):
    """``(usable particles, UnusableImages)``: ``ps`` without its unusable images.

    ``folder``: where the scan's record lives (:data:`RECORD_NAME`; None: scan, keep nothing);
    a record for the same images is used instead of a scan, else the scan's result is
    written there (unless ``read_only``: an analysis reads its run's record). More than
    ``max_fraction`` of the images unusable raises ``ValueError`` with the count and the
    first few names. Otherwise the line naming them is given to ``log(line)`` and warned
    (``UserWarning``), and the rest returned (``ps`` itself when every image is usable).
    ``progress``: the scan's, as :func:`scan_images` takes it (none without a scan).
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"--max-bad-image-fraction must lie in [0, 1], got {max_fraction:g}")
    names = image_names(ps)
    key = _fingerprint(ps, names)
    record_path = None if folder is None else Path(folder) / RECORD_NAME
    found = _read_record(record_path, key, len(ps)) if record_path is not None and record_path.is_file() else None
    if found is None:
        found = scan_images(ps, progress=progress)
        if record_path is not None and not read_only:
            write_json(record_path, {"fingerprint": key, "n_images": len(ps), "rows": found.rows.tolist(),
                                     "names": list(found.names), "reasons": list(found.reasons)}, indent=None)
    if found.count == 0:
        return ps, found
    line = found.summary(ps.source or "particles")
    if found.count > max_fraction * len(ps) or found.count == len(ps):
        raise ValueError(
            f"{line}; more than --max-bad-image-fraction {max_fraction:g} of the images, which usually means the "
            "stacks themselves are wrong (data type, byte order, an incomplete copy). Check them (flex3d info); "
            "to go on without these images, raise --max-bad-image-fraction"
        )
    line += "; these images are left out"
    if log is not None:
        log(line)
    warnings.warn(line, UserWarning, stacklevel=2)
    return ps.subset(np.setdiff1d(np.arange(len(ps)), found.rows)), found
