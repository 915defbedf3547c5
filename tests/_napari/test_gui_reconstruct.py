"""GUI: the Reconstruct widget runs the half-map solver of a tiny run and shows its FSC and maps."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_reconstruct_widget_solves_half_maps_of_a_tiny_run(make_napari_viewer, qtbot, sample, tmp_path):
    from napari_flex3d._napari._reconstruct_widget import ReconstructWidget
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.loop import train_run

    run = tmp_path / "run"
    cfg = TrainConfig(particles=str(sample.particles_star), map=str(sample.consensus), out=str(run), epochs=1,
                      batch=32, max_particles=64, hidden=16, layers=2, latent_grid=3, latent_steps=1, threads=1,
                      device="cpu", preview_every=0)
    for _ in train_run(cfg, run):
        pass
    w = ReconstructWidget(make_napari_viewer())
    assert w.run_btn.isEnabled()
    w.run_dir = str(run)
    w.iterations = 1
    w.rigid = True
    w.reconstruct()
    assert w.state == "running" and w.stop_btn.isEnabled()
    qtbot.waitUntil(lambda: w.state == "idle", timeout=180_000)
    assert w.error is None, w.error
    assert set(w.curves) >= {"flex", "rigid"}
    freq, curve = w.curves["flex"]
    assert curve[0] == pytest.approx(1.0, abs=1e-3) and np.all(np.abs(curve) <= 1.0 + 1e-6)
    assert "flex map (sharpened)" in w.viewer.layers
    assert "Å at 0.143" in w.status_label.text()
    # independent half flows need the full particle set: refused before any work starts
    w.run_b_dir = str(run)
    w.particles_path = ""
    with pytest.raises(ValueError, match="full particle set"):
        w._inputs()
    w.reconstruct()
    assert w.state == "idle" and w.run_btn.isEnabled()
