"""napari plugin start-up through napari's own path: import, manifest discovery, each dock widget.

What napari does for the plugin, each step timed in a fresh interpreter (nothing imported
yet but napari itself, which is left out of the figures):

- ``import``: ``import napari_flex3d`` (the package napari's manifest entry point names);
- ``discover``: npe2's plugin discovery and reading napari-flex3d's manifest
  (``PluginManager.discover()``, ``get_manifest``), which napari runs when it starts;
- one column per widget: ``viewer.window.add_plugin_dock_widget("napari-flex3d", name)`` on a
  viewer made beforehand (napari's *Plugins* menu: import the widget's module, build it,
  dock it).

Each widget is opened in its own process (``--repeats`` processes per widget), so no widget
finds another's imports done; ``import`` and ``discover`` are timed in every one of them.
The figure is the best (least) of the repeats: start-up on a shared machine is slowed, never
sped up, by the other work on it. Run under a display (``xvfb-run -a``). ``--src`` measures
another checkout's ``src/`` (an older commit's worktree); given twice, the two checkouts'
processes alternate, so a before/after sees the same load. A widget a checkout lacks is
left out of its figures.

    xvfb-run -a python benchmarks/plugin_startup.py [--repeats 5] [--src DIR [--src DIR]] [--widgets ...]
"""

from __future__ import annotations

import json
import statistics
import sys

from _common import ROOT, child_json, parser

WIDGETS = ("Data and mesh", "Train", "Latent explorer", "Reconstruct", "Motion analysis")

CHILD = """
import json, sys, time
clock = time.perf_counter
import napari
t0 = clock()
import napari_flex3d
out = {"import": clock() - t0}
from npe2 import PluginManager
t0 = clock()
pm = PluginManager.instance()
pm.discover()
pm.get_manifest("napari-flex3d")
out["discover"] = clock() - t0
viewer = napari.Viewer(show=False)
names = [w.display_name for w in pm.get_manifest("napari-flex3d").contributions.widgets or ()]
if sys.argv[1] in names:  # an older checkout may not have it
    t0 = clock()
    viewer.window.add_plugin_dock_widget("napari-flex3d", sys.argv[1])
    out["widget"] = clock() - t0
out["torch"] = "torch" in sys.modules
out["file"] = napari_flex3d.__file__
viewer.close()
print(json.dumps(out))
"""


def summary(runs: dict[str, list[dict]]) -> dict:
    """Best and median seconds of each phase over the runs of one ``src/`` (``runs``: per widget)."""
    every = [r for rs in runs.values() for r in rs]
    out = {"file": every[0]["file"]}
    for phase in ("import", "discover"):
        times = [r[phase] for r in every]
        out[phase] = {"best_s": min(times), "median_s": statistics.median(times)}
    out["widgets"] = {name: {"best_s": min(r["widget"] for r in rs), "median_s": statistics.median(r["widget"] for r in rs),
                             "torch": any(r["torch"] for r in rs)} for name, rs in runs.items() if "widget" in rs[0]}
    return out


def main(argv=None) -> int:
    p = parser(__doc__, device=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--src", action="append", help="a src/ folder to measure (repeat it to compare checkouts, their runs "
                   "interleaved so that both see the same load; default this checkout's)")
    p.add_argument("--widgets", nargs="*", default=list(WIDGETS), help="display names of the widgets to open")
    a = p.parse_args(argv)
    srcs = a.src or [str(ROOT / "src")]
    runs = {src: {name: [] for name in a.widgets} for src in srcs}
    for _ in range(a.repeats):
        for name in a.widgets:
            for src in srcs:
                runs[src][name].append(child_json(CHILD, name, src=src))
    for src in srcs:
        out = summary(runs[src])
        print(f"napari_flex3d from {out['file']} (best and median of {a.repeats})")
        for phase in ("import", "discover"):
            print(f"  {phase:16s} best {1e3 * out[phase]['best_s']:.1f} ms, median {1e3 * out[phase]['median_s']:.1f} ms")
        for name, w in out["widgets"].items():
            print(f"  {name:16s} best {w['best_s']:.3f} s, median {w['median_s']:.3f} s; "
                  f"torch loaded: {'yes' if w['torch'] else 'no'}")
        print(json.dumps({"benchmark": "plugin_startup", "src": src, "repeats": a.repeats, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
