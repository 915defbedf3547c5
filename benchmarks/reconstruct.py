"""Benchmark of the motion-corrected half-map reconstruction (`flex3d reconstruct`).

Simulates a hinge (default 20,000 particles at box 64, 3 Å/px, SNR 0.1), takes a flow generator
(either a trained run, ``--run``, or by default the oracle fitted to the simulator's true
motion at the training box) and solves flex and rigid half maps at the full box with the
same L-BFGS solver. Prints the global FSC resolutions, the FSC inside soft masks around
the moving domain (noise-substitution corrected) with the resolution up to which each
mask's FSC is informative, how well each map matches the true rest state in that domain,
the training box's Nyquist, time and peak memory, and as its last line one JSON object
with the figures.

    python benchmarks/reconstruct.py [--n-particles 20000] [--box 64] [--apix 3] [--train-box 32] [--run RUN]
    python benchmarks/reconstruct.py ... --run RUN_A --independent-halves RUN_B

With ``--independent-halves RUN_B`` the flex half maps are solved with independent flows:
half A with ``--run`` (trained with ``flex3d train --half-set A``), half B with ``RUN_B``
(``--half-set B``), as ``flex3d reconstruct --run RUN_A --run-b RUN_B`` does. The static
body's mask is reported beside the arm's as the control: no real gain is possible there.

The simulated molecule, its motion and its Gaussian atoms (1.5 voxels wide) all scale with
the box, so what matters is the box in voxels: the atoms' envelope (B = 8 pi^2 sigma^2,
1600 Å^2 at 3 Å/px) limits the resolution to about shell N/3, while the true rest state and
the population average differ inside the arm only past about shell 14 (FSC 0.85 there,
0.5 at shell 20). At box 48 the two limits meet and flex cannot gain much in the arm;
at box 64 and above it can.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import peak_memory_gb  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-particles", type=int, default=20000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--apix", type=float, default=3.0)
    p.add_argument("--train-box", type=int, default=32)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--run", default=None, help="a trained run on the same particles (default: the oracle flow)")
    p.add_argument("--independent-halves", default=None, metavar="RUN_B",
                   help="independent half flows: --run was trained with --half-set A, RUN_B with --half-set B")
    p.add_argument("--rec-name", default="rec", help="output folder name inside --work")
    p.add_argument("--work", default=None, help="folder for the simulation and outputs (default: a temporary one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_flex3d.io.mrc import read_map
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.reconstruct.halfmaps import ReconstructFinished, ReconstructProgress, solve_half_maps
    from napari_flex3d.ops.fsc import fsc_resolution
    from napari_flex3d.reconstruct.validation import masked_fsc
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.simulate.oracle import domain_mask, true_motion_model

    work = Path(args.work or tempfile.mkdtemp(prefix="flex3d_bench_rec_"))
    t0 = time.time()
    sim_dir = work / "sim"
    if not (sim_dir / "particles.star").exists():
        simulate_dataset(sim_dir, n_particles=args.n_particles, box=args.box, apix=args.apix, snr=args.snr,
                         motion="hinge", seed=0)
    t_sim = time.time() - t0
    ps = read_particles(sim_dir / "particles.star")
    if args.independent_halves and not args.run:
        p.error("--independent-halves RUN_B needs --run RUN_A")
    if args.independent_halves:
        from napari_flex3d.model.run import load_run

        _, _, model = load_run(args.run)
        latents = None
        source = f"independent half flows {args.run} (A) / {args.independent_halves} (B)"
    elif args.run:
        from napari_flex3d.model.run import load_run

        _, _, model = load_run(args.run)
        latents = torch.as_tensor(np.load(Path(args.run) / "latents.npy"), dtype=torch.float32)
        source = f"trained run {args.run}"
    else:
        torch.manual_seed(0)
        model, latents = true_motion_model(sim_dir, box=args.train_box)
        source = "oracle flow (fitted to the simulator's true motion)"
    arm = domain_mask(sim_dir, 2, box=args.box)
    # the arm mask is what a user would draw around the moving domain (6 Å dilation, 15 Å edge);
    # a wider, softer one around linker + arm is reported too
    arm_wide = domain_mask(sim_dir, (1, 2), box=args.box, dilate_a=15.0, soft_a=30.0)
    body = domain_mask(sim_dir, 0, box=args.box)  # the control: the body does not move
    masks = {"arm": arm, "arm_wide": arm_wide, "body": body}
    rec_dir = work / args.rec_name
    t1, cpu1 = time.time(), time.process_time()
    report = None
    if args.independent_halves:
        from napari_flex3d.reconstruct.halfmaps import reconstruct_run

        events = reconstruct_run(args.run, sim_dir / "particles.star", rec_dir, run_b=args.independent_halves,
                                 masks=masks, iterations=args.iterations, device=args.device)
    else:
        events = solve_half_maps(model, latents, ps, rec_dir, masks=masks, iterations=args.iterations,
                                 device=args.device)
    for ev in events:
        if isinstance(ev, ReconstructProgress) and ev.iteration in (1, args.iterations):
            print(f"  {ev.mode} half {ev.half}: iteration {ev.iteration}/{ev.iterations}, objective {ev.loss:.6g}, "
                  f"elapsed {ev.elapsed_s:.0f} s, eta {ev.eta_s:.0f} s", flush=True)
        if isinstance(ev, ReconstructFinished):
            report = ev.report
    t_rec, cpu_rec = time.time() - t1, time.process_time() - cpu1

    truth = json.loads((sim_dir / "truth" / "truth.json").read_text())
    rest_file = next(s["file"] for s in truth["states"] if np.allclose(s["coords"], 0.0))
    rest = torch.as_tensor(np.array(read_map(sim_dir / "truth" / rest_file).data, dtype=np.float32))
    vs_rest = {}  # the half maps' average against the true rest state inside each mask (flattened masked FSC)
    for mode in ("flex", "rigid"):
        a = torch.as_tensor(np.array(read_map(rec_dir / f"{mode}_half_A.mrc").data, dtype=np.float32))
        b = torch.as_tensor(np.array(read_map(rec_dir / f"{mode}_half_B.mrc").data, dtype=np.float32))
        for name, m in masks.items():
            r = masked_fsc(0.5 * (a + b), rest, ps.apix, mask=torch.as_tensor(m))
            vs_rest[(mode, name)] = (r.resolution_05_a, fsc_resolution(r.curve, args.box, ps.apix, 0.143))

    maps = report["maps"]
    out = {
        "source": source,
        "independent_half_flows": bool(report.get("independent_half_flows")),
        "n_particles": len(ps),
        "box": args.box,
        "apix": float(ps.apix),
        "snr": args.snr,
        "train_box": int(model.box),
        "training_nyquist_a": report["training_nyquist_a"],
        "iterations": args.iterations,
        "flex_fsc0143_global_a": maps["flex"]["global"]["fsc_0143_a"],
        "rigid_fsc0143_global_a": maps["rigid"]["global"]["fsc_0143_a"],
    }
    for name in masks:
        for mode in ("flex", "rigid"):
            e = maps[mode][name]
            out[f"{mode}_fsc0143_{name}_a"] = e["fsc_0143_a"]
            out[f"{mode}_{name}_informative_to_a"] = e.get("informative_to_a")
            out[f"{mode}_{name}_uninformative_a"] = e.get("uninformative_a")
            out[f"{mode}_{name}_fsc0143_informative"] = e.get("fsc_0143_informative")
            out[f"{mode}_{name}_mask_induced_fsc_max"] = e.get("mask_induced_fsc_max")
            rest05, rest0143 = vs_rest[(mode, name)]
            out[f"{mode}_vs_true_rest_{name}_fsc05_a"], out[f"{mode}_vs_true_rest_{name}_fsc0143_a"] = rest05, rest0143
    out.update({
        "flex_objective": maps["flex"]["objective"],
        "rigid_objective": maps["rigid"]["objective"],
        "simulate_s": t_sim,
        "reconstruct_s": t_rec,
        "reconstruct_cpu_s": cpu_rec,
        "peak_rss_mb": peak_memory_gb("cpu") * 1e3,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "rec_dir": str(rec_dir),
    })
    print(f"{len(ps)} particles, box {args.box} at {ps.apix:.3g} Å ({source}); training box {model.box} "
          f"(Nyquist {out['training_nyquist_a']:.2f} Å)")
    print(f"global FSC 0.143: flex {out['flex_fsc0143_global_a']:.2f} Å, rigid {out['rigid_fsc0143_global_a']:.2f} Å")
    for name, what in (("arm", "moving-domain (arm) mask"), ("arm_wide", "wider linker+arm mask"),
                       ("body", "static body mask (control)")):
        f = {m: out[f"{m}_fsc0143_{name}_a"] for m in ("flex", "rigid")}
        lim = {m: out[f"{m}_{name}_informative_to_a"] for m in ("flex", "rigid")}
        band = {m: out[f"{m}_{name}_uninformative_a"] for m in ("flex", "rigid")}
        print(f"{what} FSC 0.143: flex {f['flex']:.2f} Å, rigid {f['rigid']:.2f} Å; informative to "
              f"{lim['flex']:.2f} / {lim['rigid']:.2f} Å (uninformative band {band['flex']} / {band['rigid']}; "
              f"mask-induced FSC up to {out[f'flex_{name}_mask_induced_fsc_max']:.2f})")
        t = {m: (out[f"{m}_vs_true_rest_{name}_fsc05_a"], out[f"{m}_vs_true_rest_{name}_fsc0143_a"])
             for m in ("flex", "rigid")}
        print(f"  vs the true rest state, FSC 0.5 / 0.143: flex {t['flex'][0]:.2f} / {t['flex'][1]:.2f} Å, "
              f"rigid {t['rigid'][0]:.2f} / {t['rigid'][1]:.2f} Å")
    print(f"time: simulate {t_sim:.0f} s, reconstruct {t_rec:.0f} s (CPU {cpu_rec:.0f} s, {out['threads']} thread(s), "
          f"load {out['load_average_1min']:.1f}); peak memory {out['peak_rss_mb']:.0f} MB")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
