"""Operator calls per optimizer step of a whole training run: the launch count, on any machine.

Every aten operator call is a kernel launch on a GPU (or several), so the count per step is
what bounds a small step's speed there, and it can be measured on a CPU: this script
simulates a small dataset (box 32 by default, cached in ``--data``), runs a short
``training.loop.train_run`` (the default :class:`TrainConfig` but for its size: ``--epochs``
epochs, ``--warmup`` of warm-up, and minibatches of ``--batch`` 256 as every row of the results
measured, where the default now takes 32 for these 380 training particles) once untimed by the profiler for particles/s, then once
under ``torch.profiler.profile`` (CPU activity), and prints

* **aten ops per optimizer step**: every ``aten::`` call the profiler records (nested ones
  included: ``aten::linear`` and the ``aten::addmm`` inside it count 2), outside the run's
  setup (``loop._open_run``: reading, mesh, spectra, the initial latents, once per run),
  divided by the number of optimizer steps (every ``train_step``: the run's and, by default, the
  rigidity choice's trial steps, which op1-op7 left out of the count); also the same for the whole run (setup
  included) and the top-level count (aten calls not inside another aten call);
* the same per phase, by which of the loop's functions an op ran in: latent inference
  (``step.infer_batch_latents`` called by a training step), model update (the rest of
  ``step.train_step``), validation (``metrics.validation_loss``, its inference included),
  other (reading, the learned prior, checkpoints, FSC, bookkeeping);
* the 25 most frequent ops, and particles/s (training particles x epochs / the epochs'
  seconds, validation included, from the unprofiled run);
* with ``--device cuda``, kernel launches per step (``cudaLaunchKernel`` calls).

    python benchmarks/ops_per_step.py                  # box 32, 400 particles, 2 epochs (a few minutes on 2 cores)
    python benchmarks/ops_per_step.py --rigidity-choice fixed   # the step alone: no rigidity choice's trials
    python benchmarks/ops_per_step.py --rigidity-choice fixed --epochs 3 --latent-window 5   # the warm start
    python benchmarks/ops_per_step.py --no-timing --rigidity-choice fixed --particles 4000   # 15 steps an epoch

Once-an-epoch work (validation, the learned prior, the FSC, the epoch's files) is divided by the
steps of an epoch: 2 at the default 400 particles, 15 at 4,000, hundreds at users' 10^5 particles,
so ``--particles`` shows how the figure approaches a long run's (an optimizer step means the same).

The last line is one JSON object.
"""

from __future__ import annotations

import collections
import json
import tempfile
from pathlib import Path

from _common import parser, src_on_path

src_on_path()

PHASES = ("latent inference", "model update", "validation", "setup")


def dataset(folder: Path, n_particles: int, box: int) -> Path:
    """The simulated dataset's folder (made once; reused while its STAR file is there)."""
    from napari_flex3d.api import simulate

    if not (folder / "particles.star").is_file():
        simulate(folder, n_particles=n_particles, box=box, apix=192.0 / box, snr=0.3, motion="hinge", seed=0)
    return folder


def config(data: Path, out: Path, args):
    from napari_flex3d.config import TrainConfig

    return TrainConfig(
        particles=str(data / "particles.star"), map=str(data / "consensus.mrc"), out=str(out), epochs=args.epochs,
        warmup_epochs=args.warmup, device=args.device, preview_every=0, seed=0, batch=args.batch or None,
        **({} if args.rigidity_choice is None else {"rigidity_choice": args.rigidity_choice}),
        **({} if args.latent_window is None else {"latent_window": args.latent_window}),
    )


#: Optimizer steps taken under the profiler: every ``train_step`` call, the rigidity choice's trials included.
OPTIMIZER_STEPS = [0]


def _phases_marked():
    """Wraps the loop's phases in ``record_function`` ranges (the library stays unmarked), and
    counts every optimizer step (``train_step`` called by the loop or by the rigidity choice's trials)."""
    import torch

    from napari_flex3d.training import loop, rigidity_choice, step

    def marked(fn, name, counts=False):
        def wrapper(*a, **k):
            OPTIMIZER_STEPS[0] += counts
            with torch.profiler.record_function(f"phase: {name}"):
                return fn(*a, **k)

        return wrapper

    patches = [
        (step, "infer_batch_latents", marked(step.infer_batch_latents, "latent inference")),
        (loop, "train_step", marked(loop.train_step, "model update", counts=True)),
        (rigidity_choice, "train_step", marked(rigidity_choice.train_step, "model update", counts=True)),
        (loop, "validation_loss", marked(loop.validation_loss, "validation")),
        (loop, "_open_run", marked(loop._open_run, "setup")),
    ]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    for mod, name, fn in patches:
        setattr(mod, name, fn)
    return saved


def train(cfg, out: Path, profile: bool):
    """Runs training into ``out``; returns (the epochs' seconds, optimizer steps, the profiler or None)."""
    import torch

    from napari_flex3d.training import events as ev
    from napari_flex3d.training.loop import train_run

    steps, epoch_s = 0, 0.0
    prof = None
    if profile:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if torch.device(cfg.device).type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(activities=acts)
        prof.__enter__()
    try:
        for e in train_run(cfg, out):
            if isinstance(e, ev.StepLoss):
                steps += 1
            elif isinstance(e, ev.EpochSummary):
                epoch_s += e.seconds
    finally:
        if prof is not None:
            prof.__exit__(None, None, None)
    return epoch_s, steps, prof


