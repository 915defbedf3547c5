"""GUI: the explorer's exports are the CLI's: a series along a latent axis from the widget and
from ``flex3d generate --axis`` (``api.generate_series``) hold the same latents, maps and movie grey levels."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

def test_gui_and_cli_axis_series_are_the_same_maps_and_movie_frames(make_napari_viewer, qtbot, artefact_run,
                                                                     tmp_path):
    from napari_flex3d import api
    from napari_flex3d._napari._explore_widget import LatentExplorerWidget
    from napari_flex3d.explore.series import projection_images, to_uint8
    from napari_flex3d.io.mrc import read_map

    frames = 5
    ex = LatentExplorerWidget(make_napari_viewer())
    ex.open_run(artefact_run.run_dir)
    ex.n_frames = frames
    ex.export_series(tmp_path / "gui", along="axis z1")
    qtbot.waitUntil(lambda: ex.worker is None and ex.series_written is not None, timeout=60_000)
    cli = api.generate_series(artefact_run.run_dir, axis=1, frames=frames, out_dir=tmp_path / "cli")

    # the frames' latents: mean +- 1.5 sample standard deviations in both
    np.testing.assert_array_equal(ex.movie_latents("axis z1"), cli["latents"])
    gui_maps = [read_map(p) for p in ex.series_written[0]]
    cli_maps = [read_map(p) for p in cli["frames"]]
    assert len(gui_maps) == len(cli_maps) == frames
    for g, c in zip(gui_maps, cli_maps):
        assert g.apix == pytest.approx(c.apix)
        np.testing.assert_array_equal(g.data, c.data)
    volumes = np.stack([m.data for m in cli_maps])
    assert np.abs(volumes[-1] - volumes[0]).max() > 1e-3 * volumes.max()  # the flow moves the map

    # the movie along the same axis at the training box: the CLI's projections on the CLI's grey scale
    ex.export_movie(tmp_path / "axis.gif", along="axis z1", box=artefact_run.box)
    qtbot.waitUntil(lambda: ex.worker is None and ex.frames_written == frames, timeout=60_000)
    np.testing.assert_array_equal(ex.movie_images, to_uint8(projection_images(volumes)))
