"""Settings of the whole process that a command line sets once at its start, and the return of freed
memory that a long loop asks for now and then (no imports of the library).

glibc returns a freed block over its ``mmap`` threshold (32 MB at most by default) to the operating
system and page-faults a fresh one in at the next allocation. The half-map solver and the residual
of ``flex3d analyze`` allocate and free temporaries of that size in every chunk, so a third of
their CPU time went to the kernel: ``flex3d reconstruct`` of 600 particles, 3 iterations, measured
1.6-1.9 M minor page faults and 4.1-5.1 s of system time against 0.16 M and 0.7 s with the blocks
kept, 11.5-12.3 s wall against 15.7-17.2 s, the same peak memory (0.90-0.95 GB), the same maps
(``benchmarks/RESULTS.md``, table malloc; ``benchmarks/malloc.py``). Kept blocks stay in the heap for reuse: a process's
resident memory then falls back more slowly after a peak, which a command line that ends does not
mind and which the napari process is not given (it calls nothing here). There glibc's own thresholds hold
freed blocks in its arenas all the same, and :func:`release_freed_memory` returns them: the
training loop calls it at every epoch's end, so a long run in the napari process does not hold
its largest epoch's freed blocks (``benchmarks/RESULTS.md``, table gui_latency, gl12).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

KEEP_FREED_BYTES = 1 << 30  # freed blocks up to 1 GiB stay in the heap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_keeping = False  # keep_freed_memory is in effect in this process


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """Keep freed blocks up to ``limit`` bytes in this process's heap (glibc ``mallopt``) and in the
    processes it starts (glibc reads ``MALLOC_*_THRESHOLD_`` at their start).
    Returns False where the C library is not glibc (its defaults stay) or where the environment
    says ``FLEX3D_KEEP_FREED_MEMORY=0`` (resident memory then falls back sooner after a peak)."""
    if os.environ.get("FLEX3D_KEEP_FREED_MEMORY", "1") == "0":
        return False
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(limit))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(limit))
    libc = _glibc()
    if libc is None:
        return False
    global _keeping
    _keeping = bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    return _keeping


class _Mallinfo2(ctypes.Structure):  # glibc >= 2.33 (malloc.h): every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc():
    """glibc itself, or None (another platform or C library: musl has neither mallopt's thresholds
    nor malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 -- musl has no malloc_trim
        return libc
    except (OSError, AttributeError):
        return None


def heap_bytes() -> tuple[int, int] | None:
    """``(in use, free)``: the bytes of glibc's heap that live blocks hold (every arena and the
    ``mmap``-ed blocks) and the freed bytes it holds for reuse (``mallinfo2``), or None where
    the C library is not glibc 2.33 or newer. Resident memory is at most their sum plus what
    does not come from ``malloc`` (the interpreter's code, the libraries, Python's own arenas
    are ``malloc``-ed on Linux)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd, info.fordblks


def release_freed_memory() -> bool:
    """Return the heap's freed pages to the operating system now (glibc ``malloc_trim(0)``, every
    arena): the process's resident memory falls back to what its live blocks hold. A loop calls
    it once in a while (the training loop at every epoch's end), not in every chunk: a released
    page is faulted in again at its next use. Where :func:`keep_freed_memory` is in effect (a
    ``flex3d`` command) it does nothing: the command keeps its freed blocks for the next epoch
    (``flex3d train``, 12 epochs: 2.1-2.4 M minor page faults and 5.1-5.7 s of system time with
    the release against 0.3-0.6 M and 1.0-2.0 s without; ``benchmarks/RESULTS.md``, gl12c).
    Returns whether memory was returned."""
    libc = None if _keeping else _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
