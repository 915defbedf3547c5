"""The headless library must never pull in Qt or napari (only _napari/ may; docs/architecture.md)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import napari_flex3d

FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "pyqtgraph", "vispy")


def _headless_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(napari_flex3d.__path__, prefix="napari_flex3d."):
        if "._napari" in info.name:
            continue
        names.append(info.name)
    return sorted(names)


def test_every_headless_module_imports_without_qt():
    modules = _headless_modules()
    assert "napari_flex3d.conventions" in modules
    code = (
        "import importlib, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"headless modules imported GUI packages: {out.stdout.strip()}"


def test_the_check_catches_a_qt_import():
    """The probe itself works: importing qtpy shows up."""
    code = f"import qtpy, sys; print(','.join(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "qtpy" in out.stdout
