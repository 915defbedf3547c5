"""Draw docs/images/mesh_over_map.png: a simulated consensus map with its solvent mask
outline and the tetrahedral mesh 3DFlex deforms (edges projected along z).

    python docs/make_model_figure.py [--sim DIR]   # DIR from `flex3d simulate` (made if absent)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from napari_flex3d.io.mrc import read_map  # noqa: E402
from napari_flex3d.mesh.build import build_mesh  # noqa: E402
from napari_flex3d.mesh.masks import solvent_mask  # noqa: E402
from napari_flex3d.mesh.mesh import mesh_edges  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sim", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "mesh_over_map.png"))
    args = parser.parse_args()
    sim = Path(args.sim) if args.sim else Path(tempfile.mkdtemp()) / "sim"
    if not (sim / "consensus.mrc").exists():
        from napari_flex3d.simulate.dataset import simulate_dataset

        simulate_dataset(sim, n_particles=1500, box=64, apix=3.0, snr=0.1, motion="hinge", seed=0)
    m = read_map(sim / "consensus.mrc")
    vol, apix = np.asarray(m.data, dtype=np.float32), float(m.apix)
    mask = solvent_mask(vol, apix)
    mesh = build_mesh(mask.binary, apix)
    box = vol.shape[0]
    edges = mesh_edges(mesh)
    xy = mesh.vertices_a[:, :2] / apix + box // 2  # pixel coordinates of (x, y)
    segs = np.stack([xy[edges[:, 0]], xy[edges[:, 1]]], axis=1)

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), dpi=110)
    proj = vol.sum(axis=0)
    axes[0].imshow(proj, cmap="gray", origin="lower")
    axes[0].contour(mask.binary.any(axis=0), levels=[0.5], colors="tab:orange", linewidths=1.2)
    axes[0].set_title("consensus map (sum along z) and mask outline")
    axes[1].imshow(proj, cmap="gray", origin="lower")
    axes[1].add_collection(LineCollection(segs, colors="tab:cyan", linewidths=0.3, alpha=0.5))
    axes[1].set_title(f"tetrahedral mesh: {len(mesh.vertices_a)} vertices, {len(mesh.cells)} cells")
    for ax in axes:
        ax.set_xlabel("x (px)")
        ax.set_ylabel("y (px)")
        ax.set_xlim(0, box - 1)
        ax.set_ylim(0, box - 1)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}: box {box}, {apix} Å/px, mask {mask.binary.mean():.1%} of the box, "
          f"{len(mesh.vertices_a)} vertices, {len(mesh.cells)} cells")


if __name__ == "__main__":
    main()
