"""A lock file that keeps two jobs out of one output folder.

``<folder>/.flex3d.lock`` holds the holder's PID, host, command and start time (JSON). It is
created with ``O_CREAT | O_EXCL``, so of two jobs started together exactly one wins. A lock
left by a job that died (same host, PID no longer running) is taken over with a warning; a
lock held by a live process, or by another host (whose processes cannot be checked from
here), is refused with a message naming the holder and the file to delete if that job is
gone. The lock is removed when the job ends, however it ends (a SIGKILL leaves it behind,
and the next job takes it over).

Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import warnings
from pathlib import Path

__all__ = ["LOCK_NAME", "folder_lock", "read_lock"]

LOCK_NAME = ".flex3d.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_lock(folder) -> dict | None:
    """The holder recorded in ``folder``'s lock file (``pid``, ``host``, ``command``, ``time``), or None."""
    path = Path(folder) / LOCK_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half written: treated as held by an unknown job
    return doc if isinstance(doc, dict) else {}


def _try_create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(holder))
    return True


@contextlib.contextmanager
def folder_lock(folder, command: str = "flex3d"):
    """Hold ``folder`` (created if needed) for the duration of a ``with`` block.

    Raises ``ValueError`` naming the holder's PID and host when a running job holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    host = socket.gethostname()
    holder = {"pid": os.getpid(), "host": host, "command": command,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):  # create, or take over a stale lock and create again
        if _try_create(path, holder):
            break
        other = read_lock(folder)
        if other is None:  # removed between our two calls: try again
            continue
        pid, other_host = other.get("pid"), other.get("host")
        if isinstance(pid, int) and other_host == host and not _pid_alive(pid):
            warnings.warn(f"{path}: taking over the lock of job {pid} on {host}, which is no longer running",
                          stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        who = f"process {pid} on {other_host}" if pid else "an unknown job"
        since = f" since {other['time']}" if other.get("time") else ""
        raise ValueError(
            f"{folder}: a running job holds this folder ({who}{since}, {other.get('command', '?')}); "
            f"wait for it, choose another output folder, or delete {path} if that job is gone"
        )
    else:
        raise OSError(errno.EAGAIN, "could not take the lock", str(path))
    try:
        yield holder
    finally:
        if (read_lock(folder) or {}).get("pid") == holder["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
