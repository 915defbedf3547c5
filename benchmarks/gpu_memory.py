"""Estimated GPU memory of a training step per box and batch, and the estimate checked on the CPU.

The default prints tables of :func:`napari_flex3d.training.memory.estimate_step_memory` (what
``flex3d train`` compares with the free GPU memory before it starts) for the default model
(K=2, a 6 x 64 flow, cubic kernel, grid inference 9 x 9, 2 sweeps) on a molecule whose
solvent mask covers ``--mask-fraction`` of the box, meshed as training does by default
(``ModelSize.typical``); inference at the training box and at half of it (``--latent-box``); and the largest
batch that fits GPUs of 24, 40 and 80 GB.

``--measure`` checks the estimate against the peak tensor bytes that ``torch.profiler``
records on the CPU (``profile_memory=True``) for the model update and the latent inference
of one step, on a simulated dataset at several boxes, mask dilations and batches (slow:
about a minute per model on one free core).

    python benchmarks/gpu_memory.py
    python benchmarks/gpu_memory.py --measure --sim /tmp/sim64
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import src_on_path

src_on_path()

from napari_flex3d.config import TrainConfig  # noqa: E402
from napari_flex3d.training.memory import HEADROOM, ModelSize, estimate_step_memory, largest_batch  # noqa: E402

GB = 1e9


def table(boxes, batches, mask_fraction: float, half_box_inference: bool) -> list[str]:
    lines = ["| box | " + " | ".join(f"batch {b}" for b in batches) + " | largest batch on 24 / 40 / 80 GB |",
             "| --- |" + " --- |" * (len(batches) + 1)]
    for box in boxes:
        config = TrainConfig(latent_box=box // 2 if half_box_inference else None)
        size = ModelSize.typical(box, config, mask_fraction)
        view = ModelSize.typical(box // 2, config, mask_fraction) if half_box_inference else None

        def need(batch: int, micro: int | None = None) -> float:
            est = estimate_step_memory(config, size, 100_000, "cuda", view, batch=batch, micro_batch=micro)
            return HEADROOM * est.step + est.resident

        cells = [f"{need(b) / GB:.1f} GB" for b in batches]
        fits = [largest_batch(lambda b, gb=gb: need(b) <= gb * GB, 4096) for gb in (24, 40, 80)]
        fits = [">4,000" if b == 4096 else f"{b:,}" for b in fits]
        lines.append(f"| {box} | " + " | ".join(cells) + " | " + " / ".join(fits) + " |")
    return lines


def measure(sim: Path, threads: int) -> None:
    """The estimate against torch.profiler's peak on the CPU, for several models and batches."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from napari_flex3d.training.memory import estimate_for_run
    from napari_flex3d.training.run_state import new_run
    from napari_flex3d.training.schedule import WARMUP
    from napari_flex3d.training.step import infer_batch_latents, read_batch, train_step

    def peak(fn) -> int:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        changes = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
        return int(np.cumsum([c for _, c in changes]).max())

    torch.set_num_threads(threads)
    if not (sim / "particles.star").is_file():
        from napari_flex3d.simulate.dataset import simulate_dataset

        simulate_dataset(sim, n_particles=160, box=64, apix=3.0, snr=0.1, motion="hinge", seed=0)
    print("| box | voxels | cells | batch | update est / measured | inference est / measured |")
    print("| --- | --- | --- | --- | --- | --- |")
    for box, dilate, cell in [(32, 6.0, None), (48, 6.0, None), (64, 6.0, None), (48, 30.0, None), (64, 30.0, None),
                              (64, 30.0, 48.0)]:
        config = TrainConfig(particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), box=box,
                             latent_init="zero", preview_every=0, flow_init_a=1.0, mask_dilate_a=dilate,
                             mesh_cell_size_a=cell, threads=threads)
        run = new_run(config, Path(tempfile.mkdtemp()), torch.device("cpu"))
        train_step(run, np.arange(2), WARMUP, 0.5)  # Adam's moments allocated
        for b in (4, 16, 64):
            idx = np.arange(b)
            batch = read_batch(run, idx)
            update = peak(lambda: train_step(run, idx, WARMUP, 0.5, batch=batch))
            infer = peak(lambda: infer_batch_latents(run, batch, run.latents[idx], box / 4))
            est = estimate_for_run(run, batch=b)
            print(f"| {box} | {run.model.canonical.n_voxels} | {run.model.cells.shape[0]} | {b} | "
                  f"{(est.update + est.optimiser // 3) / 1e6:.1f} / {update / 1e6:.1f} MB | "
                  f"{est.inference / 1e6:.1f} / {infer / 1e6:.1f} MB |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boxes", default="64,96,128,160,192,256")
    p.add_argument("--batches", default="64,128,256,512")
    p.add_argument("--mask-fraction", type=float, default=0.15, help="fraction of the box inside the solvent mask")
    p.add_argument("--measure", action="store_true", help="check the estimate against torch.profiler on the CPU")
    p.add_argument("--sim", default="/tmp/flex3d_gpu_memory_sim", help="simulated dataset for --measure (made if absent)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.measure:
        measure(Path(a.sim), a.threads)
        return 0
    boxes = [int(b) for b in a.boxes.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    for half in (False, True):
        print(f"\nestimated GPU memory of a training step (model + step x {HEADROOM}), mask {a.mask_fraction:.0%} of "
              f"the box, inference at {'half the box (--latent-box)' if half else 'the training box'}:")
        print("\n".join(table(boxes, batches, a.mask_fraction, half)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
