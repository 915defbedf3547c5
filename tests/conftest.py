"""Shared fixtures: where the real-format test files live, small deterministic settings."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning
# threads slowed the suite several-fold (measured 10 s vs 100 s for one simulation).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _find_formats() -> Path | None:
    env = os.environ.get("FLEX3D_TESTDATA")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "testdata" / "formats", REPO / "shared" / "testdata" / "formats"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


FORMATS = _find_formats()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def formats_dir() -> Path:
    """``../shared/testdata/formats``: real files written by other programs."""
    if FORMATS is None:
        pytest.skip("../shared/testdata/formats not found (set FLEX3D_TESTDATA)")
    return FORMATS
