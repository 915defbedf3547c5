"""GUI responsiveness: Qt event-loop latency while training runs, and latent click -> volume.

Run under a display (Xvfb is fine):

    xvfb-run -a python benchmarks/gui_latency.py [--box 64] [--epochs 2] [--sample-dir DIR]

1. Event-loop latency: a 10 ms QTimer ticks in the GUI thread while the Train widget runs
   a training in its napari thread worker; latency is how late each tick fires (p50, p99,
   max). Target: p99 < 100 ms.
2. Click -> volume: the Latent explorer's ``click()`` to the volume layer holding the new
   map, for the quick preview (linear kernel, ``--preview-box``) and the refined map
   (cubic kernel, training box). Target: preview < 1 s at box 64. "Painted" is the end of
   the first canvas frame that shows the preview (a frame begun as the map arrives counts;
   software OpenGL rasterises when Qt composes the frame, so its end is taken after the
   paint event, not at vispy's draw event).

Prints one line per figure, then a JSON summary. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _wait(app, condition, timeout_s: float) -> None:
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("timed out")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=64, help="box of the simulated dataset (and of the training)")
    p.add_argument("--particles", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--preview-box", type=int, default=None, help="the explorer's preview box (default: the widget's)")
    p.add_argument("--clicks", type=int, default=5)
    p.add_argument("--sample-dir", default=None, help="reuse a dataset written by make_sample / flex3d simulate")
    p.add_argument("--window", default="1200x800", help="window size; software OpenGL (Xvfb) paints slower when larger")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training (default: torch's)")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_flex3d._napari._data_widget import DataMeshWidget
    from napari_flex3d._napari._explore_widget import VOLUME_LAYER, LatentExplorerWidget
    from napari_flex3d._napari._train_widget import TrainWidget
    from napari_flex3d.simulate.dataset import make_sample

    tmp = Path(tempfile.mkdtemp(prefix="flex3d_bench_"))
    if args.sample_dir:
        folder = Path(args.sample_dir)
    else:
        t0 = time.perf_counter()
        folder = make_sample(n_particles=args.particles, box=args.box, out_dir=tmp / "sample").out_dir
        print(f"simulated {args.particles} particles at box {args.box} in {time.perf_counter() - t0:.1f} s")

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    width, height = (int(v) for v in args.window.split("x"))
    viewer.window._qt_window.resize(width, height)
    draws = [0]  # canvas paints begun, to wait for a quiet canvas
    frames: list[tuple[int, float]] = []  # (maps shown when a paint began, when that frame was done)
    shown_now = [lambda: 0]

    def on_draw(_e):
        draws[0] += 1
        shown = shown_now[0]()
        # vispy's draw event only queues GL commands; llvmpipe rasterises when Qt composes and
        # swaps the frame, so the frame is done when the event loop next runs
        QTimer.singleShot(0, lambda: frames.append((shown, time.perf_counter())))

    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(on_draw, position="first")
    data = DataMeshWidget(viewer)
    data.particles_path = str(folder / "particles.star")
    data.load_particles()
    data.map_path = str(folder / "consensus.mrc")
    data.load_map()
    data.build_mesh()
    _wait(app, lambda: data.mesh is not None and not data.busy, 300)
    print(f"mesh: {data.mesh.n_vertices} vertices, {data.mesh.n_cells} cells")

    # --- 0. what one canvas render costs here (software OpenGL under Xvfb is slow): a yardstick.
    # The consensus map, not noise: iso rays stop at the first voxel over the threshold, so a
    # noise volume (hit within a few steps) renders far faster than a map (mostly empty space).
    from napari_flex3d._napari._layer_data import default_iso_threshold
    from napari_flex3d.io.mrc import read_map

    consensus = read_map(folder / "consensus.mrc")
    cmap = consensus.data.astype(np.float32)
    probe = viewer.add_image(cmap, rendering="iso", iso_threshold=default_iso_threshold(cmap), name="render probe",
                             scale=(consensus.apix,) * 3)  # in Å like the latent volume: as many pixels on screen
    for layer in viewer.layers:
        layer.visible = layer is probe
    viewer.dims.ndisplay = 3
    render_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        viewer.screenshot(canvas_only=True, flash=False)
        render_s.append(time.perf_counter() - t0)
    viewer.layers.remove(probe)
    for layer in viewer.layers:
        layer.visible = True
    print(f"one canvas render of the {cmap.shape[0]}^3 consensus map, iso ({args.window}): median {np.median(render_s) * 1000:.0f} ms "
          f"(the floor under painting a map of this box; a smaller preview box rasterises faster)")

    # --- 1. event-loop latency during training
    train = TrainWidget(viewer)
    run_dir = tmp / "run"
    train.set_option(out=str(run_dir), device="cpu", epochs=args.epochs, batch=64, hidden=32, layers=3,
                     latent_grid=7, latent_steps=1, val_fraction=0.1, preview_every=1)
    if args.threads:
        train.set_option(threads=args.threads)
    late_ms: list[float] = []
    tick_t: list[float] = []
    interval_ms = 10
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        late_ms.append(max(0.0, (now - last[0]) * 1000 - interval_ms))
        tick_t.append(now)
        last[0] = now

    event_t: list[tuple[float, str]] = []
    on_event = train._on_event

    def timed_event(ev):
        t = time.perf_counter()
        on_event(ev)
        event_t.append((t, type(ev).__name__, time.perf_counter() - t))

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(tick)
    t0 = time.perf_counter()
    train._on_event = timed_event
    train.start()
    last[0] = time.perf_counter()
    timer.start()
    _wait(app, lambda: train.state == "idle", 3600)
    timer.stop()
    train_s = time.perf_counter() - t0
    if train.error is not None:
        raise train.error
    lat = np.asarray(late_ms[1:])
    steps = sum(type(e).__name__ == "StepLoss" for e in train.events)
    print(
        f"event-loop latency during training ({train_s:.0f} s, {steps} steps, {len(lat)} ticks): "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, max {lat.max():.1f} ms, "
        f"{int((lat > 100).sum())} ticks over 100 ms (target p99 < 100 ms)"
    )
    # what the GUI thread was doing in the longest stalls: the events handled then, and their cost
    for i in np.argsort(lat)[::-1][:3]:
        end = tick_t[i + 1]
        start = end - (lat[i] + interval_ms) / 1000
        during = [f"{name} ({cost * 1000:.0f} ms)" for t, name, cost in event_t if start - 0.05 <= t <= end]
        print(f"  stall of {lat[i]:.0f} ms at {start - t0:.1f} s: events handled {during or 'none'}")

    # --- 2. click -> volume
    ex = LatentExplorerWidget(viewer)
    ex.open_run(run_dir)
    for layer in viewer.layers:  # exploring shows the latent volume alone
        layer.visible = False
    if args.preview_box is not None:
        ex.preview_box = args.preview_box
    shown_now[0] = lambda: ex.volumes_shown
    ex.mode = "volume"
    rng = np.random.default_rng(0)
    lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
    preview_s, drawn_s, refined_s = [], [], []
    def settle(quiet_s: float = 1.0) -> None:
        """Let pending paints finish: wait until the canvas has not drawn for ``quiet_s``."""
        seen, since = draws[0], time.perf_counter()
        while time.perf_counter() - since < quiet_s:
            app.processEvents()
            time.sleep(0.005)
            if draws[0] != seen:
                seen, since = draws[0], time.perf_counter()

    for _ in range(args.clicks):
        x, y = lo + rng.random(2) * (hi - lo + 1e-3)
        settle()
        shown = ex.volumes_shown
        t0 = time.perf_counter()
        ex.click(float(x), float(y))
        _wait(app, lambda: ex.volumes_shown > shown, 120)
        preview_s.append(time.perf_counter() - t0)  # the preview map is in the layer
        _wait(app, lambda: any(n > shown for n, _ in frames), 120)
        drawn_s.append(next(t for n, t in frames if n > shown) - t0)  # ... and the canvas has painted it
        _wait(app, lambda: ex.refined and ex._render.idle, 120)
        refined_s.append(time.perf_counter() - t0)
    layer = viewer.layers[VOLUME_LAYER]
    print(
        f"click -> preview volume (box {min(ex.preview_box, ex.run.box)}, linear): median "
        f"{np.median(preview_s) * 1000:.0f} ms, max {np.max(preview_s) * 1000:.0f} ms (target < 1 s); "
        f"painted on the canvas: median {np.median(drawn_s) * 1000:.0f} ms; "
        f"-> refined (box {ex.run.box}, cubic): median {np.median(refined_s) * 1000:.0f} ms; layer {layer.data.shape}"
    )
    summary = {
        "box": ex.run.box,
        "canvas_render_ms": float(np.median(render_s) * 1000),
        "train_seconds": train_s,
        "train_steps": steps,
        "event_loop_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                   "max": float(lat.max()), "ticks": int(len(lat))},
        "click_to_preview_ms": {"median": float(np.median(preview_s) * 1000), "max": float(np.max(preview_s) * 1000),
                                "box": int(min(ex.preview_box, ex.run.box))},
        "click_to_preview_painted_ms": {"median": float(np.median(drawn_s) * 1000),
                                        "max": float(np.max(drawn_s) * 1000)},
        "click_to_refined_ms": {"median": float(np.median(refined_s) * 1000), "max": float(np.max(refined_s) * 1000)},
    }
    print(json.dumps(summary, indent=2))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
