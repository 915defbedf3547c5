"""napari plugin start-up: seconds to open each napari-flex3d dock widget in a fresh interpreter.

A user picks a widget from *Plugins > napari-flex3d*; napari imports its module and builds it
on the viewer. This script does exactly that in a new Python process per widget and repeat
(so nothing is imported already), with the viewer made first and left out of the figure, and
prints the median seconds per widget and whether torch was loaded by the time the widget
was built (by the widget itself or by its background preload).
Widgets start workers that import the training or reconstruction code in the background
(``_workers.preload``); that import competes for the interpreter while the widget is built,
and is part of what a user waits for.

    xvfb-run -a python benchmarks/startup.py [--repeats 5] [--src DIR]

``--src`` measures another checkout's ``src/`` (e.g. an older commit's, from ``git archive``),
for a before/after in the same session.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from _common import ROOT, child_json, parser

WIDGETS = {
    "data": ("_data_widget", "DataMeshWidget"),
    "train": ("_train_widget", "TrainWidget"),
    "explore": ("_explore_widget", "LatentExplorerWidget"),
    "reconstruct": ("_reconstruct_widget", "ReconstructWidget"),
}

CHILD = """
import importlib, json, sys, time
import napari
viewer = napari.Viewer(show=False)
module, cls = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
torch_before = "torch" in sys.modules
widget = getattr(importlib.import_module("napari_flex3d._napari." + module), cls)(viewer)
seconds = time.perf_counter() - t0
print(json.dumps({"s": seconds, "torch": "torch" in sys.modules and not torch_before}))
"""


def open_once(module: str, cls: str, src: str) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    return child_json(CHILD, module, cls, src=src, env=env)


def main(argv=None) -> int:
    p = parser(__doc__, device=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder to measure (default this checkout's)")
    a = p.parse_args(argv)
    out = {}
    for name, (module, cls) in WIDGETS.items():
        runs = [open_once(module, cls, a.src) for _ in range(a.repeats)]
        out[name] = {"median_s": statistics.median(r["s"] for r in runs), "torch": any(r["torch"] for r in runs)}
        print(f"{name:12s} {out[name]['median_s']:.2f} s (median of {a.repeats}); torch loaded by then: "
              f"{'yes' if out[name]['torch'] else 'no'}", flush=True)
    print(json.dumps({"benchmark": "startup", "src": a.src, "widgets": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
