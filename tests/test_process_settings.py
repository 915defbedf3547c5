"""``flex3d``'s process settings: freed blocks kept in glibc's heap (``napari_flex3d._process``)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
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
