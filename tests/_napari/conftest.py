"""Fixtures of the GUI tests: the simulated sample dataset, made once per session."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")


def _existing_sample(folder: Path):
    """A dataset folder written earlier by ``make_sample`` (``FLEX3D_SAMPLE_DIR``), to save its time."""
    import mrcfile

    with mrcfile.open(folder / "consensus.mrc", header_only=True) as m:
        apix, box = float(m.voxel_size.x), int(m.header.nx)
    with mrcfile.mmap(folder / "particles.mrcs", mode="r") as m:
        n = int(m.data.shape[0])
    return SimpleNamespace(
        out_dir=folder, consensus=folder / "consensus.mrc", particles_star=folder / "particles.star",
        particles_mrcs=folder / "particles.mrcs", apix=apix, box=box, n_particles=n,
    )


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """The napari sample data (400 particles, box 48), written to a temporary folder."""
    from napari_flex3d._napari._library import MissingPiece, piece

    if os.environ.get("FLEX3D_SAMPLE_DIR"):
        return _existing_sample(Path(os.environ["FLEX3D_SAMPLE_DIR"]))

    try:
        make_sample = piece("simulate.dataset", "make_sample")
    except MissingPiece as exc:
        pytest.skip(str(exc))
    return make_sample(out_dir=tmp_path_factory.mktemp("sample"))


def wait_until(qtbot, condition, timeout_ms: int = 30_000) -> None:
    qtbot.waitUntil(condition, timeout=timeout_ms)
