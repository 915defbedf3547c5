"""The latents in 3D: three axes or three principal axes in a viewer of their own, coloured as
the scatter; a box region and picked points become the explorer's selection; PCA in 2D names
the share of the variance."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_box_edges_are_the_twelve_edges_of_the_box():
    from napari_flex3d._napari._latent3d import box_edges

    e = box_edges(np.zeros(3), np.array([1.0, 2.0, 3.0]))
    ends = np.concatenate([e[:, 0], e[:, 0] + e[:, 1]])
    assert e.shape == (12, 2, 3)
    corners = {tuple(p) for p in ends}
    assert corners == {(x, y, z) for x in (0, 1) for y in (0, 2) for z in (0, 3)}
    assert sorted(np.abs(e[:, 1]).sum(1)) == [1.0] * 4 + [2.0] * 4 + [3.0] * 4


def test_3d_view_box_and_picked_points_become_the_selection(make_napari_viewer, qtbot, tmp_path):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._latent3d import LAYER, latent_coords_3d

    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 4)).astype(np.float32) * np.array([1.0, 2.0, 0.5, 3.0], np.float32)
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.set_latents(z)
    assert ex.view3d_btn.isEnabled()
    ex.use_pca = True  # the 2D scatter in principal axes, labelled with their share of the variance
    label = ex.plot.getPlotItem().getAxis("bottom").labelText
    assert label.startswith("PC1 (") and "% of the variance" in label
    ex.use_pca = False

    viewer3d = make_napari_viewer(show=True)  # drawn, so its screenshot is the picture
    view = ex.open_3d_view(viewer3d)
    assert viewer3d.dims.ndisplay == 3 and len(viewer3d.layers[LAYER].data) == len(z)
    view.axes = (3, 1, 0)
    np.testing.assert_array_equal(view.coords, z[:, [3, 1, 0]].astype(np.float64))
    np.testing.assert_array_equal(viewer3d.layers[LAYER].data, z[:, [0, 1, 3]])  # napari's (z, y, x) order

    # a box region: exactly the particles with all three coordinates inside, oracle by hand
    lo, hi = np.array([-1.0, -2.0, -0.5]), np.array([3.0, 1.0, 0.8])
    view.box = (lo, hi)
    inside = np.flatnonzero((z[:, 3] >= -1) & (z[:, 3] <= 3) & (z[:, 1] >= -2) & (z[:, 1] <= 1) & (z[:, 0] >= -0.5)
                            & (z[:, 0] <= 0.8))
    got = []
    ex.selection_changed.connect(got.append)
    view.select_box()
    np.testing.assert_array_equal(ex.selection, inside)
    assert got and "by 3D view" in ex.status_label.text()
    assert len(viewer3d.layers["selected"].data) == len(inside)  # drawn in red in the 3D view
    assert f"{len(inside):,} of 3,000" in view.info_label.text()

    # points picked with napari's own select tool
    viewer3d.layers[LAYER].selected_data = {5, 17, 2999}
    view.select_picked()
    np.testing.assert_array_equal(ex.selection, [5, 17, 2999])

    # the 3D points follow the scatter's colouring; PCA gives three principal axes
    ex.add_colour_columns({"first": z[:, 0].astype(np.float64)}, choose="first")
    face = viewer3d.layers[LAYER].face_color
    np.testing.assert_allclose(face[:, :3], ex.colouring.point_rgba()[:, :3] / 255.0, atol=1e-6)
    assert np.ptp(face[:, 0]) > 0.5
    view.use_pca = True
    coords, names = latent_coords_3d(z, (0, 1, 2), True)
    np.testing.assert_allclose(np.abs(view.coords), np.abs(coords))
    assert names[0].startswith("PC1") and view.coords[:, 0].var() > view.coords[:, 2].var()

    image = viewer3d.screenshot(canvas_only=True, flash=False)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "latents_3d.png")
    background = image[0, 0, :3].astype(int)
    assert (np.abs(image[..., :3].astype(int) - background).sum(-1) > 60).sum() > 500  # points were drawn


def test_3d_view_needs_three_axes(make_napari_viewer):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._latent3d import open_latent_3d

    ex = LatentExplorerWidget(make_napari_viewer())
    ex.set_latents(np.random.default_rng(0).normal(size=(50, 2)))
    assert not ex.view3d_btn.isEnabled()
    with pytest.raises(ValueError, match="K >= 3"):
        open_latent_3d(ex, make_napari_viewer())


def test_3d_view_draws_a_subset_of_many_particles_but_selects_among_all(make_napari_viewer, monkeypatch):
    from napari_flex3d._napari import _latent3d
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    monkeypatch.setattr(_latent3d, "MAX_SHOWN", 500)
    z = np.random.default_rng(4).normal(size=(5000, 3)).astype(np.float32)
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.set_latents(z)
    view = ex.open_3d_view(make_napari_viewer())
    assert len(view.viewer.layers[_latent3d.LAYER].data) == 500 == len(view.shown)
    view.box = (np.zeros(3), np.full(3, 10.0))
    np.testing.assert_array_equal(view.select_box(), np.flatnonzero((z >= 0).all(1)))  # all 5,000 count
    view.viewer.layers[_latent3d.LAYER].selected_data = {0, 499}
    np.testing.assert_array_equal(view.select_picked(), view.shown[[0, 499]])  # drawn rows -> particle indices
    np.testing.assert_array_equal(view.viewer.layers[_latent3d.LAYER].data[1], z[view.shown[1], ::-1])
