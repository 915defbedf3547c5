"""How well training recovers a simulated motion, and what it costs.

    python benchmarks/recovery.py --out /tmp/bench                      # the full benchmark
    python benchmarks/recovery.py --out /tmp/bench --n-particles 4000 --epochs 4 --box 48   # reduced
    python benchmarks/recovery.py --out /tmp/closure --motion closure --occupancy bimodal --oracle \
        --n-particles 2000 --box 32 --epochs 6 --threads 1                                  # a domain closure

Simulates ``flex3d simulate --motion both`` (default: box 64, 20,000 particles, SNR 0.05,
K=2) unless ``--sim`` names an existing simulation, trains, and prints:
- canonical correlations between the learned latents and the true coordinates (the
  target), the same after a quadratic read-out of the latents (a diagnostic: what is left
  once a bent latent space is forgiven), and the best |Spearman| per true coordinate;
- the motion modes: singular values of the vertex displacements of the first 2,000
  particles, of the trained flow and of the true motion on the run's mesh (a flow whose
  third value falls far below the truth's is missing a rotation's curvature; taken at the
  particles' latents, they move with the particles' spread along the flow, so read the
  path figures below before blaming the flow);
- FSC resolution (0.143 and 0.5) of the convected map at each true state against the true
  density, next to the consensus map's against the same density, and inside the moving
  domain (a soft mask around linker + arm) the mask-weighted real-space correlation with
  the truth and the masked FSC 0.143, for both and for the noise-free average of the
  states (the control: pure motion blur, which the masked FSC does not see, so the
  correlation decides "better in the moving domain");
- wall and CPU time per epoch and peak memory;
- for a motion of one coordinate (closure, hinge, twist) or with ``--oracle``: whether the
  ends are reached (:mod:`napari_flex3d.evaluate.closure`): |Spearman|, the moving domain's correlation with
  the truth at the open end / middle / closed end, the learned excursion as a fraction of
  the true one, the span of true states the maps at the latent's 3rd / 97th percentiles
  match, and the curvature mode as a fraction of the truth's; with ``--oracle`` the same
  for the oracle (the true map and motion in the model, latents inferred by the project's
  grid inference), and a ``benchmarks/RESULTS.md`` row of both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _common import parser


def main(argv=None) -> int:
    p = parser(__doc__, device="auto")
    p.add_argument("--out", required=True, help="working folder (sim/ and run/ go here)")
    p.add_argument("--sim", default=None, help="use this existing simulation instead of simulating")
    p.add_argument("--n-particles", type=int, default=20000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--snr", type=float, default=0.05)
    p.add_argument("--motion", default="both", choices=["hinge", "twist", "both", "closure"])
    p.add_argument("--occupancy", default="bimodal", choices=["bimodal", "uniform"], help="closure: the occupancy")
    p.add_argument("--closure-deg", type=float, default=40.0, help="closure: angle between the end states")
    p.add_argument("--oracle", action="store_true",
                   help="also score the oracle (true map and motion, latents inferred) with the closure figures")
    p.add_argument("--latent-dim", type=int, default=None, help="K (default: the motion's number of coordinates)")
    p.add_argument("--rigidity-lambda", type=float, default=None, help="weight of the local rigidity prior")
    p.add_argument("--rigidity-choice", default=None, choices=["validation", "fixed"],
                   help="the weight chosen by validation loss after the warm-up (training's default), or fixed")
    p.add_argument("--rigidity-scale", default=None, choices=["volume", "cell"],
                   help="each cell's strain by its volume (training's default), or the paper's per-cell sum")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--max-particles", type=int, default=None, help="train on the first N particles only (reduced runs)")
    p.add_argument("--warmup-epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="particles per minibatch (default: training's)")
    p.add_argument("--flow-batches", type=int, default=None, help="flow updates per cycle (default: training's)")
    p.add_argument("--structure-batches", type=int, default=None, help="map updates per cycle (default: training's)")
    p.add_argument("--rigidity-path", action="store_true", default=None, help="experiment: rigidity also between latents")
    p.add_argument("--lr-flow", type=float, default=None, help="the flow's learning rate (default: training's)")
    p.add_argument("--train-box", type=int, default=None, help="training box (default: the particles' box up to 128)")
    p.add_argument("--latent-box", type=int, default=None,
                   help="box of latent inference, Fourier-cropped from the training box (default: the training box)")
    p.add_argument("--mesh-cell-size-a", type=float, default=None, help="mesh cell size (Å; default: 20 cells across)")
    p.add_argument("--mesh", default=None,
                   help="a saved mesh (flex3d mesh / save_mesh) instead of building one from the consensus "
                        "(a GPU machine without pyvista: build it where pyvista is)")
    p.add_argument("--kernel", default="cubic", choices=["cubic", "linear"])
    p.add_argument("--rigidity-floor", type=float, default=None, help="rigidity weight of empty mesh cells")
    p.add_argument("--latent-inference", default=None, choices=["grid", "gradient", "none"])
    p.add_argument("--latent-init-band", type=float, default=None, help="band of the variability start (fraction of Nyquist)")
    p.add_argument("--latent-grid", type=int, default=None, help="candidate values per latent axis in a grid sweep")
    p.add_argument("--lr-final", type=float, default=None, help="learning rates' final fraction (cosine after the band ramp)")
    p.add_argument("--latent-estimate", default=None, choices=["mean", "map"])
    p.add_argument("--latent-prior-shape", default=None, choices=["empirical", "gaussian"],
                   help="the latents' prior (default: training's, the empirical one)")
    p.add_argument("--evaluate-only", action="store_true",
                   help="report on the finished run in OUT/run against --sim, without simulating or training")
    p.add_argument("--seed", type=int, default=None,
                   help="training's seed (split, flow weights, start, shuffles; default training's, 0); the simulation's stays 0")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process")
    p.add_argument("--procs", type=int, default=1,
                   help="train data-parallel in this many processes (flex3d train under torchrun, gloo on the CPU); "
                        "on 2 cores, 2 processes of 1 thread each use both, one process with 2 threads does not")
    args = p.parse_args(argv)

    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.loop import train_run
    from napari_flex3d.training.progress import consume_events
    from napari_flex3d.evaluate.recovery import (
        best_spearman, motion_modes, quadratic_readout_correlations, state_fsc_report,
    )
    from napari_flex3d.training.agreement import canonical_correlations

    t_bench = time.perf_counter()
    out = Path(args.out)
    if args.evaluate_only and not (args.sim and (out / "run" / "latents.npy").is_file()):
        p.error("--evaluate-only needs --sim and a finished run in OUT/run (OUT/run/latents.npy)")
    out.mkdir(parents=True, exist_ok=True)
    if args.sim:
        sim_dir = Path(args.sim)
        t_sim = float("nan")
    else:
        from napari_flex3d.simulate.dataset import simulate_dataset
        from napari_flex3d.training.setup import resolve_device

        sim_dir = out / "sim"
        t0 = time.perf_counter()
        from napari_flex3d.simulate.closure import ClosureSpec

        closure = ClosureSpec(closure_deg=args.closure_deg, occupancy=args.occupancy) if args.motion == "closure" else None
        simulate_dataset(sim_dir, n_particles=args.n_particles, box=args.box, apix=192.0 / args.box, snr=args.snr,
                         motion=args.motion, seed=0, progress=True, device=resolve_device(args.device), closure=closure)
        t_sim = time.perf_counter() - t0
    truth = json.loads((sim_dir / "truth" / "truth.json").read_text())
    k = args.latent_dim or len(truth["coordinate_names"])
    run_dir = out / "run"
    settings = dict(particles=str(sim_dir / "particles.star"), map=str(sim_dir / "consensus.mrc"), out=str(run_dir),
                    latent_dim=k, epochs=args.epochs, box=args.train_box, latent_box=args.latent_box,
                    kernel=args.kernel, device=args.device, threads=args.threads, preview_every=0,
                    max_particles=args.max_particles)
    for name in ("mesh", "warmup_epochs", "latent_inference", "latent_init_band", "mesh_cell_size_a", "lr_final",
                 "rigidity_floor", "latent_estimate", "latent_grid", "latent_prior_shape", "seed", "rigidity_lambda",
                 "rigidity_choice", "rigidity_scale", "batch", "flow_batches", "structure_batches",
                 "lr_flow", "rigidity_path"):  # the training's own defaults unless given here
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    config = TrainConfig(**settings)
    resume = (run_dir / "checkpoints" / "last.pt").is_file()  # a stopped benchmark continues
    t_train = time.perf_counter()
    if args.evaluate_only:
        pass
    elif args.procs > 1:
        _train_torchrun(config, run_dir, args.procs, resume, out / "train.log")
    else:
        consume_events(train_run(config, run_dir, resume=resume, cli_argv=["benchmarks/recovery.py"]),
                       log_path=out / "train.log")
    t_train = time.perf_counter() - t_train

    latents = np.load(run_dir / "latents.npy")
    coords = np.load(sim_dir / "truth" / "coords.npy")[: len(latents)]
    run_config = json.loads((run_dir / "config.json").read_text())  # the run's own settings (also when only evaluated)
    print(f"\n== recovery: {len(latents)} of {truth['n_particles']} particles, box {truth['box']} (training box "
          f"{run_config['training_box']}), SNR {truth['snr']}, motion {truth['motion']}, K={k}, "
          f"{run_config['settings']['epochs']} epochs, kernel {run_config['settings']['kernel']} ==")
    print(f"rigidity: {_rigidity_text(run_dir, run_config['settings'])}")
    print("canonical correlations (latents vs true coordinates): "
          + ", ".join(f"{c:.3f}" for c in canonical_correlations(latents, coords)))
    print("  diagnostic, not the target: the same after a quadratic read-out of the latents (a bent latent space "
          "forgiven): " + ", ".join(f"{c:.3f}" for c in quadratic_readout_correlations(latents, coords)))
    modes = motion_modes(run_dir, sim_dir, n=2000)
    print("  motion modes (singular values of the vertex displacements of the first 2,000 particles, relative; "
          "the true motion's fitted on the run's mesh): trained " + ", ".join(f"{v:.3f}" for v in modes["trained"])
          + " | true " + ", ".join(f"{v:.3f}" for v in modes["true"]))
    print("best |Spearman| per true coordinate (" + ", ".join(truth["coordinate_names"]) + "): "
          + ", ".join(f"{r:.3f}" for r in best_spearman(latents, coords)))
    rows = state_fsc_report(run_dir, sim_dir)
    print("Against the true state at the training box: the whole map's FSC 0.143 / 0.5 resolution (Å); inside the "
          "moving domain (soft mask around linker + arm) the mask-weighted real-space correlation and the masked FSC "
          "0.143 (Å) of the convected map, the consensus and the noise-free average of the states (control)")
    print("  state (hinge, twist):  whole: convected | consensus     moving domain: correlation | masked FSC 0.143")
    for row in rows:
        coords_txt = ", ".join(f"{c:+.2f}" for c in row["coords"])
        print(f"  state ({coords_txt}):  {row['flex_a']:.2f}/{row['flex_half_a']:.2f} | "
              f"{row['consensus_a']:.2f}/{row['consensus_half_a']:.2f}     "
              + " ".join(f"{row[n + '_moving_corr']:.4f}" for n in ("flex", "consensus", "average")) + " | "
              + " ".join(f"{row[n + '_moving_a']:.2f}" for n in ("flex", "consensus", "average")))
    better = [r["flex_a"] <= r["consensus_a"] and r["flex_half_a"] <= r["consensus_half_a"]
              and r["flex_moving_corr"] > r["consensus_moving_corr"] for r in rows]
    print(f"  convected map better than the consensus at {sum(better)} of {len(rows)} states (whole-map FSC 0.143 and "
          f"0.5 at least as fine, moving-domain correlation higher)")
    fsc_finer = sum(r["flex_moving_a"] <= r["consensus_moving_a"] for r in rows)
    avg = [r["average_moving_a"] for r in rows]
    print(f"  moving-domain masked FSC 0.143 at least as fine as the consensus's at {fsc_finer} of {len(rows)}; the "
          f"control (pure motion blur) reaches {min(avg):.2f}-{max(avg):.2f} Å there: that FSC does not see blur")
    if len(truth["coordinate_names"]) == 1 or args.oracle:  # the path figures: excursion, curvature
        _closure_report(run_dir, sim_dir, args, run_config, truth)
    history = json.loads((run_dir / "history.json").read_text())  # every epoch, also those of earlier sessions
    wall = [h["seconds"] for h in history]
    cpu = [h["cpu_seconds"] for h in history]
    peak = max(h["peak_memory_mb"] for h in history)
    print(f"time per epoch: {np.mean(wall):.1f} s wall, {np.mean(cpu):.1f} s CPU of rank 0 (mean of {len(wall)}, "
          f"{args.procs} process(es)); "
          + ("evaluated only; " if args.evaluate_only else f"training in all {t_train:.0f} s (set-up included); ")
          + f"simulation {t_sim:.0f} s; "
          f"peak memory {peak:.0f} MB per process; benchmark {time.perf_counter() - t_bench:.0f} s")
    return 0


def _closure_report(run_dir: Path, sim_dir: Path, args, run_config: dict, truth: dict) -> None:
    """The closure figures of the run (and of the oracle), printed and as a RESULTS.md row."""
    import subprocess

    from napari_flex3d.evaluate.closure import oracle_closure_figures, run_closure_figures

    rows = {"trained": run_closure_figures(run_dir, sim_dir)}
    if args.oracle:
        t0 = time.perf_counter()
        rows["oracle"] = oracle_closure_figures(sim_dir, box=run_config["training_box"],
                                                n=len(np.load(run_dir / "latents.npy")),
                                                latents_file=Path(args.out) / "oracle_latents.npy")
        print(f"oracle: {time.perf_counter() - t0:.0f} s")
    print("Closure figures (evaluate/closure.py): |Spearman|; moving-domain correlation open / middle / closed; "
          "excursion (projected, RMS ratio); span (matched true coordinates at the latent's 3rd/97th percentiles | "
          "those particles' own); curvature (the truth's second mode carried, relative modes trained / true)")

    def cells(f):
        return [f"{f['spearman']:.3f}", " / ".join(f"{c:.3f}" for c in f["moving_corr"]),
                f"{f['excursion']:.2f} ({f['excursion_rms']:.2f})",
                f"{f['span']:.2f} ({f['span_match'][0]:+.2f}..{f['span_match'][1]:+.2f} for "
                f"{f['span_true'][0]:+.2f}..{f['span_true'][1]:+.2f})",
                f"{f['curvature']:.2f} ({f['modes']['trained'][min(len(f['modes']['trained']) - 1, 1)]:.3f} / "
                f"{f['modes']['true'][min(len(f['modes']['true']) - 1, 1)]:.3f})"]

    for name, f in rows.items():
        print(f"  {name:8s} " + " | ".join(cells(f)))
    history = json.loads((run_dir / "history.json").read_text())
    val = history[-1].get("val_loss") if history else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    s = run_config["settings"]
    print("RESULTS.md row (## closure):")
    print(f"| {time.strftime('%Y-%m-%d')} | {commit} | CPU2 | {truth['n_particles']} particles, box {truth['box']}, SNR "
          f"{truth['snr']}, {truth['closure']['occupancy'] if 'closure' in truth else truth['motion']}, K="
          f"{s['latent_dim']}, {s['epochs']} epochs, rigidity {_rigidity_text(run_dir, s)} | "
          + " | ".join(f"{a} [{b}]" for a, b in zip(cells(rows["trained"]), cells(rows["oracle"]) if "oracle" in rows
                                                       else [""] * 5))
          + f" | {val if val is None else round(val, 2)} |")


def _rigidity_text(run_dir: Path, settings: dict) -> str:
    """The run's rigidity weight: fixed, or the weights tried, their validation losses and the choice."""
    scale = settings.get("rigidity_scale", "cell")
    path = run_dir / "rigidity_choice.json"
    if settings.get("rigidity_choice", "fixed") != "validation" or not path.is_file():
        return f"{settings.get('rigidity_lambda')} ({scale} scale, fixed)"
    c = json.loads(path.read_text())
    tried = ", ".join(f"{w:g}: {v:.2f}" for w, v in zip(c["weights"], c.get("validation_loss", [])))
    return (f"{c['chosen']:g} chosen ({scale} scale; validation loss after {c.get('trial_steps')} trial steps: {tried}; "
            f"{c.get('seconds', float('nan')):.0f} s)")


def _train_torchrun(config, run_dir: Path, procs: int, resume: bool, log_path: Path) -> None:
    """``flex3d train`` with these settings under ``torchrun --standalone --nproc-per-node procs``."""
    import dataclasses
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           "-m", "napari_flex3d.cli", "train"]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is not None and value != "" and value != f.default:
            cmd += [f"--{f.name.replace('_', '-')}", str(value)]
    if resume:
        cmd += ["--resume"]
    print(" ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    raise SystemExit(main())
