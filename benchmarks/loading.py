"""Particle loading rate from a memory-mapped stack of 10^6 particles, beside the training rate.

Writes (once; reused while its size matches) an MRC stack of ``--n`` float32 particles
at ``--box`` in ``--dir``, builds a :class:`ParticleSet` over it in memory, then reads
random minibatches the way the training loop does (a sorted random sample of ``--batch``
particles per step) and prints particles/s for

* ``images``: the raw memory-mapped read (``ParticleSet.images``), cold (the file's
  pages dropped from the page cache with ``posix_fadvise(DONTNEED)`` first) and warm;
* ``batch``: a full training minibatch (``model.flex.batch_from_particles``: read,
  Fourier crop to ``--train-box``, CTF), cold and warm;
* ``prefetched``: the same minibatches through :class:`io.prefetch.Prefetcher` while the
  consumer spends the time one training step would take at the measured training rate;
  the stall (time the consumer waited for data) per step tells whether reading keeps up.

The training rate comes from a short ``train_run`` on a simulated set at ``--train-box``
(latent inference + update, epochs after warm-up), on this machine. The last line is one
JSON object.

    python benchmarks/loading.py                       # 10^6 x 32^2 (4.1 GB) in /tmp
    python benchmarks/loading.py --box 64 --n 1000000  # 16.4 GB
    python benchmarks/loading.py --quick               # 20,000 particles, seconds
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import parser  # noqa: E402


def write_stack(path: Path, n: int, box: int, chunk: int = 32768) -> float:
    """An ``(n, box, box)`` float32 MRC stack of noise (reused if present at that size); returns seconds."""
    import mrcfile

    want = 1024 + n * box * box * 4
    if path.is_file() and path.stat().st_size == want:
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    block = rng.standard_normal((min(chunk, n), box, box), dtype=np.float32)
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            mrc.data[s:e] = np.roll(block[: e - s], s // chunk, axis=0)
        mrc.voxel_size = 2.0
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return time.perf_counter() - t0


def drop_cache(path: Path) -> bool:
    """Ask the kernel to forget the file's cached pages (clean pages only); False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def particle_set(path: Path, n: int, box: int):
    from napari_flex3d.io.particles import OpticsGroup, ParticleSet

    rng = np.random.default_rng(1)
    optics = OpticsGroup(name="opticsGroup1", number=1, voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
                         apix=2.0, box=box)
    return ParticleSet.from_arrays(
        image_paths=str(path), image_indices=np.arange(n), defocus_u_a=rng.uniform(8000, 20000, n), optics=optics,
        rotations=np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), shifts_a=np.zeros((n, 2)),
    )


def minibatches(n: int, batch: int, count: int, seed: int = 2) -> list[np.ndarray]:
    """``count`` sorted random minibatches without repeats, as an epoch's permutation gives them."""
    perm = np.random.default_rng(seed).permutation(n)[: batch * count]
    return [np.sort(perm[i * batch : (i + 1) * batch]) for i in range(count)]


