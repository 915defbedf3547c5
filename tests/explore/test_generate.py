"""Convected maps from a run folder: a flow that is a pure translation moves the map by exactly that."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_flex3d.config import TrainConfig, to_dict
from napari_flex3d.explore.generate import axis_latents, generate_axis_series, generate_volume
from napari_flex3d.io.checkpoint import save_checkpoint
from napari_flex3d.io.mrc import read_map
from napari_flex3d.model.run import checkpoint_path

BOX, APIX = 24, 4.0
SHIFT_PER_Z_A = torch.tensor([3.0, -2.0, 1.0])  # xyz Å per unit of z


def _centre_of_mass_xyz_a(vol: np.ndarray, apix: float) -> np.ndarray:
    n = vol.shape[0]
    c = (np.arange(n) - n // 2) * apix
    w = np.clip(vol, 0, None)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.array([(w * x).sum(), (w * y).sum(), (w * z).sum()]) / w.sum()


@pytest.fixture(scope="module")
def translating_run(tmp_path_factory):
    """A run folder whose flow generator is ``f(z) = z * SHIFT_PER_Z_A`` at every vertex."""
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel

    out = tmp_path_factory.mktemp("translating_run")
    c = (np.arange(BOX) - BOX // 2) * APIX
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    blob = np.exp(-((x - 4) ** 2 + y**2 + (z + 4) ** 2) / (2 * 8.0**2)).astype(np.float32)
    mask = np.zeros((BOX,) * 3, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    mesh = build_grid_mesh(mask, APIX, cell_size_a=16.0)
    config = TrainConfig(latent_dim=1, hidden=2, layers=1, kernel="cubic", epochs=1, band_end=1.0, band_start=1.0)
    model = FlexModel.from_map(blob, APIX, mesh, mask, latent_dim=1, hidden=2, layers=1, kernel="cubic")
    with torch.no_grad():  # hidden = relu(z + 10), relu(10); out = SHIFT * (h0 - h1) = SHIFT * z
        lin = model.flow.hidden[0]
        lin.weight.copy_(torch.tensor([[1.0], [0.0]]))
        lin.bias.copy_(torch.tensor([10.0, 10.0]))
        v = model.flow.n_vertices
        w = torch.zeros(v, 3, 2)
        w[:, :, 0] = SHIFT_PER_Z_A
        w[:, :, 1] = -SHIFT_PER_Z_A
        model.flow.out.weight.copy_(w.reshape(3 * v, 2))
    latents = torch.linspace(-1, 1, 11)[:, None] * 2.0 + 0.5  # mean 0.5, std ~1.33
    save_checkpoint(checkpoint_path(out), {
        "config_json": json.dumps(to_dict(config)), "epoch": 1, "box": BOX, "apix": APIX,
        "model": model.state_dict(), "latents": latents,
    })
    return out


def test_volume_at_z_is_the_map_translated_by_the_flow(translating_run):
    v0, apix = generate_volume(translating_run, [0.0])
    v2, _ = generate_volume(translating_run, [2.0])
    assert v0.shape == (BOX,) * 3 and apix == APIX
    moved = _centre_of_mass_xyz_a(v2, apix) - _centre_of_mass_xyz_a(v0, apix)
    np.testing.assert_allclose(moved, 2.0 * SHIFT_PER_Z_A.numpy(), atol=0.3)
    assert v2.sum() == pytest.approx(v0.sum(), rel=1e-3)  # convection conserves mass
    with pytest.raises(ValueError, match="K=1"):
        generate_volume(translating_run, [0.0, 1.0])


def test_box_resizes_and_keeps_the_physical_size(translating_run):
    v, apix = generate_volume(translating_run, [1.0], box=32)
    assert v.shape == (32,) * 3 and apix == pytest.approx(APIX * BOX / 32)
    v_native, _ = generate_volume(translating_run, [1.0])
    np.testing.assert_allclose(_centre_of_mass_xyz_a(v, apix), _centre_of_mass_xyz_a(v_native, APIX), atol=0.3)


def test_axis_series_files_and_chimerax_script(translating_run, tmp_path):
    result = generate_axis_series(translating_run, axis=0, frames=5, out_dir=tmp_path)
    assert [p.name for p in result["frames"]] == [f"axis0_{i:03d}.mrc" for i in range(5)]
    script = result["script"].read_text()
    assert "open axis0_*.mrc vseries true" in script and "vseries play #1" in script
    zs = result["latents"][:, 0]
    latents = torch.linspace(-1, 1, 11)[:, None] * 2.0 + 0.5
    np.testing.assert_allclose(zs, axis_latents(latents, 0, 5, 1.5)[:, 0].numpy())
    assert zs[2] == pytest.approx(0.5) and zs[-1] - zs[0] == pytest.approx(3.0 * float(latents.std()), rel=1e-5)
    middle = read_map(result["frames"][2])
    expected, _ = generate_volume(translating_run, [0.5])
    np.testing.assert_allclose(middle.data, expected, atol=1e-5)
    with pytest.raises(ValueError, match="axis 1"):
        generate_axis_series(translating_run, axis=1, frames=5, out_dir=tmp_path)


def test_series_movie_plays_forward_then_back(translating_run, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v2 as imageio

    result = generate_axis_series(translating_run, axis=0, frames=5, out_dir=tmp_path, movie=True)
    reader = imageio.get_reader(result["movie"])
    assert reader.count_frames() == 5 + 3  # forward, then back without repeating the ends
    first, last_forward = reader.get_data(0), reader.get_data(4)
    assert first.shape[0] % 16 == 0 and not np.array_equal(first, last_forward)  # the map moved
