"""The small pure helpers behind the widgets: latent views, forms, montages.

(Latent paths and polygon subsets are ``explore``'s: tests/explore/test_paths.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_pca_view_maps_plot_points_back_onto_the_latents():
    from napari_flex3d._napari._explore_plot import latent_view

    rng = np.random.default_rng(1)
    # K = 3 latents that vary in a tilted plane: PCA must find that plane
    basis = np.linalg.qr(rng.normal(size=(3, 3)))[0][:, :2].T  # (2, 3)
    coeffs = rng.normal(size=(500, 2)) * [3.0, 1.0]
    z = coeffs @ basis + [0.5, -1.0, 2.0]
    xy, to_latent, from_latent = latent_view(z, (0, 1), use_pca=True)
    assert xy.shape == (500, 2)
    back = np.stack([to_latent(x, y, z[i]) for i, (x, y) in enumerate(xy[:20])])
    np.testing.assert_allclose(back, z[:20], atol=1e-4)  # points in the plane come back exactly
    assert abs(np.corrcoef(xy[:, 0], coeffs[:, 0])[0, 1]) > 0.99  # PC1 is the widest direction
    # axis view: x and y are the chosen axes, the rest is kept from the base latent
    xy2, to2, _ = latent_view(z, (2, 0), use_pca=False)
    np.testing.assert_allclose(xy2, z[:, [2, 0]], rtol=1e-6)
    np.testing.assert_allclose(to2(7.0, 8.0, z[0]), [8.0, z[0, 1], 7.0], rtol=1e-6)


def test_config_form_round_trips_a_frozen_dataclass():
    from dataclasses import dataclass, field

    from napari_flex3d._napari._train_widget import config_form, form_values

    @dataclass(frozen=True)
    class Cfg:
        epochs: int = field(default=3, metadata={"help": "passes"})
        lr: float = 1e-3
        kernel: str = field(default="cubic", metadata={"choices": ("cubic", "linear")})
        box: int | None = None
        name: str = "x"

    form = config_form(Cfg)
    assert form_values(Cfg, form) == {"epochs": 3, "lr": 1e-3, "kernel": "cubic", "box": None, "name": "x"}
    form["box"].value = "64"
    form["kernel"].value = "linear"
    form["epochs"].value = 7
    assert Cfg(**form_values(Cfg, form)) == Cfg(epochs=7, kernel="linear", box=64)
    assert form["epochs"].tooltip == "passes"


def test_montage_tiles_and_normalises_each_image():
    from napari_flex3d._napari._data_widget import montage

    imgs = np.stack([np.full((4, 4), v, np.float32) + np.eye(4, dtype=np.float32) * v for v in (1.0, 10.0, 100.0)])
    m = montage(imgs, columns=2)
    assert m.shape == (8, 8)
    tiles = [m[:4, :4], m[:4, 4:], m[4:, :4]]
    for t in tiles:
        assert abs(t.mean()) < 1e-5 and t.std() == pytest.approx(1.0, rel=1e-3)
    assert np.all(m[4:, 4:] == 0)


def test_previews_are_block_means_at_the_preview_box_with_one_grey_scale():
    from napari_flex3d._napari._train_preview import prepare_previews

    rng = np.random.default_rng(3)
    vols = rng.normal(size=(2, 2, 50, 50, 50)).astype(np.float32)  # (K, sigmas, n, n, n), n not a multiple
    p = prepare_previews(4, (-1.0, 1.0), vols, 1.5, box=16)
    assert p.volumes.shape == (2, 2, 12, 12, 12) and p.apix == 1.5 * 4  # factor ceil(50 / 16) = 4, 48 voxels kept
    # oracle: a plain loop over one 4^3 block
    i, j, a, b, c = 1, 0, 3, 7, 11
    block = vols[i, j, 4 * a : 4 * a + 4, 4 * b : 4 * b + 4, 4 * c : 4 * c + 4]
    assert p.volumes[i, j, a, b, c] == pytest.approx(float(block.mean()), rel=1e-5)
    assert p.thumbnails.shape == (2, 2, 12, 12) and p.thumbnails.dtype == np.uint8
    # one grey scale for the four maps: the brightest projection pixel of all reaches 255 once
    assert p.thumbnails.max() == 255 and p.thumbnails.min() == 0
    assert prepare_previews(0, (1.0,), vols[:, :1, :32, :32, :32], 2.0, box=32).volumes.shape == (2, 1, 32, 32, 32)
