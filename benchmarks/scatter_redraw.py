"""Latent explorer: how long the latent scatter takes to redraw, coloured, at up to 10^6 particles.

Run under a display (Xvfb is fine):

    xvfb-run -a python benchmarks/scatter_redraw.py [--n 1000000] [--k 8] [--repeats 3]

It builds a ``LatentExplorerWidget`` (no run needed), gives it ``--n`` latents of ``--k``
axes and a continuous, a cyclic and a categorical per-particle column, and times, from
the call to the end of the widget's repaint (``QWidget.repaint``: the pixels drawn):

- ``plain``: the uncoloured density view (the reference: what the explorer did before);
- ``colour continuous`` / ``colour cyclic`` / ``colour categorical``: choosing a colour;
- ``range``: a new colour range typed in;
- ``axes``: another pair of axes, coloured; ``pca``: the PCA view, coloured;
- the same at ``--points`` particles (the scatter's largest size drawn as points, one
  brush per point).

Target (issue 22): every coloured redraw under 2 s at 10^6 particles. Prints the median wall
and CPU seconds of ``--repeats`` per step (the CPU time is what the redraw costs; on a shared
machine the wall time adds the wait for a core), the CPU ratio to ``plain`` at the same
size, and a JSON summary.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, src_on_path  # noqa: E402

src_on_path()


def _timed(app, widget, action) -> tuple[float, float]:
    """Wall and CPU seconds from calling ``action()`` to the widget repainted with its result.

    The CPU seconds are this process's (all its threads): on a shared machine the wall time
    also counts waiting for a core, the CPU time does not."""
    app.processEvents()
    t0, c0 = time.perf_counter(), time.process_time()
    action()
    widget.repaint()
    app.processEvents()
    return time.perf_counter() - t0, time.process_time() - c0


def _median(app, widget, action, undo, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        undo()
        app.processEvents()
        times.append(_timed(app, widget, action))
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def measure(app, ex, n: int, k: int, repeats: int) -> dict:
    """Median seconds of each step for ``n`` particles (see the module docstring)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(n, k)).astype(np.float32)
    t0 = time.perf_counter()
    ex.set_latents(z)
    ex.repaint()
    first = time.perf_counter() - t0
    columns = {
        "defocus_a": 15000 + 3000 * z[:, 0].astype(np.float64) + 500 * rng.normal(size=n),
        "rot_deg": rng.uniform(-180, 180, n),
        "optics_group": rng.integers(1, 5, n).astype(np.float64),
    }
    ex.add_colour_columns(columns)

    def colour(name):
        return lambda: setattr(ex, "colour_by", name)

    none = colour("")
    out = {"n": n, "k": k, "mode": None, "set_latents": first}
    out["plain"] = _median(app, ex, lambda: ex._redraw(), none, repeats)
    out["mode"] = ex.plot.mode
    for name, kind in (("defocus_a", "continuous"), ("rot_deg", "cyclic"), ("optics_group", "categorical")):
        out[f"colour {kind}"] = _median(app, ex, colour(name), none, repeats)
    ex.colour_by = "defocus_a"
    lo, hi = ex.colour_range
    flip = iter(range(10**6))
    out["range"] = _median(app, ex, lambda: setattr(ex, "colour_range", (lo + (next(flip) % 2 + 1) * 100.0, hi)),
                           lambda: None, repeats)
    out["axes"] = _median(app, ex, lambda: setattr(ex, "axes", (2, 3)), lambda: setattr(ex, "axes", (0, 1)), repeats)
    out["pca"] = _median(app, ex, lambda: setattr(ex, "use_pca", True), lambda: setattr(ex, "use_pca", False), repeats)
    ex.use_pca = False
    return out


def main(argv=None) -> dict:
    p = parser(__doc__, device=None)
    p.add_argument("--n", type=int, default=1_000_000, help="particles (default 10^6: the density view)")
    p.add_argument("--points", type=int, default=50_000, help="particles drawn as points (default 50,000)")
    p.add_argument("--k", type=int, default=8, help="latent dimensions (default 8)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import napari

    from napari_flex3d._napari._explore_widget import LatentExplorerWidget

    viewer = napari.Viewer(show=False)
    app = napari.qt.get_qapp()
    ex = LatentExplorerWidget(viewer)
    ex.resize(420, 900)
    ex.show()
    results = [measure(app, ex, n, args.k, args.repeats) for n in (args.points, args.n)]
    for r in results:
        print(f"n = {r['n']:,} (K = {r['k']}, {r['mode']} view); set_latents {r['set_latents']:.3f} s")
        for step in ("plain", "colour continuous", "colour cyclic", "colour categorical", "range", "axes", "pca"):
            (wall, cpu), (_, ref) = r[step], r["plain"]
            print(f"  {step:20s} wall {wall:7.3f} s  CPU {cpu:7.3f} s  (CPU x{cpu / max(ref, 1e-9):.2f} of plain)")
        steps = ("colour continuous", "colour cyclic", "colour categorical", "range", "axes", "pca")
        worst_wall, worst_cpu = max(r[s][0] for s in steps), max(r[s][1] for s in steps)
        print(f"  slowest coloured redraw: wall {worst_wall:.3f} s, CPU {worst_cpu:.3f} s (target: under 2 s)")
    print(json.dumps(results))
    viewer.close()
    return {"results": results}


if __name__ == "__main__":
    main()
