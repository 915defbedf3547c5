"""A run imports nothing heavy on its way to the first step once ``training.RUN_IMPORTS`` is imported.

The Train widget imports ``RUN_IMPORTS`` in a worker when it opens; an import left to a run's
set-up runs in its worker thread and holds the GIL in long stretches (compiling or unmarshalling a
module, creating its classes): torch's compiler, imported by torch at the first optimiser, stalled
the window for 0.1-0.9 s at a time. A fresh interpreter, as the widget's process would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from napari_flex3d.io.atomic import write_config_json

#: Module families whose import at a run's start would hold the GIL long (what the preload is for).
HEAVY = ("napari_flex3d", "torch._dynamo", "torch._inductor", "torch.distributed", "torch.fx", "sympy", "pandas",
         "scipy", "numpy", "starfile", "mrcfile")

_CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    from napari_flex3d.config import TrainConfig, read_config_json
    from napari_flex3d.training import RUN_IMPORTS

    for name in RUN_IMPORTS:
        importlib.import_module(name)
    from napari_flex3d.training.loop import train_run

    before = set(sys.modules)
    config = read_config_json(sys.argv[1], TrainConfig)
    for e in train_run(config, config.out):
        if type(e).__name__ == "StepLoss":  # the set-up and the first step
            break
    print(json.dumps(sorted(set(sys.modules) - before)))
    """
)


def test_a_run_imports_nothing_heavy_after_the_preload(tiny_sim, tiny_config, tmp_path):
    write_config_json(tmp_path / "child.json", tiny_config(tiny_sim, tmp_path / "run", epochs=1, preview_every=0,
                                                           mesh=None))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "child.json")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in imported if m.startswith(HEAVY)]
    assert heavy == [], heavy
