"""Settings of the whole process that a command line sets once at its start (no imports of the library).

glibc returns a freed block over its ``mmap`` threshold (32 MB at most by default) to the operating
system and page-faults a fresh one in at the next allocation. The half-map solver and the residual
of ``flex3d analyze`` allocate and free temporaries of that size in every chunk, so a third of
their CPU time went to the kernel: ``flex3d reconstruct`` of 600 particles, 3 iterations, measured
1.6-1.9 M minor page faults and 4.1-5.1 s of system time against 0.16 M and 0.7 s with the blocks
kept, 11.5-12.3 s wall against 15.7-17.2 s, the same peak memory (0.90-0.95 GB), the same maps
(``benchmarks/RESULTS.md``, table malloc; ``benchmarks/malloc.py``). Kept blocks stay in the heap for reuse: a process's
resident memory then falls back more slowly after a peak, which a command line that ends does not
mind and which the napari process is not given (it calls nothing here).
"""

from __future__ import annotations

import ctypes
import os
import sys

KEEP_FREED_BYTES = 1 << 30  # freed blocks up to 1 GiB stay in the heap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """Keep freed blocks up to ``limit`` bytes in this process's heap (glibc ``mallopt``) and in the
    processes it starts (glibc reads ``MALLOC_*_THRESHOLD_`` at their start).
    Returns False where the C library is not glibc (its defaults stay) or where the environment
    says ``FLEX3D_KEEP_FREED_MEMORY=0`` (resident memory then falls back sooner after a peak)."""
    if os.environ.get("FLEX3D_KEEP_FREED_MEMORY", "1") == "0":
        return False
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(limit))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(limit))
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):  # musl or another C library: no mallopt
        return False
