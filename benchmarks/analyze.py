"""How long ``flex3d analyze`` takes, stage by stage, and what that extrapolates to.

Simulates a hinge dataset (``--n-particles`` at ``--box``; kept in ``--work`` for reruns),
trains a one-epoch run on it (warm-up only: the timing of the analysis does not depend on
what the model learned), then times :func:`napari_flex3d.analyze.analyze_run` with
``--threads`` torch threads. The residual and the per-particle table grow linearly with the
particle count, the clustering fits at most 20,000 particles and the plots draw at most
20,000 points, the motion maps do not depend on it: the script prints each stage (wall and CPU seconds:
on a shared machine the wall time includes waiting for the cores) and a linear
extrapolation of the particle-dependent stages to ``--target`` particles (pessimistic: the
plots in "artefacts" are capped at 20,000 points and scale less).

    python benchmarks/analyze.py --n-particles 2000 --box 64 --train-box 64 --threads 2
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the flex3d command sets it: idle threads sleep

from _common import parser, src_on_path

PER_PARTICLE = ("read", "residual", "artefacts", "outliers")  # stages that scale with n


def main() -> None:
    p = parser(__doc__, device="cpu", threads=2)
    p.add_argument("--n-particles", type=int, default=2000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--train-box", type=int, default=64)
    p.add_argument("--residual-box", type=int, default=None)
    p.add_argument("--target", type=int, default=20000)
    p.add_argument("--work", default="/tmp/flex3d-bench-analyze")
    args = p.parse_args()
    src_on_path()
    import torch

    from napari_flex3d.analyze import analyze_run
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training.loop import train_run

    torch.set_num_threads(args.threads)
    work = Path(args.work) / f"n{args.n_particles}_b{args.box}_t{args.train_box}"
    sim, run = work / "sim", work / "run"
    t = time.perf_counter()
    if not (sim / "particles.star").is_file():
        simulate_dataset(sim, n_particles=args.n_particles, box=args.box, apix=192.0 / args.box, snr=0.1, seed=0)
    if not (run / "latents.npy").is_file():
        config = TrainConfig(particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(run),
                             box=args.train_box, latent_dim=2, epochs=1, warmup_epochs=1, batch=200, kernel="linear",
                             preview_every=0, threads=args.threads, latent_init="random")
        for _ in train_run(config, run):
            pass
    print(f"inputs ready in {time.perf_counter() - t:.1f} s")
    summary = analyze_run(run, work / "analysis", residual_box=args.residual_box, device=args.device)
    scale = args.target / args.n_particles
    print(json.dumps({"n_particles": args.n_particles, "box": args.box, "train_box": args.train_box,
                      "residual_box": summary["residual_box"], "threads": args.threads,
                      "wall_s": summary["timings_s"], "cpu_s": summary["cpu_s"]}, indent=1))
    for kind, times in (("wall", summary["timings_s"]), ("cpu", summary["cpu_s"])):
        fixed = sum(v for k, v in times.items() if k not in PER_PARTICLE and k != "total")
        linear = sum(times.get(k, 0.0) for k in PER_PARTICLE)
        print(f"{kind} seconds extrapolated to {args.target} particles: {fixed + linear * scale:.1f} s "
              f"({linear:.1f} s scaling x{scale:.0f} + {fixed:.1f} s fixed)")

if __name__ == "__main__":
    main()
