"""``flex3d``'s process settings: freed blocks kept in glibc's heap and returned on request (``napari_flex3d._process``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

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


@GLIBC
def test_releasing_returns_the_freed_holes_that_glibc_keeps():
    """The napari process's case (glibc's own thresholds): blocks freed between live ones stay
    resident until released; a ``flex3d`` command, which keeps them on purpose, does not release."""
    code = textwrap.dedent("""
        import json, os
        from napari_flex3d import _process

        def rss():
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        blocks = [bytearray(b"x" * 65536) for _ in range(3000)]  # 197 MB of 64 KB blocks, every page touched
        del blocks[::2]  # half of them freed: holes between live blocks, not at the heap's top
        held = rss()
        released = _process.release_freed_memory()
        after = rss()
        _process.keep_freed_memory()
        print(json.dumps({"held": held, "released": released, "after": after,
                          "while_keeping": _process.release_freed_memory()}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FLEX3D_KEEP_FREED_MEMORY"}
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout)
    assert out["released"] is True and out["while_keeping"] is False
    assert out["held"] - out["after"] > 60 << 20  # most of the 98 MB freed no longer resident