def rate(fn, batches) -> float:
    t0 = time.perf_counter()
    for idx in batches:
        fn(idx)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def training_rate(box: int, n: int, batch: int, device: str) -> float:
    """Particles/s of training (latent inference + update) after warm-up, on a simulated set."""
    from napari_flex3d.config import TrainConfig
    from napari_flex3d.simulate.dataset import simulate_dataset
    from napari_flex3d.training import events as ev
    from napari_flex3d.training.loop import train_run

    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "sim"
        simulate_dataset(sim, n_particles=n, box=box, apix=192.0 / box, snr=0.3, motion="hinge", seed=0)
        config = TrainConfig(
            particles=str(sim / "particles.star"), map=str(sim / "consensus.mrc"), out=str(Path(tmp) / "run"),
            latent_dim=2, epochs=2, warmup_epochs=1, batch=batch, preview_every=0, device=device, val_fraction=0.0,
        )
        seconds = [e.seconds for e in train_run(config, config.out) if isinstance(e, ev.EpochSummary)]
    return n / seconds[-1]


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0], device="cpu")
    p.add_argument("--n", type=int, default=1_000_000, help="particles in the stack")
    p.add_argument("--box", type=int, default=32, help="box of the stack")
    p.add_argument("--train-box", type=int, default=None, help="training box (default: --box)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=100, help="minibatches per measurement")
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "flex3d_loading"))
    p.add_argument("--train-particles", type=int, default=400, help="simulated particles for the training rate")
    p.add_argument("--no-train", action="store_true", help="skip the training rate")
    p.add_argument("--delete", action="store_true", help="delete the stack afterwards")
    p.add_argument("--quick", action="store_true", help="20,000 particles, 20 batches, 200 training particles")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.batches, a.train_particles = min(a.n, 20_000), 20, 200
    train_box = a.train_box or a.box
    from napari_flex3d.io.prefetch import Prefetcher
    from napari_flex3d.model.flex import batch_from_particles

    path = Path(a.dir) / f"stack_{a.n}x{a.box}.mrcs"
    gb = (1024 + a.n * a.box * a.box * 4) / 1e9
    print(f"stack {path}: {a.n} x {a.box}^2 float32 = {gb:.2f} GB", flush=True)
    write_s = write_stack(path, a.n, a.box)
    if write_s:
        print(f"  written in {write_s:.1f} s ({gb / write_s:.2f} GB/s)", flush=True)
    ps = particle_set(path, a.n, a.box)
    sets = minibatches(a.n, a.batch, 5 * a.batches)
    groups = [sets[i * a.batches : (i + 1) * a.batches] for i in range(5)]
    out = {"n": a.n, "box": a.box, "train_box": train_box, "batch": a.batch, "stack_gb": round(gb, 3)}

    def read_images(idx):
        return ps.images(idx)

    def read_batch(idx):
        return batch_from_particles(ps, idx, box=train_box, device=a.device)

    cold = drop_cache(path)
    out["images_cold_per_s"] = rate(read_images, groups[0])
    out["images_warm_per_s"] = rate(read_images, groups[0])
    drop_cache(path)
    out["batch_cold_per_s"] = rate(read_batch, groups[1])
    out["batch_warm_per_s"] = rate(read_batch, groups[1])
    out["page_cache_dropped"] = cold
    for k in ("images_cold_per_s", "images_warm_per_s", "batch_cold_per_s", "batch_warm_per_s"):
        print(f"{k:22s} {out[k]:12,.0f} particles/s", flush=True)

    if not a.no_train:
        tr = training_rate(train_box, a.train_particles, min(a.batch, a.train_particles // 2), a.device)
        out["train_per_s"] = tr
        print(f"{'train_per_s':22s} {tr:12,.1f} particles/s (box {train_box}, latent inference + update)", flush=True)
        step_s = a.batch / tr
        # the consumer "trains" (sleeps a step's time; a GPU step leaves the CPU free the same way)
        drop_cache(path)
        steps = groups[2][: max(4, min(a.batches, int(30 / max(step_s, 1e-3))))]
        stalls = []
        with Prefetcher(read_batch, steps) as batches:
            it = iter(batches)
            for _ in steps:
                t0 = time.perf_counter()
                next(it)
                stalls.append(time.perf_counter() - t0)
                time.sleep(step_s)
        later = float(np.mean(stalls[1:]))  # the first minibatch of an epoch has nothing to overlap with
        out["prefetch_steps"] = len(steps)
        out["prefetch_first_wait_s"] = stalls[0]
        out["prefetch_stall_per_step_s"] = later
        out["step_s"] = step_s
        print(f"prefetched (cold) at the training rate: first minibatch {stalls[0] * 1e3:.1f} ms, then a stall of "
              f"{later * 1e3:.2f} ms per step of {step_s * 1e3:.0f} ms ({len(steps)} steps)", flush=True)
        out["loading_over_training"] = out["batch_cold_per_s"] / tr
    if a.delete:
        path.unlink()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
