"""Screenshots of the Motion analysis widget in use, from a real napari window.

Run under a display (Xvfb is fine):

    xvfb-run -a python docs/make_motion_screenshots.py [--out docs/images] [--run RUN]

Without ``--run`` it simulates the sample's hinge molecule (600 particles, box 48) and
trains a small run on it; the body, linker and arm of the simulation are painted as
regions 1, 2 and 3 (what a user paints in the Data and mesh widget). Then it opens the
Latent explorer and the Motion analysis widget and writes motion_surface.png,
motion_strain.png, motion_compare.png and motion_subset.png into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import _only, _save, _view3d, _wait  # noqa: E402


def _train(folder: Path, epochs: int) -> tuple[Path, Path]:
    """``(simulation folder, run folder)`` of a small hinge run."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import make_sample
    from napari_flex3d.training.loop import train_run

    sim = make_sample(n_particles=600, box=48, snr=0.3, out_dir=folder / "sim").out_dir
    run = folder / "run"
    config = TrainConfig(particles=str(Path(sim) / "particles.star"), map=str(Path(sim) / "consensus.mrc"),
                         out=str(run), latent_dim=2, hidden=32, layers=3, epochs=epochs, batch=64, latent_grid=7,
                         latent_steps=1, val_fraction=0.1, preview_every=0)
    for _ in train_run(config, run):
        pass
    return Path(sim), run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "images"))
    parser.add_argument("--epochs", type=int, default=12)  # fewer: the arm moves too little to see
    parser.add_argument("--rec-iterations", type=int, default=8)
    parser.add_argument("--folder", default=None, help="where to simulate and train (default: a temporary folder)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="flex3d_motion_"))
    if (folder / "run" / "latents.npy").is_file():  # trained by an earlier call with this --folder
        sim, run_dir = folder / "sim", folder / "run"
    else:
        sim, run_dir = _train(folder, args.epochs)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_flex3d._napari._motion_compare import DIFF_LAYER, LAYOUTS
    from napari_flex3d._napari._motion_moved import STRAIN_LAYER, SURFACE_LAYER, SURFACES
    from napari_flex3d.simulate.oracle import domain_mask

    viewer = napari.Viewer(show=True, title="napari-flex3d")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1500, 950)
    _, ex = viewer.window.add_plugin_dock_widget("napari-flex3d", "Latent explorer")
    ex.open_run(run_dir)
    _, w = viewer.window.add_plugin_dock_widget("napari-flex3d", "Motion analysis")
    assert w.explorer is ex
    box, apix = ex.run.box, ex.run.apix
    regions = np.zeros((box,) * 3, np.uint8)
    for label, domain in ((1, 0), (2, 1), (3, 2)):  # body, linker, arm: as painted by hand
        regions[(domain_mask(sim, domain, box=box, soft_a=0.0) > 0.5) & (regions == 0)] = label
    viewer.add_labels(regions, name="rigid regions", scale=(apix,) * 3, opacity=0.4, visible=False)

    # 1. displacement on the map's surface at +1.5 sd of axis z0, and the region table
    z = ex.movie_latents("axis z0")[-1]
    ex.z = z
    w.surface_kind = SURFACES[0]
    w.colour_surface()
    _wait(app, lambda: w.idle, 600, "the surface")
    w.region_displacement()
    _wait(app, lambda: w.idle, 600, "the region table")
    for layer in viewer.layers:
        layer.visible = layer.name == SURFACE_LAYER
    _view3d(viewer)
    _only(viewer, w)
    w.tabs.setCurrentIndex(0)
    _save(viewer, out / "motion_surface.png", app)

    # 2. strain along axis z0
    ex.traverse_combo.setCurrentText("axis z0")
    ex.n_frames = 9
    w.strain_along_traversal()
    _wait(app, lambda: w.idle, 600, "the strain")
    for layer in viewer.layers:
        layer.visible = layer.name == STRAIN_LAYER
    _view3d(viewer)
    _save(viewer, out / "motion_strain.png", app)

    # 3. the two ends of axis z0 side by side, with their difference
    zs = ex.movie_latents("axis z0")
    w.set_a(zs[0])
    w.set_b(zs[-1])
    w.layout_mode = LAYOUTS[0]
    w.compare()
    _wait(app, lambda: w.idle, 600, "the side-by-side maps")
    for layer in viewer.layers:
        layer.visible = layer.name in ("latent A", "latent B", DIFF_LAYER)
    _view3d(viewer)
    w.tabs.setCurrentIndex(1)
    _save(viewer, out / "motion_compare.png", app)
    for name in ("latent A", "latent B", DIFF_LAYER):  # out of the next view's bounds
        viewer.layers.remove(name)

    # 4. the half maps of the particles on one side of axis z0
    rows = np.flatnonzero(ex.latents[:, 0] > np.median(ex.latents[:, 0]))
    ex.set_selection(rows, "z0 above its median")
    w.iterations = args.rec_iterations
    w.map_selection()
    _wait(app, lambda: w.subset_worker is None, 1800, "the subset's half maps")
    for layer in viewer.layers:
        layer.visible = layer.name == "selection flex map (sharpened)"
    _view3d(viewer)
    w.tabs.setCurrentIndex(2)
    _save(viewer, out / "motion_subset.png", app)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
