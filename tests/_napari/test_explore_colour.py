"""The latent scatter coloured by any per-particle column: colours follow the values (points and
density bins, against SciPy's binned statistics), a colour map changes the rendered pixels, and
a latent axis made to track defocus is flagged next to the choice."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_continuous_colours_are_monotone_clipped_and_grey_for_missing():
    from napari_flex3d._napari._colouring import LEVELS, colouring_for

    v = np.array([0.0, 1.0, 2.0, 3.0, np.nan, 100.0])
    c = colouring_for("defocus_a", v)
    c.lo, c.hi = 0.0, 3.0
    lev = c.point_levels()
    assert list(lev[:4]) == sorted(lev[:4]) and lev[0] == 0 and lev[3] == LEVELS - 1
    assert lev[5] == LEVELS - 1  # above the range: clipped to the top colour
    assert lev[4] == len(c.palette) - 1  # NaN: the grey
    np.testing.assert_array_equal(c.palette[lev[4]], [128, 128, 128, 90])


def test_integer_columns_are_categories_and_angles_wrap():
    from napari_flex3d._napari._colouring import colouring_for

    half = colouring_for("half_set", np.array([1, 2, 2, 1, 1]))
    assert half.kind == "categorical" and list(half.categories) == [1, 2]
    assert list(half.point_levels()) == [0, 1, 1, 0, 0]
    rot = colouring_for("rot_deg", np.array([-179.0, 179.0, 0.0]))
    assert rot.kind == "cyclic"
    lev = rot.point_levels()
    assert abs(int(lev[0]) - int(lev[1])) >= 250  # the two ends of the map: the cyclic map's colours meet there
    # the circular mean of -179 and 179 is 180 (the map's end colour), not 0 (its middle)
    bins = rot.bin_rgb(np.array([0, 0, 1]), 2)
    np.testing.assert_array_equal(bins[0], rot.palette[rot._levels_of(np.array([180.0]))[0]])
    np.testing.assert_array_equal(bins[1], rot.palette[rot._levels_of(np.array([0.0]))[0]])


def test_density_bins_take_the_mean_value_of_their_points():
    from scipy.stats import binned_statistic_2d

    from napari_flex3d._napari._colouring import colouring_for
    from napari_flex3d._napari._plots import coloured_density_image

    rng = np.random.default_rng(0)
    xy = rng.normal(size=(20_000, 2)).astype(np.float32)
    v = xy[:, 0] * 2.0 + rng.normal(size=len(xy))
    c = colouring_for("value", v)
    bins = 32
    img, (x0, x1, y0, y1) = coloured_density_image(xy, c, bins=bins)
    # the oracle: SciPy's binned mean over the same edges, mapped through the same colour map
    mean, _, _, _ = binned_statistic_2d(xy[:, 0], xy[:, 1], np.clip(v, c.lo, c.hi), "mean", bins=bins,
                                        range=[[x0, x1], [y0, y1]])
    filled = np.isfinite(mean)
    expected = c.palette[c._levels_of(mean[filled])]
    np.testing.assert_array_equal(img[filled][:, :3], expected[:, :3])
    assert (img[~filled][:, 3] == 0).all() and (img[filled][:, 3] >= 70).all()


def _scatter_pixels(ex) -> np.ndarray:
    from qtpy.QtGui import QImage

    image = ex.plot.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    rgb = np.frombuffer(image.constBits().asstring(h * image.bytesPerLine()), np.uint8).reshape(h, -1)[:, : 3 * w]
    return rgb.reshape(h, w, 3).astype(np.int32)


def test_colour_by_defocus_changes_the_rendered_points_and_flags_the_axis(make_napari_viewer, qtbot, artefact_run,
                                                                          tmp_path):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    viewer = make_napari_viewer()
    ex = LatentExplorerWidget(viewer)
    ex.resize(420, 900)
    ex.show()
    ex.plot.setFixedSize(380, 280)  # the same pixels before and after
    ex.open_run(artefact_run.run_dir)
    qtbot.waitUntil(lambda: ex.particle_table is not None, timeout=60_000)
    assert {"defocus_a", "rot_deg", "tilt_deg", "psi_deg", "viewing direction", "optics_group", "half_set",
            "z2"} <= set(ex.colour_choices)
    assert any(c.startswith("file:") for c in ex.colour_choices)  # the STAR's own numeric columns ride along
    assert "z0 tracks defocus_a" in ex.artefact_label.text()
    assert "z1 tracks" not in ex.artefact_label.text()

    qtbot.wait(200)
    before = _scatter_pixels(ex)
    ex.colour_by = "defocus_a"
    assert "tracked by z0" in ex.colour_flag.text()
    qtbot.wait(200)
    after = _scatter_pixels(ex)
    ex.grab().save(str(tmp_path / "colour_by_defocus.png"))
    changed = np.abs(after - before).sum(axis=2) > 60
    assert changed.sum() > 200, f"only {changed.sum()} pixels changed"
    # one colour before; after, the points show the colour map's range (many distinct colours)
    colours_after = {tuple(p) for p in after[changed][::3]}
    assert len(colours_after) > 20
    # each point's brush is the map's colour of its defocus: the highest defocus the top colour
    c = ex.colouring
    assert c.kind == "continuous" and ex.colour_range == (c.lo, c.hi)
    top = int(np.argmax(artefact_run.defocus_a))
    at = ex._xy[top]
    drawn = [g for g in ex.plot._groups if len(g.data) and np.isclose(
        np.column_stack([g.data["x"], g.data["y"]]), at).all(1).any()]
    assert len(drawn) == 1
    np.testing.assert_array_equal(drawn[0].opts["brush"].color().getRgb()[:3], c.palette[-2][:3])
    # a narrower range re-colours; a categorical column shows a legend instead of the bar
    ex.colour_range = (float(np.median(artefact_run.defocus_a)), c.hi)
    assert ex.colouring.lo == pytest.approx(float(np.median(artefact_run.defocus_a)))
    ex.colour_by = "half_set"
    assert ex.colouring.kind == "categorical" and "■" in ex.colour_legend.text() or "&#9632;" in ex.colour_legend.text()
    assert not ex.colour_range_row.isEnabled()
    ex.colour_by = "viewing direction"
    assert ex.colouring.kind == "rgb"
    ex.colour_by = ""
    assert ex.colouring is None
    qtbot.waitUntil(lambda: ex.table_worker is None, timeout=10_000)


def test_density_view_is_coloured_per_bin(make_napari_viewer, qtbot):
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d._napari._plots import DENSITY_ABOVE

    ex = LatentExplorerWidget(make_napari_viewer())
    rng = np.random.default_rng(1)
    z = rng.normal(size=(DENSITY_ABOVE + 10_000, 2)).astype(np.float32)
    ex.set_latents(z)
    assert ex.plot.mode == "density" and not ex.plot.colour_density.isVisible()
    ex.add_colour_columns({"left to right": z[:, 0].astype(np.float64)}, choose="left to right")
    assert ex.plot.colour_density.isVisible() and not ex.plot.density.isVisible()
    img = ex.plot.colour_density.image  # (bins_x, bins_y, 4): the colour follows x, not y
    filled = img[..., 3] > 0
    xs = np.nonzero(filled)[0]
    left, right = img[filled][xs < np.percentile(xs, 20)], img[filled][xs > np.percentile(xs, 80)]
    lut = ex.colouring.palette[:-1, :3].astype(int)
    rank = lambda px: np.argmin(((lut[None] - px[:, None, :3].astype(int)) ** 2).sum(-1), axis=1).mean()  # noqa: E731
    assert rank(left) < 60 and rank(right) > 190
    with pytest.raises(ValueError, match="values for"):
        ex.add_colour_columns({"short": np.zeros(5)})


def test_residual_from_the_analysis_folder_or_computed_in_a_worker(make_napari_viewer, qtbot, artefact_run, tmp_path):
    import shutil

    import pandas as pd

    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d.analyze.residuals import particle_residuals
    from napari_flex3d.analyze.run_table import saved_residual
    from napari_flex3d.io.particles import read_particles

    run = tmp_path / "run"
    shutil.copytree(artefact_run.run_dir, run)
    z = artefact_run.latents
    # no analysis folder: the residual is computed on demand, in a worker, as flex3d analyze does
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.open_run(run)
    qtbot.waitUntil(lambda: ex.run_table is not None, timeout=60_000)
    assert "residual" not in ex.colour_choices and ex.residual_btn.isEnabled()
    ex.compute_residual()
    qtbot.waitUntil(lambda: ex.residual_worker is None, timeout=120_000)
    assert ex.colour_by == "residual"
    oracle = particle_residuals(run, read_particles(artefact_run.particles_star), z, box=20)
    np.testing.assert_allclose(ex.colour_columns["residual"], oracle, rtol=1e-6)
    assert np.all(oracle > 0.5) and np.all(np.isfinite(oracle))

    # an analysis/particles.csv for these latents is read back; one for other latents is not
    (run / "analysis").mkdir()
    table = pd.DataFrame({"z1": z[:, 0], "z2": z[:, 1], "z3": z[:, 2], "residual": np.arange(len(z)) / 10.0})
    table.to_csv(run / "analysis" / "particles.csv", index_label="row")
    residual, source = saved_residual(run, z)
    np.testing.assert_allclose(residual, np.arange(len(z)) / 10.0)
    assert source.endswith("particles.csv")
    assert saved_residual(run, z + 1.0) == (None, "")
    ex.open_run(run)
    qtbot.waitUntil(lambda: ex.run_table is not None, timeout=60_000)
    assert "residual" in ex.colour_choices and not ex.residual_btn.isEnabled()
    assert "residual from" in ex.colour_status.text()
