"""Candidate criteria for choosing the rigidity weight, measured on the choice's own trials.

Runs a small training up to the rigidity choice (``--rigidity-choice validation``), takes the
same start through a trial of every weight of the ladder (no early stop), and prints for each
trial (``d_*``: excess over the trial with the lowest validation loss, mean and standard error
of the paired differences):

- ``val``: the validation loss at the trial's band (latents inferred there);
- ``val_end``: the held-out data term at the final band (``band_end``), latents fixed at those
  inferred at the trial's band, the map band-limited there (the choice's guard since ch12);
- ``outer``: the held-out data term in the outer half of the trial's band only;
- ``strain``: the flow's rigidity energy per particle (the prior without its ``lambda``) at the
  held-out latents; ``warp_fraction``: the least strained held-out particle's over the mean (1:
  the same deformation at every latent, a warped canonical frame); ``strain_min`` the least over
  a grid of 21 latents, ``strain_of_mean`` that of the mean displacement; ``excursion_a``: RMS
  vertex displacement between the held-out latents' 5th and 95th percentiles (K=1);
- with ``--split``, the half-set agreement of the flow: the trial run again on each half of
  its minibatches' particles, and the correlation of the two flows' displacements about their
  mean at the held-out latents.

Data sets: ``hinge`` (tests/conftest.py ``trained_hinge``: 2,000 particles, box 48 trained at
24, SNR 0.3, floor 0.5), ``closure`` (tests/evaluate/test_closure_recovery.py: 1,000 particles,
box 32, SNR 0.3), and ``hinge32`` / ``twist32`` / ``closure32`` (benchmarks/recovery.py
``--n-particles 2000 --box 32 --snr 0.05 --epochs 6``). Rows ch12-ch16 of
benchmarks/RESULTS.md (## rigidity choice).

    python benchmarks/rigidity_criteria.py --data hinge --out /tmp/rc_hinge
    python benchmarks/rigidity_criteria.py --data closure32 --sim SIM --out /tmp/rc --warmup-fraction 0.125
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


class _Done(Exception):
    pass


def _simulate(data: str, sim_dir: Path, seed: int):
    from napari_flex3d.simulate.dataset import simulate_dataset

    if (sim_dir / "particles.star").exists():
        return
    if data == "hinge":
        simulate_dataset(sim_dir, n_particles=2000, box=48, apix=2.0, snr=0.3, motion="hinge", seed=seed)
    elif data == "closure":
        simulate_dataset(sim_dir, n_particles=1000, box=32, apix=6.0, snr=0.3, motion="closure", seed=seed,
                         n_atoms=1500)
    else:  # benchmarks/recovery.py --motion M --n-particles 2000 --box 32 --snr 0.05
        from napari_flex3d.simulate.closure import ClosureSpec

        closure = ClosureSpec(closure_deg=40.0, occupancy="bimodal") if data == "closure32" else None
        simulate_dataset(sim_dir, n_particles=2000, box=32, apix=6.0, snr=0.05, motion=data.removesuffix("32"),
                         seed=seed, closure=closure)


def _config(data: str, sim_dir: Path, run_dir: Path, extra: dict):
    from napari_flex3d.config import TrainConfig

    common = dict(particles=str(sim_dir / "particles.star"), map=str(sim_dir / "consensus.mrc"), out=str(run_dir),
                  latent_dim=1, epochs=4, warmup_epochs=1, batch=100, kernel="linear", preview_every=0, threads=1,
                  rigidity_choice="validation")
    if data == "hinge":
        common.update(box=24, rigidity_floor=0.5)
    if data.endswith("32"):  # benchmarks/recovery.py's settings: the training's defaults, 6 epochs, batch 256
        common.update(epochs=6, batch=256, kernel="cubic", warmup_epochs=2)
    common.update(extra)
    return TrainConfig(**common)


def _fixed_latent_losses(run, band: float, lo: float | None = None) -> np.ndarray:
    """Held-out data terms at the stored latents, map and data at ``band`` (minus those at ``lo``)."""
    import torch

    from napari_flex3d.training.step import data_terms, read_batch

    out = []
    for b in (band, lo):
        if b is None:
            continue
        fp = b * run.box / 2
        run.model.max_freq_px = fp
        with torch.no_grad():
            values = run.model.canonical_values()
            losses = []
            for s in range(0, len(run.val_idx), run.config.batch):
                idx = run.val_idx[s : s + run.config.batch]
                batch = read_batch(run, idx)
                z = run.latents[torch.as_tensor(idx, dtype=torch.long)]
                losses.append(data_terms(run, batch, z, fp, values=values).double())
        out.append(torch.cat(losses).numpy())
    return out[0] if len(out) == 1 else out[0] - out[1]


def _flow_figures(run) -> dict:
    import torch

    zv = run.latents[torch.as_tensor(run.val_idx, dtype=torch.long)]
    with torch.no_grad():
        strain = run.model.rigidity(zv).double().numpy()
        lo, hi = np.quantile(zv[:, 0].numpy(), [0.05, 0.95])
        grid = torch.linspace(float(zv.min()), float(zv.max()), 21, dtype=zv.dtype)[:, None]
        strain_grid = run.model.rigidity(grid).double().numpy()
        d = run.model.displacements(torch.tensor([[lo], [hi]], dtype=zv.dtype))
        exc = float((d[1] - d[0]).square().sum(-1).mean().sqrt())
        d_mean = run.model.displacements(zv).mean(0)
        from napari_flex3d.mesh.rigidity import rigidity_energy

        m = run.model
        strain_of_mean = float(rigidity_energy(m.vertices_a, d_mean[None], m.cells, m.rigidity_weights,
                                               rest_inv=m.rest_inv.to(d_mean))[0])
    return {"strain": float(strain.mean()), "strain_min": float(strain_grid.min()), "strain_min_val": float(strain.min()),
            "warp_fraction": float(strain.min() / strain.mean()), "strain_of_mean": strain_of_mean, "excursion_a": exc}


def _split_agreement(run, batches, weight, start, restore, cfg, band) -> float:
    """Correlation of the vertex displacements at the held-out latents of two trials, each on one
    half of every minibatch's particles (from the same start)."""
    import dataclasses

    import torch

    from napari_flex3d.training.schedule import phase_of_step
    from napari_flex3d.training.step import train_step

    zv = run.latents[torch.as_tensor(run.val_idx, dtype=torch.long)].clone()
    disps = []
    for half in (0, 1):
        restore(run, start)
        run.config = dataclasses.replace(cfg, rigidity_lambda=weight, rigidity_choice="fixed")
        for s, idx in enumerate(batches):
            phase = phase_of_step(cfg.warmup_epochs, s, cfg.warmup_epochs, cfg.flow_batches, cfg.structure_batches)
            train_step(run, idx[half::2], phase, band)
        with torch.no_grad():
            d = run.model.displacements(zv).double()
        disps.append(d - d.mean(0, keepdim=True))  # the motion about its mean (the frame's offset left out)
    a, b = (x.flatten() for x in disps)
    return float((a @ b) / math.sqrt(float((a @ a) * (b @ b))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["hinge", "closure", "hinge32", "twist32", "closure32"], required=True)
    p.add_argument("--sim", default=None, help="an existing simulation of --data (default OUT/sim)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed")
    p.add_argument("--warmup-fraction", type=float, default=None,
                   help="the warm-up's weight as a fraction of the ladder's top (default config.RIGIDITY_WARMUP_FRACTION)")
    p.add_argument("--out", required=True)
    p.add_argument("--split", action="store_true", help="also the half-set agreement (2 more trials per weight)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    import napari_flex3d.config as config_module
    from napari_flex3d.training import rigidity_choice as rc

    if args.warmup_fraction is not None:
        config_module.RIGIDITY_WARMUP_FRACTION = args.warmup_fraction
    from napari_flex3d.training.loop import train_run

    out = Path(args.out)
    sim_dir, run_dir = Path(args.sim) if args.sim else out / "sim", out / "run"
    _simulate(args.data, sim_dir, args.seed)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    config = _config(args.data, sim_dir, run_dir, {})
    rows, state = [], {}
    original = rc.validation_losses
    rc.MIN_Z = math.inf  # every weight of the ladder is tried

    def measured(run, band):
        per = original(run, band)
        t0 = time.process_time()
        cfg = run.config
        row = {"weight": cfg.rigidity_lambda, "band": band, "val": float(per.mean()), "_val": per}
        row["_end"] = _fixed_latent_losses(run, cfg.band_end)
        row["_outer"] = _fixed_latent_losses(run, band, band / 2)
        row["val_end"], row["outer"] = float(row["_end"].mean()), float(row["_outer"].mean())
        row.update(_flow_figures(run))
        rows.append(row)
        row["cpu_s"] = time.process_time() - t0
        if len(rows) == len(rc.LADDER):
            state["run"], state["band"] = run, band
            raise _Done
        return per

    rc.validation_losses = measured
    snap = {}
    orig_snapshot = rc._snapshot

    def first_snapshot(run):
        s = orig_snapshot(run)
        snap.setdefault("start", s)
        snap.setdefault("batches", rc._trial_batches(run))
        snap.setdefault("config", run.config)
        return s

    rc._snapshot = first_snapshot
    t0 = time.process_time()
    try:
        for _ in train_run(config, run_dir):
            pass
    except _Done:
        pass
    print(f"data {args.data}: trials done after {time.process_time() - t0:.1f} s CPU")
    best = min(rows, key=lambda r: r["val"])
    for r in rows:
        for key in ("val", "end", "outer"):
            src = r["_val"] if key == "val" else r["_" + key]
            ref = best["_val"] if key == "val" else best["_" + key]
            diff = src - ref
            r[f"d_{key}"] = (float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff))))
    if args.split:
        run = state["run"]
        for r in rows:
            r["split"] = _split_agreement(run, snap["batches"], r["weight"], snap["start"], rc._restore, snap["config"],
                                          state["band"])
    for r in rows:
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items() if not k.startswith("_")}))
    (out / "criteria.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
