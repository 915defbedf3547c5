"""What the check for unusable particle images (NaN/Inf or constant pixels) costs a job.

Simulates a dataset (``--n-particles`` at ``--box``), damages two images, and in one process
times, alternating and repeated so that the load of a shared machine falls on both:

- ``scan``: ``io.image_check.scan_images`` (every image read once, in file order);
- ``read``: every image read once the way an epoch reads them (random minibatches of
  ``--batch`` through ``ParticleSet.images``), the I/O a run does per epoch anyway;
- ``record``: a resumed job's cost, the record's key (image names hashed, stacks stat'ed)
  and the record read, no scan;
- ``train`` / ``train_checked``: ``--epochs`` of training from a fresh run folder, with the
  check patched out and with it.

Prints the ratios ``train_checked / train`` (the cost the user sees), ``scan / read`` (the
scan against one epoch's reading; a run reads the stacks ``--epochs`` times) and
``record / scan``, and the key's time at 10^6 names.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from _common import parser, src_on_path

src_on_path()


def _damage(stack: Path) -> None:
    from napari_flex3d.io.mrc import read_header

    h = read_header(stack)
    data = np.memmap(stack, dtype=h.dtype, mode="r+", offset=h.data_offset, shape=(h.nz, h.ny, h.nx))
    data[3, 1, 1] = np.nan
    data[11] = 0.0
    data.flush()


def _train(sim: Path, out: Path, epochs: int, batch: int, checked: bool) -> float:
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.io import image_check
    from napari_flex3d.training.loop import train_run

    config = TrainConfig(particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(out),
                         epochs=epochs, batch=batch, latent_dim=1, hidden=32, layers=3, preview_every=0,
                         latent_init="zero", device="cpu", checkpoint_minutes=0.0)
    real = image_check.scan_images
    if not checked:  # the run as it was before the check: the two damaged images given as unusable
        def no_check(ps, **_):
            return image_check.UnusableImages(len(ps), np.array([3, 11]), ("a", "b"), ("x", "y"))

        image_check.scan_images = no_check
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in train_run(config, out):
                pass
        return time.perf_counter() - t0
    finally:
        image_check.scan_images = real
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    p = parser(__doc__, device=None)
    p.add_argument("--n-particles", type=int, default=2000)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    from napari_flex3d.io import image_check
    from napari_flex3d.io.particles import read_particles
    from napari_flex3d.simulate.dataset import simulate_dataset

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="flex3d-unusable-"))
    try:
        sim = work / "sim"
        simulate_dataset(sim, n_particles=args.n_particles, box=args.box, apix=192.0 / args.box, snr=0.1,
                         motion="hinge", seed=0)
        _damage(sim / "particles.mrcs")
        ps = read_particles(sim / "particles.star")
        usable = ps.subset(np.setdiff1d(np.arange(len(ps)), [3, 11]))  # what an epoch reads
        times: dict[str, list[float]] = {k: [] for k in ("scan", "read", "record", "train", "train_checked")}
        rng = np.random.default_rng(0)
        for r in range(args.repeats):
            t0 = time.perf_counter()
            found = image_check.scan_images(ps, progress=False)
            times["scan"].append(time.perf_counter() - t0)
            assert found.rows.tolist() == [3, 11], found.rows
            order = rng.permutation(len(usable))
            t0 = time.perf_counter()
            for s in range(0, len(usable), args.batch):
                usable.images(np.sort(order[s : s + args.batch]))
            times["read"].append(time.perf_counter() - t0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image_check.exclude_unusable_images(ps, work / "rec")  # writes the record (first repeat)
                t0 = time.perf_counter()
                image_check.exclude_unusable_images(ps, work / "rec")
                times["record"].append(time.perf_counter() - t0)
            for checked in ((False, True) if r % 2 == 0 else (True, False)):
                key = "train_checked" if checked else "train"
                times[key].append(_train(sim, work / f"run{r}{int(checked)}", args.epochs, args.batch, checked))
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{args.n_particles} particles, box {args.box}, batch {args.batch}, {args.epochs} epochs, "
              f"{args.repeats} repeats (medians)")
        print(f"train_checked / train = {med['train_checked'] / med['train']:.3f}")
        print(f"scan / read (one epoch's reading) = {med['scan'] / med['read']:.2f}")
        print(f"scan / train epoch = {med['scan'] / (med['train'] / args.epochs):.4f}")
        print(f"record / scan (a resumed job) = {med['record'] / med['scan']:.3f}")
        names = np.array([f"{i % 1000 + 1:06d}@Extract/job012/mic{i // 1000:05d}.mrcs" for i in range(10**6)], dtype=object)
        fake = type("PS", (), {"image_paths": np.array([str(sim / "particles.mrcs")], dtype=object)})()
        t0 = time.perf_counter()
        image_check._fingerprint(fake, names)
        print(f"record key at 10^6 names: {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
