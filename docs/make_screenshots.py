"""Screenshots of every napari-flex3d widget in use, from a real napari window.

Run under a display (Xvfb is fine):

    xvfb-run -a python docs/make_screenshots.py [--out docs/images] [--epochs 4]

It opens the sample data (the simulated flexible molecule), builds a mesh, trains a small
run, explores its latent space and writes one PNG per widget into ``--out``. Nothing is
staged: every picture is the widget doing its job on the sample.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _wait(app, condition, timeout_s: float, what: str) -> None:
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _settle(app, seconds: float = 0.5) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def _save(viewer, path: Path, app, max_kb: int = 300) -> Path:
    """``viewer.screenshot(canvas_only=False)`` as a palette PNG under ``max_kb``."""
    from PIL import Image

    _settle(app)
    rgba = viewer.screenshot(canvas_only=False, flash=False)
    return _write_png(Image.fromarray(np.asarray(rgba)[..., :3]), path, max_kb)


def _write_png(img, path: Path, max_kb: int) -> Path:
    """A PIL RGB image as a palette PNG under ``max_kb`` (fewer colours until it fits)."""
    from PIL import Image

    for colours in (256, 128, 64):
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_kb * 1024:
            break
    print(f"{path}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB")
    return path


def _view3d(viewer) -> None:
    """A 3D view from a little above and to the side, fitted to the visible layers."""
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    camera.angles = (-15, 25, 110)
    camera.zoom *= 1.3


def _only(viewer, keep) -> None:
    """Show only the dock widget ``keep`` (the others stay docked but hidden)."""
    for widget in list(viewer.window.dock_widgets.values()):
        dock = widget.parent()
        if widget is keep:
            dock.show()
            dock.raise_()
        else:
            dock.hide()


def _analysis(ex, app, out: Path, max_kb: int = 300) -> None:
    """The explorer with its Analysis box in use: the Clusters page, the BIC's clusters over the
    density and cluster 0 chosen (``explore_clusters.png``), and the Outliers page with the
    residual line at its 95th percentile, its particles marked on the scatter
    (``explore_analysis.png``)."""
    from PIL import Image

    box = ex.analysis
    box.cluster("auto")
    _wait(app, lambda: box.clustering is not None and box.idle, 300, "the clusters")
    box.show_density = True
    box.outliers.compute_residuals()
    _wait(app, lambda: box.outliers.residual is not None and box.idle, 1800, "the residuals")
    for page, name in ((0, "explore_clusters.png"), (1, "explore_analysis.png")):
        box.tabs.setCurrentIndex(page)
        if page == 0:
            box.choose_cluster(0)
        else:
            box.outliers.residual_threshold = float(np.percentile(box.outliers.residual, 95))
        _wait(app, lambda: box.idle and ex._render.idle, 120, "the selection")
        _settle(app)
        tmp = out / f"{name}.tmp.png"
        ex.grab().save(str(tmp))
        img = Image.open(tmp).convert("RGB")
        tmp.unlink()
        _write_png(img, out / name, max_kb)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "images"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rec-iterations", type=int, default=10)
    parser.add_argument("--run", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_flex3d._napari._data_widget import MAP_LAYER, DataMeshWidget
    from napari_flex3d._napari._train_widget import PREVIEW_PREFIX

    viewer = napari.Viewer(show=True, title="napari-flex3d")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1500, 950)
    viewer.theme = "dark"

    # 1. sample data -> Data and mesh widget with the map and particles; build a mesh
    viewer.open_sample("napari-flex3d", "flexible_molecule")
    data = next(d for d in viewer.window.dock_widgets.values() if isinstance(d, DataMeshWidget))
    data.cell_size_a = 14.0
    data.build_mesh()
    _wait(app, lambda: data.mesh is not None and not data.busy, 120, "the mesh")
    for layer in viewer.layers:
        layer.visible = layer.name in (MAP_LAYER, "mesh")
    viewer.layers[MAP_LAYER].colormap = "gray"
    _view3d(viewer)
    _only(viewer, data)
    _save(viewer, out / "data_mesh.png", app)

    # 2. Train
    _, train = viewer.window.add_plugin_dock_widget("napari-flex3d", "Train")
    run_dir = Path(args.run or tempfile.mkdtemp(prefix="flex3d_run_")) / "run"
    train.set_option(
        out=str(run_dir), device="cpu", epochs=args.epochs, batch=64, hidden=32, layers=3, latent_dim=2,
        latent_grid=7, latent_steps=1, val_fraction=0.1, preview_every=1,
    )
    _only(viewer, train)
    train.start()
    _wait(app, lambda: train.state == "idle", 1800, "training")
    if train.error is not None:
        raise train.error
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(PREVIEW_PREFIX + " z0")
    _view3d(viewer)
    train.tabs.setCurrentIndex(0)
    _save(viewer, out / "train_loss.png", app)
    train.tabs.setCurrentIndex(1)
    _save(viewer, out / "train_fsc.png", app)
    train.tabs.setCurrentIndex(2)
    _save(viewer, out / "train_latents.png", app)

    # 3. Latent explorer: click a point, draw a path
    _, ex = viewer.window.add_plugin_dock_widget("napari-flex3d", "Latent explorer")
    _only(viewer, ex)
    ex.open_run(run_dir)
    ex.preview_box = 32
    for layer in viewer.layers:
        layer.visible = False
    xy = ex._xy
    lo, hi = np.percentile(xy, 10, axis=0), np.percentile(xy, 90, axis=0)
    ex.mode = "path"
    for f in ((0.0, 0.0), (0.5, 1.0), (1.0, 0.3)):
        ex.click(float(lo[0] + f[0] * (hi[0] - lo[0])), float(lo[1] + f[1] * (hi[1] - lo[1])))
    ex.mode = "volume"
    ex.click(float(hi[0]), float(hi[1]))
    _wait(app, lambda: ex.refined and ex._render.idle, 120, "the latent volume")
    _view3d(viewer)
    _save(viewer, out / "explore.png", app)
    _analysis(ex, app, out)

    # 4. Reconstruct: flex and rigid half maps of the run, their FSC, the sharpened flex map
    _, rec = viewer.window.add_plugin_dock_widget("napari-flex3d", "Reconstruct")
    _only(viewer, rec)
    if rec.available:
        rec.run_dir = str(run_dir)
        rec.iterations = args.rec_iterations
        rec.reconstruct()
        _wait(app, lambda: rec.state == "idle", 1800, "the reconstruction")
        if rec.error is not None:
            raise rec.error
        for layer in viewer.layers:
            layer.visible = layer.name == "flex map (sharpened)"
        _view3d(viewer)
    _save(viewer, out / "reconstruct.png", app)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
