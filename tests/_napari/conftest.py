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


def _simulator_hash() -> str:
    """A hash of the simulator's source: a cached sample is reused only while it is unchanged."""
    import hashlib

    import napari_flex3d.simulate as sim

    h = hashlib.sha256()
    for f in sorted(Path(sim.__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def sample(request, tmp_path_factory):
    """The napari sample data (400 particles, box 48), as ``simulate.dataset.make_sample`` writes it.

    Kept in pytest's cache folder while the simulator's source is unchanged (making it
    takes about a minute); ``FLEX3D_SAMPLE_DIR`` points at a folder written earlier instead.
    """
    from napari_flex3d.simulate.dataset import make_sample  # a rename fails here, it never skips

    if os.environ.get("FLEX3D_SAMPLE_DIR"):
        return _existing_sample(Path(os.environ["FLEX3D_SAMPLE_DIR"]))
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    base = Path(cache.mkdir("napari_flex3d_sample")) if cache is not None else tmp_path_factory.mktemp("sample")
    folder = base / _simulator_hash()
    if (folder / "done").is_file():
        return _existing_sample(folder)
    result = make_sample(out_dir=folder)
    (folder / "done").write_text("make_sample finished\n")
    return result


def wait_until(qtbot, condition, timeout_ms: int = 30_000) -> None:
    qtbot.waitUntil(condition, timeout=timeout_ms)



@pytest.fixture
def load_sample_into(qtbot, sample):
    """``load_sample_into(viewer)``: a Data and mesh widget on ``viewer`` with the sample's
    particles and map loaded and a mesh of 24 Å cells built."""

    def load(viewer):
        from napari_flex3d._napari._data_widget import DataMeshWidget

        data = DataMeshWidget(viewer)
        data.particles_path = str(sample.particles_star)
        data.load_particles()
        data.map_path = str(sample.consensus)
        data.load_map()
        data.cell_size_a = 24.0
        data.build_mesh()
        qtbot.waitUntil(lambda: data.mesh is not None and not data.busy, timeout=60_000)
        return data

    return load


@pytest.fixture(scope="session")
def artefact_run(tmp_path_factory):
    """A K=3 run folder (last checkpoint only, a randomly initialised flow) on 240 simulated
    particles, whose latent z0 is made to track defocus (an artefact), z1 and z2 noise.

    Returns ``SimpleNamespace(run_dir, particles_star, latents (n, 3), defocus_a (n,), box)``.
    """
    import json

    import numpy as np
    import torch

    from napari_flex3d.config import TrainConfig, to_dict
    from napari_flex3d.io.checkpoint import save_checkpoint
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.model.run import checkpoint_path
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training.setup import estimate_spectra

    box, apix, k = 20, 8.0, 3
    base = tmp_path_factory.mktemp("artefact_run")
    sim = simulate_dataset(base / "data", n_particles=240, box=box, apix=apix, snr=0.3, motion="hinge", seed=1)
    ps = read_particles(sim.particles_star)
    defocus = 0.5 * (np.asarray(ps.defocus_u_a) + np.asarray(ps.defocus_v_a))
    rng = np.random.default_rng(3)
    z0 = (defocus - defocus.mean()) / defocus.std() + 0.3 * rng.normal(size=len(ps))
    latents = np.column_stack([z0, rng.normal(size=len(ps)), 0.5 * rng.normal(size=len(ps))]).astype(np.float32)
    torch.manual_seed(0)
    zyx = np.stack(np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij"), axis=-1) * apix  # (n, n, n, 3) Å
    density = sum(np.exp(-((zyx - c) ** 2).sum(-1) / (2 * 14.0**2)) for c in ([0, 0, -24], [0, 12, 24]))
    mask = density > 0.05
    mesh = build_grid_mesh(mask, apix, cell_size_a=40.0)
    model = FlexModel.from_map(density.astype(np.float32), apix, mesh, mask, latent_dim=k, hidden=8, layers=2,
                               init_std_a=3.0)
    config = TrainConfig(particles=str(sim.particles_star), map=str(sim.consensus), latent_dim=k, hidden=8, layers=2,
                         epochs=1, band_start=1.0, band_end=1.0)
    run_dir = base / "run"
    spectra = estimate_spectra(ps, np.arange(len(ps)), box, "cpu")  # (groups, shells): the residual's whitening
    save_checkpoint(checkpoint_path(run_dir), {"config_json": json.dumps(to_dict(config)), "epoch": 1, "box": box,
                                               "apix": apix, "model": model.state_dict(), "spectra": spectra,
                                               "latents": torch.from_numpy(latents)})
    return SimpleNamespace(run_dir=run_dir, particles_star=sim.particles_star, latents=latents, defocus_a=defocus,
                           box=box)
