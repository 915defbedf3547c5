"""Screenshots of the Latent explorer's colouring, comparison and 3D view (docs/walkthrough.md).

Run under a display (Xvfb is fine):

    xvfb-run -a python docs/make_explorer_screenshots.py [--out docs/images]

It simulates 1,500 hinge particles (box 20) and writes a run folder whose latents are made
to show what docs/analysis.md teaches to recognise: ``z0`` tracks defocus (a made
artefact), ``z1`` is the true hinge coordinate with noise, ``z2`` noise. A second file
stands in for another tool: a STAR with the true hinge coordinate (plus noise) as
``rlnDynaLatent1`` and noise as ``rlnDynaLatent2``, rows shuffled. The widgets then do
their job on these files; the pictures are what they drew.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import _wait  # noqa: E402


def _png(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb[..., :3])).quantize(colors=255).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    return path


def _grab(widget) -> np.ndarray:
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    buf = np.frombuffer(image.constBits().asstring(h * image.bytesPerLine()), np.uint8)
    return buf.reshape(h, -1)[:, : 3 * w].reshape(h, w, 3)


def make_run(folder: Path, n: int = 1500):
    """The simulated particles, a run folder with the latents described above, and the other tool's STAR."""
    import starfile
    import torch

    from napari_flex3d.config import TrainConfig, to_dict
    from napari_flex3d.io.checkpoint import save_checkpoint
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.model.run import checkpoint_path
    from napari_flex3d.simulate.dataset import simulate_dataset

    box, apix = 20, 8.0
    sim = simulate_dataset(folder / "data", n_particles=n, box=box, apix=apix, snr=0.3, motion="hinge", seed=4)
    ps = read_particles(sim.particles_star)
    rng = np.random.default_rng(0)

    def unit(x):
        return (x - x.mean()) / x.std()

    defocus = 0.5 * (np.asarray(ps.defocus_u_a) + np.asarray(ps.defocus_v_a))
    hinge = np.load(sim.truth_dir / "coords.npy").reshape(n, -1)[:, 0]
    latents = np.column_stack([unit(defocus) + 0.35 * rng.normal(size=n), unit(hinge) + 0.3 * rng.normal(size=n),
                               0.6 * rng.normal(size=n)]).astype(np.float32)
    zyx = np.stack(np.meshgrid(*(np.arange(box) - box // 2,) * 3, indexing="ij"), axis=-1) * apix
    density = sum(np.exp(-((zyx - c) ** 2).sum(-1) / (2 * 14.0**2)) for c in ([0, 0, -24], [0, 12, 24]))
    mask = density > 0.05
    torch.manual_seed(0)
    model = FlexModel.from_map(density.astype(np.float32), apix, build_grid_mesh(mask, apix, cell_size_a=40.0), mask,
                               latent_dim=3, hidden=8, layers=2, init_std_a=3.0)
    config = TrainConfig(particles=str(sim.particles_star), map=str(sim.consensus), latent_dim=3, hidden=8, layers=2,
                         epochs=1, band_start=1.0, band_end=1.0)
    run_dir = folder / "run"
    save_checkpoint(checkpoint_path(run_dir), {"config_json": json.dumps(to_dict(config)), "epoch": 1, "box": box,
                                               "apix": apix, "model": model.state_dict(),
                                               "latents": torch.from_numpy(latents)})
    data = starfile.read(sim.particles_star, always_dict=True)
    block = data["particles"].copy()
    block["rlnDynaLatent1"] = np.round(unit(hinge) + 0.2 * rng.normal(size=n), 4)
    block["rlnDynaLatent2"] = np.round(rng.normal(size=n), 4)
    data["particles"] = block.iloc[rng.permutation(n)].reset_index(drop=True)
    other = folder / "dynamight.star"
    starfile.write(data, other)
    return run_dir, other


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    import napari

    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, other = make_run(Path(tmp))
        viewer = napari.Viewer(show=False)
        app = napari.qt.get_qapp()
        ex = LatentExplorerWidget(viewer)
        ex.resize(460, 1060)
        ex.show()
        ex.open_run(run_dir)
        _wait(app, lambda: ex.run_table is not None, 120, "the particle table")
        ex.colour_by = "defocus_a"
        _wait(app, lambda: ex.idle, 120, "the explorer's workers")
        app.processEvents()
        ex.resize(460, ex.sizeHint().height())
        app.processEvents()
        _png(_grab(ex), args.out / "explore_colour.png")

        ex.load_comparison(f"{other}::rlnDynaLatent")
        _wait(app, lambda: ex.compare_worker is None, 120, "the comparison")
        ex.axes = (1, 2)
        app.processEvents()
        ex.resize(460, ex.sizeHint().height())
        app.processEvents()
        _png(_grab(ex), args.out / "explore_compare.png")

        ex.axes = (0, 1)
        ex.colour_by = "defocus_a"
        viewer3d = napari.Viewer(title="napari-flex3d: latents in 3D")
        view = ex.open_3d_view(viewer3d)
        viewer3d.window.resize(1300, 760)
        lo, hi = view.box
        view.box = (np.array([0.5, lo[1], lo[2]]), hi)  # the high-defocus end of z0
        view.select_box()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        _png(viewer3d.screenshot(canvas_only=False, flash=False), args.out / "latents_3d.png")
        viewer3d.close()
        viewer.close()


if __name__ == "__main__":
    main()
