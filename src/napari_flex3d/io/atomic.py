"""The one way napari-flex3d writes a file: whole or not at all, and a clear message when the disk is full.

Every writer in the package goes through :func:`atomic_path` (a test greps ``src/`` for any
other file writing). The bytes go to a temporary file in the destination's folder (so the
rename never crosses file systems), which is flushed and ``fsync``-ed, then
``os.replace``-d over the destination, and the folder itself is ``fsync``-ed so the rename
survives a power cut. A process killed at any moment leaves the previous file or the new
one, never half a file; the temporary is named ``.NAME.tmpPID.SUFFIX`` (hidden, ending in the
suffix that libraries such as ``imageio`` choose their format by) and is
removed when a write fails (or, left by a killed process, by the next write of that file).

A write that fails for want of space (``ENOSPC``, ``EFBIG``: a full disk, a quota, a file
size limit) raises :class:`DiskFullError` naming the file, the free space and what to do;
the destination keeps its previous content. :func:`check_output_space` is the check a long
job makes before it starts: the folder is writable and holds the estimated bytes.

Imports only the standard library at import time (numpy, torch, mrcfile where a helper
writes their formats).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "DiskFullError", "atomic_path", "atomic_write", "write_bytes", "write_text", "write_json", "save_npy", "save_npz",
    "torch_save", "open_log", "check_output_space", "free_bytes", "format_bytes", "write_config_json",
]

#: errno values that mean "no room for these bytes" (a full disk, a quota, RLIMIT_FSIZE).
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}

#: Called as ``hook(tmp, path)`` after the temporary file is complete and fsync-ed, just
#: before it replaces ``path``. ``None`` in normal use; tests set it to kill the process
#: there and show that the previous file survives.
before_replace: Callable[[Path, Path], None] | None = None


class DiskFullError(OSError):
    """No space left for a file (``ENOSPC``/``EFBIG``); its previous version is intact.

    Its text is the message alone (it names the file and folder itself)."""

    def __str__(self) -> str:
        return str(self.strerror)


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human figure (``1.5 GB``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _existing_folder(path: Path) -> Path:
    """The nearest folder at or above ``path`` that exists (``path`` may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path if path.is_dir() else path.parent


def free_bytes(folder) -> int:
    """Bytes free to this user in the file system holding ``folder`` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing_folder(Path(folder))).free


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover (Windows cannot open a folder)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover (some file systems refuse fsync on a folder)
        pass
    finally:
        os.close(fd)


def _out_of_space(exc: OSError) -> bool:
    """``ENOSPC``/``EFBIG``, or NumPy's ``tofile`` short write (an ``OSError`` without errno:
    "N requested and M written"), which only a full disk or a size limit causes."""
    return exc.errno in _NO_SPACE or (exc.errno is None and "requested and" in str(exc))


def _disk_full(exc: OSError, path: Path) -> DiskFullError:
    try:
        free = format_bytes(free_bytes(path.parent))
    except OSError:  # pragma: no cover
        free = "unknown"
    reason = {errno.EFBIG: "file size limit reached", None: "short write (disk full or file size limit)"}.get(
        exc.errno, "no space left on the device"
    )
    return DiskFullError(
        exc.errno or errno.ENOSPC,
        f"{reason} while writing {path} ({free} free in {path.parent}); the previous {path.name} is intact. "
        "Free some space and run again (training and reconstruction: add --resume)",
        str(path),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by writers that were killed before their rename (whole
    but unused files, as big as ``path``): removed once their process is gone."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        pid = old.name[len(path.name) + 5 :].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                old.unlink()


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """``with atomic_path(p) as tmp:`` write the file at ``tmp``; on leaving, it replaces ``p``.

    ``tmp`` is in ``p``'s folder (created) and ends with ``p``'s suffixes. If the body raises,
    ``tmp`` is removed and ``p`` keeps its previous content; ``ENOSPC``/``EFBIG`` become
    :class:`DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # whoever wrote tmp closed it: flush its pages to the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace(tmp, path)
        os.replace(tmp, path)
    except OSError as exc:
        if _out_of_space(exc) and not isinstance(exc, DiskFullError):
            raise _disk_full(exc, path) from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write(path, write: Callable) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then put it in place (:func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
    return path


def write_bytes(path, data: bytes) -> Path:
    """``data`` to ``path``, atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, doc, **dumps) -> Path:
    """``json.dumps(doc, **dumps)`` to ``path``, atomically (``indent=2`` unless given)."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(doc, **dumps))


def save_npy(path, array) -> Path:
    """One array as ``.npy`` (no pickles), atomically; the name is kept as given."""
    import numpy as np

    return atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def save_npz(path, **arrays) -> Path:
    """Arrays as an uncompressed ``.npz``, atomically; the name is kept as given."""
    import numpy as np

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def torch_save(path, obj) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def write_config_json(path, config, cli_argv: list[str] | None = None, **extra) -> Path:
    """``config.json``: :func:`napari_flex3d.config.config_document` written atomically."""
    from ..config import config_document

    return write_json(path, config_document(config, cli_argv, **extra), default=str)


#: The file each job started from a widget writes into its output folder: the same job as a shell command.
COMMAND_FILE = "flex3d_command.sh"


def write_command(path, argv: list[str], what: str) -> Path:
    """A runnable ``sh`` script at ``path`` holding the command line ``argv`` (quoted for the
    shell), with a comment saying it is the command equivalent to ``what``."""
    import shlex

    from .. import __version__

    text = (f"#!/bin/sh\n# {what}: the equivalent flex3d command (napari-flex3d {__version__}).\n"
            f"# Run it from any folder; the paths are absolute.\n{shlex.join(argv)}\n")
    path = write_text(path, text)
    path.chmod(0o755)
    return path


def open_log(path):
    """A text log opened for appending, line-buffered: the one file written in place.

    A log only grows, so a kill can tear at most its last line, never what came before;
    rewriting it whole for every line would cost as much as the run's output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", buffering=1, encoding="utf-8")


def check_output_space(folder, needed_bytes: float, what: str) -> None:
    """Refuse a job before it starts when ``folder`` cannot be written or lacks ``needed_bytes``.

    Creates ``folder`` if needed and writes and removes a probe file there. Raises
    ``PermissionError``/``OSError`` naming the folder, or :class:`DiskFullError` with the
    bytes needed and free (``what``: the job's outputs, for the message).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".flex3d-write-test.{os.getpid()}"
        with open(probe, "wb"):  # the probe holds nothing: only whether we may create files here
            pass
        probe.unlink()
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _disk_full(exc, folder / "(probe)") from exc
        raise type(exc)(exc.errno, f"output folder {folder} is not writable: {exc.strerror}", str(folder)) from exc
    free = free_bytes(folder)
    if needed_bytes > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"{folder}: {what} need about {format_bytes(needed_bytes)} but only {format_bytes(free)} is free there; "
            "free some space or choose another output folder",
            str(folder),
        )