def _phase(event) -> tuple[str, bool]:
    """The outermost phase range around ``event``, and whether it runs inside another aten op."""
    parent, phases, nested = event.cpu_parent, set(), False
    while parent is not None:
        if parent.name.startswith("aten::"):
            nested = True
        elif parent.name.startswith("phase: "):
            phases.add(parent.name[len("phase: ") :])
        parent = parent.cpu_parent
    # validation's inference is validation's; a training step's inference is not its update
    for phase in ("setup", "validation", "latent inference", "model update"):
        if phase in phases:
            return phase, nested
    return "other", nested


def count(prof):
    """aten calls outside the run's setup: ``{"total", "top", "run_total", "phases", "top_ops", "launches"}``."""
    total = top = run_total = launches = 0
    phases = collections.Counter()
    ops = collections.Counter()
    for e in prof.events():
        name = e.name
        is_launch = name.startswith(("cudaLaunchKernel", "cuLaunchKernel"))
        if not (is_launch or name.startswith("aten::")):
            continue
        phase, nested = _phase(e)
        if is_launch:
            launches += phase != "setup"
            continue
        run_total += 1
        if phase == "setup":
            continue
        total += 1
        ops[name] += 1
        top += not nested
        phases[phase] += 1
    return {"total": total, "top": top, "run_total": run_total, "phases": phases, "top_ops": ops, "launches": launches}


def main() -> None:
    p = parser(__doc__, device="cpu")
    p.add_argument("--particles", type=int, default=400)
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=256,
                   help="particles per minibatch (256, as op1-op7 measured; 0: TrainConfig's choice from the particle count)")
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "flex3d_ops_per_step"))
    p.add_argument("--no-timing", action="store_true", help="skip the unprofiled run (particles/s)")
    p.add_argument("--rigidity-choice", choices=("validation", "fixed"), default=None,
                   help="TrainConfig.rigidity_choice (default: TrainConfig's); fixed leaves out the choice's trials")
    p.add_argument("--latent-window", type=int, default=None,
                   help="TrainConfig.latent_window: the joint sweep's warm-start window (from the second epoch of "
                        "inference, so with --epochs 3 or more)")
    args = p.parse_args()
    import torch

    data = dataset(Path(args.data) / f"sim_b{args.box}_n{args.particles}", args.particles, args.box)
    with tempfile.TemporaryDirectory() as tmp:
        rate = float("nan")
        if not args.no_timing:
            cfg = config(data, Path(tmp) / "timed", args)
            epoch_s, steps, _ = train(cfg, Path(tmp) / "timed", profile=False)
            n_train = round(args.particles * (1 - cfg.val_fraction))
            rate = n_train * args.epochs / epoch_s
        saved = _phases_marked()
        try:
            cfg = config(data, Path(tmp) / "profiled", args)
            _, run_steps, prof = train(cfg, Path(tmp) / "profiled", profile=True)
            steps = OPTIMIZER_STEPS[0]  # the run's steps and the rigidity choice's trial steps
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)
    c = count(prof)
    per = {k: c[k] / steps for k in ("total", "top", "run_total", "launches")}
    print(f"box {args.box}, {args.particles} particles, {args.epochs} epochs ({args.warmup} warm-up) of "
          f"{run_steps // args.epochs} steps, {steps} optimizer steps ({run_steps} of the run, {steps - run_steps} of the rigidity choice's trials), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"aten ops per optimizer step: {per['total']:,.0f} (all recorded calls, nested included, setup excluded); "
          f"top-level {per['top']:,.0f}; whole run with setup {per['run_total']:,.0f}")
    for phase in ("latent inference", "model update", "validation", "other"):
        print(f"  {phase:17s} {c['phases'][phase] / steps:10,.0f} per step")
    if torch.device(args.device).type == "cuda":
        print(f"kernel launches per optimizer step: {per['launches']:,.0f}")
    print(f"particles/s (unprofiled run, epochs incl. validation): {rate:,.1f}")
    print("most frequent ops (calls per step):")
    for name, n in c["top_ops"].most_common(25):
        print(f"  {name:40s} {n / steps:9,.1f}")
    print(json.dumps({
        "benchmark": "ops_per_step", "box": args.box, "particles": args.particles, "epochs": args.epochs,
        "steps": steps, "run_steps": run_steps, "aten_per_step": round(per["total"], 1), "aten_top_per_step": round(per["top"], 1),
        "aten_run_per_step": round(per["run_total"], 1), "launches_per_step": round(per["launches"], 1),
        "phases_per_step": {k: round(v / steps, 1) for k, v in c["phases"].items()}, "particles_per_s": round(rate, 2),
        "device": args.device, "latent_window": args.latent_window, "batch": args.batch or None,
    }))


if __name__ == "__main__":
    main()
