"""Make docs/images/fsc_example.png: flex and rigid half-map FSC curves of a simulated
hinge, reconstructed with the oracle flow (fitted to the simulator's true motion).

    python docs/make_validation_figure.py [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from napari_flex3d.io.particles import read_particles
from napari_flex3d.reconstruct.halfmaps import ReconstructFinished, solve_half_maps
from napari_flex3d.simulate.dataset import simulate_dataset
from napari_flex3d.simulate.oracle import true_motion_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    root = Path(args.out_dir or tempfile.mkdtemp())
    sim = simulate_dataset(root / "sim", n_particles=800, box=40, apix=4.8, snr=1.0, motion="hinge", seed=0)
    torch.manual_seed(0)
    model, latents = true_motion_model(root / "sim", box=24)
    ps = read_particles(sim.particles_star)
    for event in solve_half_maps(model, latents, ps, root / "rec", iterations=8):
        if isinstance(event, ReconstructFinished):
            print(json.dumps(event.report["maps"], indent=1))
    target = Path(__file__).parent / "images" / "fsc_example.png"
    shutil.copy(root / "rec" / "fsc.png", target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
