"""Fixtures for the reader tests: copies of ``testdata/formats`` that tests may damage.

Imported by the test modules (not a ``conftest.py``: a second module named ``conftest``
would shadow ``tests/conftest.py`` for tests that do ``from conftest import DEVICES``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def fmt(formats_dir) -> Path:
    """The read-only ``testdata/formats`` folder (skips cleanly when absent)."""
    return formats_dir


@pytest.fixture
def copy_formats(formats_dir, tmp_path):
    """``copy_formats("cryodrgn/relion31.star", "cryodrgn/relion31.mrcs")`` -> tmp folder
    holding writable copies under the same relative paths."""

    def _copy(*names: str) -> Path:
        for name in names:
            dst = tmp_path / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(formats_dir / name, dst)
        return tmp_path

    return _copy
