"""``flex3d``'s process settings: freed blocks kept in glibc's heap and returned on request (``napari_flex3d._process``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

GLIBC = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")


@GLIBC
def test_the_command_line_keeps_freed_blocks_and_its_children_inherit_it(monkeypatch):
    from napari_flex3d._process import KEEP_FREED_BYTES, keep_freed_memory

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert keep_freed_memory() is True  # glibc accepted both thresholds
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['MALLOC_MMAP_THRESHOLD_'], os.environ['MALLOC_TRIM_THRESHOLD_'])"],
        capture_output=True, text=True, check=True,
    )
    assert child.stdout.split() == [str(KEEP_FREED_BYTES)] * 2


def test_flex3d_sets_them_before_running_a_command(monkeypatch, capsys):
    from napari_flex3d import _process, cli

    calls = []
    monkeypatch.setattr(_process, "keep_freed_memory", lambda *a, **k: calls.append(1) or True)
    assert cli.main(["info", "/nonexistent/particles.star"]) != 0  # a command ran (and said what is missing)
    assert "nonexistent" in capsys.readouterr().err
    assert calls == [1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@GLIBC
def test_releasing_returns_a_freed_buffer_that_the_heap_kept(monkeypatch):
    from napari_flex3d._process import heap_bytes, keep_freed_memory, release_freed_memory

    monkeypatch.delenv("FLEX3D_KEEP_FREED_MEMORY", raising=False)
    assert keep_freed_memory() is True  # as flex3d: a freed 96 MB block stays in the heap, resident
    size = 96 << 20
    buffer = np.ones(size // 8)  # every page touched
    in_use = heap_bytes()[0]
    del buffer
    assert in_use - heap_bytes()[0] > size - (1 << 20)  # freed: no longer in a live block ...
    kept = _rss_bytes()
    assert release_freed_memory() is True
    assert kept - _rss_bytes() > size // 2  # ... and now no longer resident either
