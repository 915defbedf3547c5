"""GUI responsiveness: event-loop stalls while training, reconstructing and exporting a movie; click -> volume.

Run under a display (Xvfb with Mesa's software OpenGL is the hard case):

    xvfb-run -a python benchmarks/gui_latency.py [--box 64] [--epochs 2] [--sample-dir DIR]
    xvfb-run -a python benchmarks/gui_latency.py --epochs 20 --memory   # item 8: does a long run grow?

1. Event-loop stalls (``_napari._stalls.StallMonitor``, the code the GUI test uses): a
   10 ms timer ticks in the GUI thread; each tick's lateness is a sample. Printed per phase
   as max / p99 / count of ticks over 50 ms, for: a training run with the live preview on
   (the Train widget's defaults, ``preview_every`` 1; its set-up, from Start to the run's
   first event, also apart), a half-map reconstruction (the
   Reconstruct widget), a movie export (the Latent explorer's ``export_movie`` along an
   axis), analysing (the explorer's actions that run in workers: a volume series along an
   axis, a lasso selection of particles), the explorer's opening of the run (its latents
   plotted, its surface layer added where a 3D frame is slow) and the explorer's clicks (each
   a map shown, then refined: the phase where a 3D canvas repaints). Target: max < 250 ms, p99 < 50 ms. For
   the three longest stalls of each phase it prints the event handlers run and the canvas
   paints done in them, and where the workers were when a watch thread could not run either
   (a worker holding the GIL): where the time went.
2. ``--memory``: resident memory (RSS) and the number of napari layers after each epoch,
   with the explorer in use (a click on the latent plot after each epoch). Target: RSS
   after the last epoch within 10 % of after epoch 2; layers bounded. Beside RSS, what it
   holds: glibc's heap in live blocks and in freed ones (``mallinfo2``; freed blocks whose
   pages were returned still count there) and the torch tensors alive; and what the
   training loop's release of freed memory at each epoch's end costs its thread
   (``--no-release``: without it, as before).
3. Click -> volume (``--clicks``, 0 to skip): the explorer's ``click()`` to the layer
   holding the new map (preview box, linear kernel), to the first canvas frame that shows
   it, and to the refined map (training box, the run's kernel; where the automatic refine
   is off, a slow 3D canvas, after the paints settled and the Refine button pressed).

Prints one line per figure, then a JSON summary. Timings depend on the machine's load.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import parser, rss_bytes


def _wait(app, condition, timeout_s: float) -> None:
    t0 = time.perf_counter()
    while not condition():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("timed out")


def _settle(app, timeline, quiet_s: float = 1.0) -> None:
    """Let pending paints finish: wait until the canvas has not drawn for ``quiet_s``."""
    seen, since = timeline.draws, time.perf_counter()
    while time.perf_counter() - since < quiet_s:
        app.processEvents()
        time.sleep(0.005)
        if timeline.draws != seen:
            seen, since = timeline.draws, time.perf_counter()


class Timeline:
    """Canvas frames ``(start, end)`` and handled events ``(start, name, seconds)``, to explain stalls."""

    def __init__(self, app, canvas):
        from qtpy.QtCore import QTimer

        self.frames: list[tuple[float, float, int]] = []  # (paint begun, frame done, maps shown then)
        self.events: list[tuple[float, str, float]] = []
        self.draws = 0
        self.shown_now = lambda: 0
        self.gil: GilWatch | None = None  # where the workers were in stalls the GUI thread did not cause

        def on_draw(_e):
            self.draws += 1
            t, shown = time.perf_counter(), self.shown_now()
            # vispy's draw event only queues GL commands; llvmpipe rasterises when Qt composes and
            # swaps the frame, so the frame is done when the event loop next runs
            QTimer.singleShot(0, lambda: self.frames.append((t, time.perf_counter(), shown)))

        canvas.events.draw.connect(on_draw, position="first")
        gc_start = [0.0]

        def on_gc(phase, info):  # a full collection stops every thread that wants the GIL
            if phase == "start":
                gc_start[0] = time.perf_counter()
            elif info.get("generation") == 2:
                self.events.append((gc_start[0], "gc of generation 2", time.perf_counter() - gc_start[0]))

        import gc

        gc.callbacks.append(on_gc)

    def wrap(self, obj, attr: str, label: str) -> None:
        """Time each call of ``obj.attr`` (a slot) as an event named ``label``."""
        inner = getattr(obj, attr)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.events.append((t, label if label != "*" else type(a[0]).__name__, time.perf_counter() - t))

        setattr(obj, attr, timed)

    def explain(self, start: float, length_ms: float) -> str:
        end = start + length_ms / 1000 + 0.01
        paint = sum(min(e, end) - max(s, start) for s, e, _ in self.frames if s < end and e > start)
        handled = [f"{n} ({c * 1000:.0f} ms)" for t, n, c in self.events if start - 0.05 <= t <= end]
        held = self.gil.explain(start, end) if self.gil is not None else ""
        return (f"canvas paints {paint * 1000:.0f} ms; handlers: {', '.join(handled) or 'none'}"
                + (f"; workers then: {held}" if held else ""))


class GilWatch:
    """A Python thread that wakes every ``interval_ms``; when it wakes late, the GUI thread could not
    have run either (no GIL, or no core): it keeps, for that moment, where every other thread is
    (the innermost frames in napari_flex3d and the innermost frame), to explain stalls in which
    the GUI thread itself did nothing (no paint, no handler)."""

    def __init__(self, interval_ms: float = 5.0, late_ms: float = 40.0):
        import threading

        self.interval_ms, self.late_ms = interval_ms, late_ms
        self.gui_last = None  # () -> when the GUI thread last ticked (the stall monitor's clock)
        self.seen: list[tuple[float, float, str]] = []  # (woke at, late ms, where the other threads were)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gil-watch", daemon=True)
        self._thread.start()

    @staticmethod
    def _stacks(skip: int) -> dict:
        """``{thread id: [(file name, line, function), ...] innermost last}`` of every thread but ``skip``.

        Read in one go with no I/O (no line lookup, which could let other threads run) and every
        frame reference dropped before returning: a frame held past its function's end would keep
        its locals alive and free them later in this thread (a QPainter after the paint device it
        paints on: "Cannot destroy paint device that is being painted", then a crash).
        """
        out, frame = {}, None
        frames = sys._current_frames()
        try:
            for ident, frame in frames.items():
                if ident == skip:
                    continue
                stack = []
                while frame is not None:
                    code = frame.f_code
                    stack.append((code.co_filename, frame.f_lineno, code.co_name))
                    frame = frame.f_back
                out[ident] = stack[::-1]
        finally:
            del frames, frame
        return out

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        names = {}
        last = time.perf_counter()
        main = threading.main_thread().ident
        while not self._stop.wait(self.interval_ms / 1000):
            now = time.perf_counter()
            late, last = (now - last) * 1000 - self.interval_ms, now
            gui_behind = (now - self.gui_last()) * 1000 if self.gui_last is not None else 0.0
            if late < self.late_ms and gui_behind < 2 * self.late_ms:
                continue
            if len(names) != threading.active_count():
                names = {t.ident: t.name for t in threading.enumerate()}

            def line(entry) -> str:
                return f"{Path(entry[0]).name}:{entry[1]} {entry[2]}"

            where = []
            for ident, stack in self._stacks(skip=me).items():
                if ident == main:  # the GUI thread itself busy (the watch ran on time): in what
                    if late < self.late_ms:
                        where.append("GUI thread: " + " > ".join(line(e) for e in stack[-4:]))
                    continue
                own = [line(e) for e in stack if "napari_flex3d" in e[0]]
                if own:  # else an idle pool thread
                    where.append(f"{names.get(ident, ident)}: {' > '.join(own[-3:])} > {line(stack[-1])}")
            self.seen.append((now, max(late, 0.0), "; ".join(where) or "no worker in napari_flex3d"))

    def stop(self) -> None:
        self._stop.set()

    def explain(self, start: float, end: float) -> str:
        """Where the other threads were when the watch woke late inside ``[start, end]``."""
        hits = [f"{late:.0f} ms: {where}" for t, late, where in self.seen if start <= t <= end + 0.02]
        unique = list(dict.fromkeys(hits))
        return " | ".join(unique[:4])


def _report(monitor, timeline, phase: str, t0: float, results: dict) -> None:
    from napari_flex3d._napari._stalls import format_summary

    s = monitor.summary(phase)
    results[phase] = s
    print(format_summary(phase, s))
    for start, length in monitor.longest(phase):
        if length > 50:
            print(f"  stall of {length:.0f} ms at {start - t0:.1f} s: {timeline.explain(start, length)}")


def _heap_mb() -> dict:
    """What the resident memory holds: glibc's heap in live blocks and in freed blocks kept for
    reuse (``napari_flex3d._process.heap_bytes``), and the bytes of the torch tensors alive."""
    import gc

    import torch

    from napari_flex3d._process import heap_bytes

    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    out = {"tensors_mb": sum(storages.values()) / 2**20}
    heap = heap_bytes()
    if heap is not None:
        out["heap_in_use_mb"], out["heap_free_mb"] = heap[0] / 2**20, heap[1] / 2**20
    return out


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], device=None)
    p.add_argument("--box", type=int, default=64, help="box of the simulated dataset (and of the training)")
    p.add_argument("--particles", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-particles", type=int, default=None, help="train on this many particles (a tiny run)")
    p.add_argument("--memory", action="store_true", help="RSS and layer count after each epoch, explorer in use")
    p.add_argument("--no-release", action="store_true",
                   help="with --memory: the training loop's release of freed memory at epoch ends off (as before gl12)")
    p.add_argument("--iterations", type=int, default=5, help="L-BFGS iterations of the reconstruction")
    p.add_argument("--frames", type=int, default=11, help="frames of the exported movie")
    p.add_argument("--preview-box", type=int, default=None, help="the explorer's preview box (default: the widget's)")
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--idle-seconds", type=float, default=20, help="a control phase with nothing running first")
    p.add_argument("--sample-dir", default=None, help="reuse a dataset written by make_sample / flex3d simulate")
    p.add_argument("--window", default="1200x800", help="window size; software OpenGL (Xvfb) paints slower when larger")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the training (default: the widget's)")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_flex3d._napari._data_widget import DataMeshWidget
    from napari_flex3d._napari._explore_widget import VOLUME_LAYER, LatentExplorerWidget
    from napari_flex3d._napari._reconstruct_widget import ReconstructWidget
    from napari_flex3d._napari._stalls import StallMonitor
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
    timeline = Timeline(app, viewer.window._qt_viewer.canvas._scene_canvas)
    timeline.gil = GilWatch()
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
    visible_before = {layer.name: layer.visible for layer in viewer.layers}
    for layer in viewer.layers:
        layer.visible = layer is probe
    viewer.dims.ndisplay = 3  # the canvas stays 3D for what follows: the hard case
    render_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        viewer.screenshot(canvas_only=True, flash=False)
        render_s.append(time.perf_counter() - t0)
    viewer.layers.remove(probe)
    for layer in viewer.layers:
        layer.visible = visible_before.get(layer.name, True)
    from napari_flex3d._napari._paint_budget import paint_budget

    print(f"OpenGL renderer: {getattr(paint_budget(viewer), 'renderer', '?')}")
    print(f"one canvas render of the {cmap.shape[0]}^3 consensus map, iso ({args.window}): median "
          f"{np.median(render_s) * 1000:.0f} ms (the floor under painting a map of this box)")

    _settle(app, timeline)  # the repaint of the restored layers is not the training's
    monitor = StallMonitor()
    timeline.gil.gui_last = lambda: monitor._last if monitor._current is not None else time.perf_counter()
    results: dict = {}
    t_bench = time.perf_counter()

    # --- control: the same viewer doing nothing; what the machine's load alone costs the GUI thread
    if args.idle_seconds:
        monitor.start("idle (control)")
        _wait(app, lambda: time.perf_counter() - t_bench > args.idle_seconds, args.idle_seconds + 60)
        _report(monitor, timeline, "idle (control)", t_bench, results)

    # --- 1. training with the live preview
    train = TrainWidget(viewer)
    _wait(app, lambda: not train.preload_pending, 300)  # the training code is imported when the widget opens
    run_dir = tmp / "run"
    train.set_option(out=str(run_dir), device="cpu", epochs=args.epochs, batch=64, hidden=32, layers=3,
                     latent_grid=7, latent_steps=1, val_fraction=0.1, preview_every=1)
    if args.threads:
        train.set_option(threads=args.threads)
    if args.max_particles:
        train.set_option(max_particles=args.max_particles)
    timeline.wrap(train, "_on_event", "*")
    if hasattr(train, "_on_previews_ready"):
        timeline.wrap(train, "_on_previews_ready", "previews ready")
    ex = LatentExplorerWidget(viewer)
    timeline.wrap(ex, "_on_volume", "explorer volume")
    timeline.wrap(ex, "_run_loaded", "explorer run")
    if hasattr(ex, "_show_latents"):  # the run's latents in an event-loop turn of their own
        timeline.wrap(ex, "_show_latents", "explorer latents")
    memory: list[dict] = []
    release_ms: list[float] = []
    rss_released: list[float] = []  # RSS just after each epoch's release
    if args.memory:
        from napari_flex3d.training import loop

        release = loop.release_freed_memory

        def timed_release():  # what returning the epoch's freed memory costs the training thread
            t = time.perf_counter()
            returned = False if args.no_release else release()
            release_ms.append((time.perf_counter() - t) * 1000)
            rss_released.append(rss_bytes() / 2**20)  # the training thread's view, before the GUI's share of the epoch
            return returned

        loop.release_freed_memory = timed_release
        on_event = train._on_event
        rng = np.random.default_rng(1)

        def explore_click():  # the explorer in use
            lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
            ex.click(*(float(v) for v in lo + rng.random(2) * (hi - lo + 1e-3)))

        ex.run_opened.connect(explore_click)

        def record(ev):
            on_event(ev)
            if type(ev).__name__ == "CheckpointWritten":  # the epoch's files and previews are in
                if ex.run is None:
                    if not ex.opening:  # as the Open button: read in a worker, clicked once shown
                        ex.open_run(run_dir, wait=False)
                else:
                    ex.set_latents(np.asarray(train.latents))
                    explore_click()
                memory.append({"epoch": ev.epoch, "rss_mb": rss_bytes() / 2**20, "layers": len(viewer.layers),
                               "rss_released_mb": rss_released[-1] if rss_released else None, **_heap_mb()})
                m = memory[-1]
                print(f"  after epoch {ev.epoch}: RSS {m['rss_mb']:.0f} MB ({m['rss_released_mb'] or 0:.0f} MB just after the "
                      f"release), {m['layers']} layers; heap in use "
                      f"{m.get('heap_in_use_mb', 0):.0f} MB, free {m.get('heap_free_mb', 0):.0f} MB; "
                      f"tensors {m['tensors_mb']:.0f} MB")

        train._on_event = record
    started = []  # when the run's set-up ended (RunStarted reached the widget)
    on_event_before = train._on_event

    def note_start(ev):
        if type(ev).__name__ == "RunStarted" and not started:
            started.append(time.perf_counter())
        on_event_before(ev)

    train._on_event = note_start
    t0 = time.perf_counter()
    monitor.start("training")
    train.start()
    start_ms = (time.perf_counter() - t0) * 1000  # the Start button's own work in the GUI thread (mesh and command written)
    _wait(app, lambda: train.state == "idle" and getattr(train, "previews_idle", True), 3600)
    _wait(app, lambda: ex.idle, 600)
    train_s = time.perf_counter() - t0
    if train.error is not None:
        raise train.error
    steps = sum(type(e).__name__ == "StepLoss" for e in train.events)
    print(f"training: {train_s:.0f} s, {steps} steps, {len(viewer.layers)} layers")
    _report(monitor, timeline, "training", t_bench, results)
    # the set-up (reading, checking the images, mesh and model, noise spectra, first latents) apart:
    # the ticks of the training phase from Start to the RunStarted event
    when, late = np.asarray(monitor.when_s["training"]), np.asarray(monitor.lateness_ms["training"])
    inside = (when >= t0) & (when <= (started[0] if started else when.max()))
    monitor.when_s["training set-up"] = when[inside].tolist()
    monitor.lateness_ms["training set-up"] = late[inside].tolist()
    print(f"  set-up: from {t0 - t_bench:.1f} s (Start itself {start_ms:.0f} ms in the GUI thread), "
          f"{(started[0] if started else time.perf_counter()) - t0:.1f} s to the run's first event")
    _report(monitor, timeline, "training set-up", t_bench, results)

    # --- 2. reconstruction
    rec = ReconstructWidget(viewer)
    _wait(app, lambda: not rec.preload_pending, 300)
    rec.run_dir = str(run_dir)
    rec.iterations = args.iterations
    timeline.wrap(rec, "_on_event", "*")
    _settle(app, timeline)
    monitor.phase("reconstruct")
    t0 = time.perf_counter()
    rec.reconstruct()
    _wait(app, lambda: rec.state == "idle", 3600)
    if rec.error is not None:
        raise rec.error
    print(f"reconstruction: {time.perf_counter() - t0:.0f} s ({args.iterations} iterations), {len(viewer.layers)} layers")
    _report(monitor, timeline, "reconstruct", t_bench, results)

    # --- 3. movie export
    if ex.run is None:
        _settle(app, timeline)
        monitor.phase("explorer open")  # the run read in a worker, then its latents and layers shown
        ex.open_run(run_dir, wait=False)  # as the Open button
        _wait(app, lambda: ex.run is not None and ex.idle, 600)
        _settle(app, timeline)
        _report(monitor, timeline, "explorer open", t_bench, results)
    ex.n_frames = args.frames
    _settle(app, timeline)
    monitor.phase("movie")
    t0 = time.perf_counter()
    ex.export_movie(tmp / "movie.mp4", along="axis z0")
    _wait(app, lambda: ex.frames_written == args.frames and ex.idle, 600)
    print(f"movie: {args.frames} frames in {time.perf_counter() - t0:.1f} s")
    _report(monitor, timeline, "movie", t_bench, results)

    # --- 4. analysing: the explorer's actions that run in workers
    _settle(app, timeline)
    monitor.phase("analysing")
    t0 = time.perf_counter()
    ex.export_series(tmp / "series", along="axis z0")
    _wait(app, lambda: ex.series_written is not None and ex.idle, 600)
    lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
    mid = (lo + hi) / 2
    ex.polygon = [tuple(lo), (float(mid[0]), float(lo[1])), tuple(mid), (float(lo[0]), float(mid[1]))]
    chosen = ex.select_polygon()
    app.processEvents()
    print(f"analysing: a series of {len(ex.series_written[0])} maps and a lasso of {len(chosen)} particles in "
          f"{time.perf_counter() - t0:.1f} s")
    _report(monitor, timeline, "analysing", t_bench, results)

    # --- 5. click -> volume, with the stalls of the clicks
    clicks = {}
    if args.clicks:
        monitor.phase("explorer clicks")
        clicks = _clicks(app, viewer, ex, timeline, args)
        _report(monitor, timeline, "explorer clicks", t_bench, results)
    monitor.stop()
    timeline.gil.stop()
    summary = {
        "box": args.box,
        "canvas_render_ms": float(np.median(render_s) * 1000),
        "train_seconds": train_s,
        "train_steps": steps,
        "stalls": results,
        "layers": len(viewer.layers),
        **clicks,
    }
    if memory:
        summary["memory"] = memory
        grow = memory[-1]["rss_mb"] / memory[min(1, len(memory) - 1)]["rss_mb"] - 1
        print(f"RSS after epoch {memory[-1]['epoch']} vs epoch {memory[min(1, len(memory) - 1)]['epoch']}: "
              f"{grow * 100:+.1f} % (target within 10 %); layers {[m['layers'] for m in memory]}")
        with open("/proc/self/status") as fh:  # the release lowers what is held between epochs, not an epoch's peak
            summary["peak_rss_mb"] = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024
        print(f"peak RSS over the whole benchmark {summary['peak_rss_mb']:.0f} MB")
        if release_ms and not args.no_release:
            summary["release_ms"] = release_ms
            print(f"freed memory released at {len(release_ms)} epoch ends: median {np.median(release_ms):.0f} ms, "
                  f"max {max(release_ms):.0f} ms (training thread)")
    print(json.dumps(summary, indent=2))
    viewer.close()
    return 0


def _clicks(app, viewer, ex, timeline, args) -> dict:
    from napari_flex3d._napari._explore_widget import VOLUME_LAYER

    # the layers stay as they are (the consensus map visible in 3D): what the explorer does about them is measured
    if args.preview_box is not None:
        ex.preview_box = args.preview_box
    timeline.shown_now = lambda: ex.volumes_shown
    ex.mode = "volume"
    rng = np.random.default_rng(0)
    lo, hi = ex._xy.min(axis=0), ex._xy.max(axis=0)
    preview_s, drawn_s, refined_s = [], [], []

    for _ in range(args.clicks):
        x, y = lo + rng.random(2) * (hi - lo + 1e-3)
        _settle(app, timeline)
        shown = ex.volumes_shown
        t0 = time.perf_counter()
        ex.click(float(x), float(y))
        _wait(app, lambda: ex.volumes_shown > shown, 120)
        preview_s.append(time.perf_counter() - t0)  # the preview map is in the layer
        _wait(app, lambda: any(n > shown for _, _, n in timeline.frames), 120)
        drawn_s.append(next(t for _, t, n in timeline.frames if n > shown) - t0)  # ... and painted
        _wait(app, lambda: ex._render.idle, 120)
        if not ex.refined:  # the automatic refine is off where a 3D frame is slow: asked for (the Refine button)
            _settle(app, timeline)
            ex.refine_now()
        _wait(app, lambda: ex.refined and ex._render.idle, 120)
        refined_s.append(time.perf_counter() - t0)
    shown_as = getattr(ex, "shown_as", "volume")
    layer = viewer.layers[VOLUME_LAYER if shown_as == "volume" else "latent surface"]
    print(
        f"click -> preview volume (box {min(ex.preview_box, ex.run.box)}, linear): median "
        f"{np.median(preview_s) * 1000:.0f} ms, max {np.max(preview_s) * 1000:.0f} ms (target < 1 s); "
        f"painted on the canvas: median {np.median(drawn_s) * 1000:.0f} ms; "
        f"-> refined (box {ex.run.box}, cubic): median {np.median(refined_s) * 1000:.0f} ms; shown as a {shown_as} "
        f"({layer.name})"
    )
    return {
        "click_to_preview_ms": {"median": float(np.median(preview_s) * 1000), "max": float(np.max(preview_s) * 1000)},
        "click_to_preview_painted_ms": {"median": float(np.median(drawn_s) * 1000)},
        "click_to_refined_ms": {"median": float(np.median(refined_s) * 1000)},
        "shown_as": shown_as,
    }


if __name__ == "__main__":
    sys.exit(main())
