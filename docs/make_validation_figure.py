"""Make docs/images/fsc_example.png: flex and rigid half-map FSC curves of a simulated
hinge, reconstructed with the oracle flow (fitted to the simulator's true motion); or,
with ``--rec REC`` (a reconstruction folder, e.g. the benchmark's ``rec_dir``),
docs/images/fsc_benchmark.png: its global curves beside those inside one mask, with the
mask-induced (noise-substitution) curve and the mask's informative limit.

    python docs/make_validation_figure.py [--out-dir DIR]
    python docs/make_validation_figure.py --rec REC [--mask arm]
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


def plot_reconstruction(rec: Path, mask: str, target: Path) -> None:
    """Two panels from ``rec/fsc.csv`` and ``rec/report.json``: global and ``mask`` FSC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    table = np.genfromtxt(rec / "fsc.csv", delimiter=",", names=True)
    report = json.loads((rec / "report.json").read_text())
    f = table["frequency_1_per_a"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100, sharey=True)
    panels = (("global", "fsc_{mode}", "global"), (mask, "fsc_{mode}_" + mask, mask))
    for ax, (title, column, key) in zip(axes, panels):
        for mode, colour in (("flex", "C0"), ("rigid", "C1")):
            res = report["maps"][mode][key]["fsc_0143_a"]
            ax.plot(f, table[column.format(mode=mode)], color=colour, lw=1.6, ls="-" if mode == "flex" else "--",
                    label=f"{mode}: {res:.2f} Å")
        if key != "global":
            induced = f"mask_induced_flex_{mask}"
            ax.plot(f, table[induced], color="grey", lw=1.0, ls=":", label="mask-induced (randomised maps)")
            entry = report["maps"]["flex"][key]
            ax.axvline(1.0 / entry["randomised_from_a"], color="grey", lw=0.8, ls="-.",
                       label=f"phases randomised past {entry['randomised_from_a']:.1f} Å")
            band = entry.get("uninformative_a")
            if band:
                ax.axvspan(1.0 / band[0], 1.0 / band[1], color="grey", alpha=0.15, label="uninformative shells")
            limit = entry.get("informative_to_a")
            if limit and limit > 2.0 * report["apix"] + 1e-6:
                ax.axvspan(1.0 / limit, f[-1], color="red", alpha=0.08, label=f"not informative past {limit:.1f} Å")
        ax.axhline(0.143, color="k", lw=0.6, ls=":")
        ax.axhline(0.5, color="k", lw=0.6, ls=":")
        ax.set_xlim(0, f[-1])
        ax.set_ylim(-0.1, 1.02)
        ax.set_xlabel("spatial frequency (1/Å)")
        if key == "global":
            ax.set_title(f"{title}: FSC 0.143")
        else:
            limit = report["maps"]["flex"][key].get("informative_to_a")
            ax.set_title(f"inside mask '{mask}' (corrected; informative to {limit:.1f} Å)")
        ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("FSC")
    fig.suptitle(f"{sum(report['particles_used'].values())} particles, box {report['box']} at "
                 f"{report['apix']:.3g} Å; training Nyquist {report['training_nyquist_a']:.1f} Å", fontsize=10)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--rec", default=None, help="plot this reconstruction folder instead of making one")
    parser.add_argument("--mask", default="arm")
    args = parser.parse_args()
    if args.rec:
        plot_reconstruction(Path(args.rec), args.mask, Path(__file__).parent / "images" / "fsc_benchmark.png")
        return
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
