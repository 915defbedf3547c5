"""``flex3d demo``: simulate a flexible molecule, train on it, play the motion, say how well it worked.

simulate -> mesh (built from the consensus map inside training) -> train -> a volume
series along the first latent axis (MRCs + ChimeraX script, an mp4 if imageio-ffmpeg is
there) -> recovery figures against the simulation's ground truth. Lives in ``evaluate``
because it drives three features (simulate, training, explore) and scores the result. It
imports ``config`` and, inside the function (so ``flex3d --help`` stays quick), those three
features and ``evaluate.recovery``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import TrainConfig

__all__ = ["demo_config", "run_demo"]


def demo_config(sim_dir, run_dir, **overrides) -> TrainConfig:
    """The settings the demo trains with: small enough for a laptop CPU (4 epochs, 1 of warm-up,
    batches of 100, the linear kernel), enough to recover a hinge at SNR 0.3."""
    sim_dir = Path(sim_dir)
    settings = dict(
        particles=str(sim_dir / "particles.star"),
        map=str(sim_dir / "consensus.mrc"),
        out=str(run_dir),
        latent_dim=1,
        epochs=4,
        warmup_epochs=1,
        batch=100,
        kernel="linear",
        preview_every=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def run_demo(out_dir, progress: bool = True, n_particles: int = 2000, box: int = 32, motion: str = "hinge",
             snr: float = 0.3, seed: int = 0, **train_overrides) -> dict:
    """Run the whole pipeline into ``out_dir`` (``sim/``, ``run/``, ``series/``) and print the figures.

    Returns ``{"spearman": (k,), "canonical_correlations": (...), "series": {...}, "run_dir": path}``.
    """
    from ..explore.generate import generate_axis_series
    from ..simulate.dataset import simulate_dataset
    from ..training.agreement import canonical_correlations
    from ..training.loop import train_run
    from ..training.progress import consume_events
    from .recovery import best_spearman

    out_dir = Path(out_dir)
    sim_dir, run_dir, series_dir = out_dir / "sim", out_dir / "run", out_dir / "series"
    apix = 192.0 / box  # the molecule keeps its size in Å at any box
    print(f"1/4 simulating {n_particles} particles ({motion}, box {box}, SNR {snr:g}) into {sim_dir}", flush=True)
    sim = simulate_dataset(sim_dir, n_particles=n_particles, box=box, apix=apix, snr=snr, motion=motion, seed=seed,
                           progress=progress)
    if progress:
        print(sim.summary(), flush=True)
    k = 2 if motion == "both" else 1
    config = demo_config(sim_dir, run_dir, latent_dim=k, seed=seed, **train_overrides)
    print(f"2/4 training (mesh built from the consensus map) into {run_dir}", flush=True)
    consume_events(train_run(config, run_dir, cli_argv=["flex3d", "demo"]), log_path=run_dir.parent / "train.log",
                   progress=progress)
    print(f"3/4 volume series along latent axis 0 into {series_dir}", flush=True)
    series = generate_axis_series(run_dir, axis=0, frames=21, out_dir=series_dir, movie=True)
    latents = np.load(run_dir / "latents.npy", allow_pickle=False)
    coords = np.load(sim_dir / "truth" / "coords.npy", allow_pickle=False)
    rho = best_spearman(latents, coords)
    cc = canonical_correlations(latents, coords)
    print("4/4 recovery against the ground truth:", flush=True)
    print("    |Spearman| latent vs true coordinate: " + ", ".join(f"{r:.3f}" for r in rho), flush=True)
    print("    canonical correlations: " + ", ".join(f"{c:.3f}" for c in cc), flush=True)
    print(f"    series: {series['script']}" + (f", movie {series['movie']}" if series["movie"] else ""), flush=True)
    return {"spearman": rho, "canonical_correlations": cc, "series": series, "run_dir": run_dir}
