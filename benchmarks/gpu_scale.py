"""One prepared GPU run: training and reconstruction throughput, peak memory, the bandwidth bound.

Prints particles/s of

* training at boxes 128 and 180: the loop's own minibatch step (``training.step.train_step``:
  grid latent inference with the model frozen, latent noise, one Adam step), alternating
  flow and structure phases as the schedule does, default :class:`TrainConfig` (K=2,
  cubic kernel, 2 sweeps x 9 grid values, hidden 64 x 4 layers (the config's), batch
  ``--batch``), on a two-domain molecule (``benchmarks/convect_project.py``) with the
  training's default tetgen mesh (20 cells across the box, cells of at least 4 voxels);
* reconstruction at box 256: one evaluation of the full-batch gradient that every L-BFGS
  iteration of ``flex3d reconstruct`` takes per particle (flow frozen at the particles'
  latents: convect-project, CTF, whitened residual, backward to the map), in chunks;

beside each, aten operator calls per step (and kernel launches on CUDA), the peak GPU memory
(``torch.cuda.max_memory_allocated``) and the bound that the GPU's memory bandwidth puts on
it. The bound counts the bytes the fused convect-project must move at the least: per
particle and per model evaluation each
masked voxel's position and value are read (16 B; the moved positions are written and
read once more, 24 B) and its kernel taps read-modify-write the image (8 B per tap of
the 2D splat: 16 taps cubic, 4 linear), forward; the backward moves the same again plus the value and
position gradients. The bandwidth is measured here (a device-to-device copy of 1 GiB).
A measured rate far under the bound means the splat is compute- or atomics-limited
(then a Triton kernel is worth writing); near it, only fewer bytes help.

No package install is needed: run from the repository root (``src/`` is put on the path)
with torch present; ``--wheels DIR`` pip-installs the wheels in DIR first (offline).

    python benchmarks/gpu_scale.py                 # on a GPU machine (about 3-5 minutes)
    python benchmarks/gpu_scale.py --quick         # CPU, tiny sizes: checks that it runs

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import device_name, resolve_device
from _common import peak_memory_gb as _peak_gb
from _common import reset_peak_memory as _reset_peak
from _common import src_on_path as _setup_path
from _common import sync as _sync

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _install_wheels(folder: str) -> None:
    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *wheels], check=True)


def bandwidth_gbs(device, gib: float = 1.0) -> float:
    """Device memory bandwidth from a large copy: bytes read + written per second (GB/s)."""
    import torch

    n = int(gib * 2**30 / 4)
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    _sync(device)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    _sync(device)
    dt = (time.perf_counter() - t0) / reps
    del a, b
    return 2 * n * 4 / dt / 1e9


MESH_DIR: Path | None = None  # --mesh-dir: saved meshes (mesh_<box>.npz) instead of building them (no pyvista needed)


def molecule_mesh(box: int, config):
    """The two-domain molecule at ``box`` (Å/px, volume, solvent mask) and training's default mesh of it
    (read from ``MESH_DIR/mesh_<box>.npz`` where one is saved)."""
    from convect_project import APIX_AT_64, two_domain_molecule

    from napari_flex3d.mesh.build import build_mesh
    from napari_flex3d.mesh.mesh import load_mesh
    from napari_flex3d.mesh.masks import solvent_mask
    from napari_flex3d.training.setup import default_cell_size_a

    apix = APIX_AT_64 * 64 / box
    smooth, vol = two_domain_molecule(box)
    mask = solvent_mask(smooth, apix, threshold=0.5, lowpass_a=None, dilate_a=2.0, soft_pad_a=0.0).binary
    saved = MESH_DIR / f"mesh_{box}.npz" if MESH_DIR is not None else None
    if saved is not None and saved.is_file():
        mesh = load_mesh(saved)
    else:
        mesh = build_mesh(mask, apix, cell_size_a=default_cell_size_a(box, apix, config.mesh_cell_size_a))
    return apix, vol, mask, mesh


def molecule_model(box: int, config, device):
    """A FlexModel of the two-domain molecule at ``box`` built the way training builds one."""
    import torch

    from napari_flex3d.training.setup import build_model

    apix, vol, mask, mesh = molecule_mesh(box, config)
    torch.manual_seed(0)
    return build_model(vol, apix, mask, mesh, config).to(device), apix


def random_batch(model, b: int, device, seed: int = 0) -> dict:
    """Poses, shifts, CTFs and noise images for ``b`` particles (the throughput does not depend on content)."""
    import numpy as np
    import torch

    from napari_flex3d.conventions import euler_to_matrix
    from napari_flex3d.ops.ctf import ctf_2d

    rng = np.random.default_rng(seed)
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], size=(b, 3))
    rot = torch.tensor(euler_to_matrix(ang[:, 0], ang[:, 1], ang[:, 2]), dtype=torch.float32, device=device)
    du = torch.tensor(rng.uniform(8000, 20000, size=b), dtype=torch.float32, device=device)
    ctf = ctf_2d(model.box, model.apix, du, du - 300.0, torch.full_like(du, 30.0), 300.0, 2.7, 0.1, device=device)
    return {
        "images": torch.randn(b, model.box, model.box, device=device),
        "rotations": rot,
        "shifts_a": torch.tensor(rng.normal(0, 2.0, size=(b, 2)), dtype=torch.float32, device=device),
        "ctf": ctf,
        "optics_group": torch.zeros(b, dtype=torch.long, device=device),
    }


def count_host_syncs(fn, device) -> int | None:
    """Host-device synchronisations during ``fn()`` on CUDA (``torch.cuda.set_sync_debug_mode``
    warns at each), ``None`` elsewhere (tests/test_host_sync.py audits the CPU path)."""
    import warnings

    import torch

    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bytes_per_evaluation(n_voxels: int, kernel: str, backward: bool) -> float:
    """Least bytes the fused convect-project moves per particle and model evaluation (see the module doc)."""
    taps = 16 if kernel == "cubic" else 4
    fwd = n_voxels * (16 + 24 + 8 * taps)
    return fwd * (2.0 if backward else 1.0) + (n_voxels * 16 if backward else 0.0)


def bench_training(box: int, batch: int, steps: int, device, quick: bool, latent_box: int | None = None,
                   profile: bool = False) -> dict:
    import numpy as np
    import torch

    from napari_flex3d.config import TrainConfig
    from napari_flex3d.training.latent_state import LatentView
    from napari_flex3d.training.run_state import RunState
    from napari_flex3d.training.run_state import adam_for_canonical as _adam_for_canonical
    from napari_flex3d.training.step import train_step as _step
    from napari_flex3d.training.schedule import FLOW, STRUCTURE

    latent_box = latent_box if latent_box and latent_box < box else None
    config = TrainConfig(batch=batch, preview_every=0, latent_box=latent_box)
    model, apix = molecule_model(box, config, device)
    n_vox = int(model.canonical.n_voxels)
    view = None
    if latent_box:  # inference on the Fourier-cropped view (white spectra: the cost does not depend on them)
        view = LatentView(model.at_box(latent_box), torch.ones(1, latent_box // 2 + 1, device=device),
                          config.band_end * latent_box / 2)
    n_particles = batch * (steps + 1)
    run = RunState(
        config=config, out_dir=Path("."), device=device, ps=None, model=model,
        spectra=torch.ones(1, box // 2 + 1, device=device), latents=torch.zeros(n_particles, config.latent_dim, device=device),
        train_idx=np.arange(n_particles), val_idx=np.arange(0), opt_flow=torch.optim.Adam(model.flow.parameters(), lr=config.lr_flow),
        opt_canonical=_adam_for_canonical(model, config), generator=torch.Generator().manual_seed(0),
        consensus=torch.zeros(1, device=device), latent_view=view,
    )
    batches = [random_batch(model, batch, device, seed=s) for s in range(2)]
    _step(run, np.arange(batch), FLOW, 0.5, batch=batches[0])  # warm-up (kernels, allocator)
    _step(run, np.arange(batch), STRUCTURE, 0.5, batch=batches[1])
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for s in range(steps):
        idx = np.arange((s + 1) * batch, (s + 2) * batch)
        _step(run, idx, FLOW if s % 2 == 0 else STRUCTURE, 0.5, batch=batches[s % 2])
    _sync(device)
    dt = time.perf_counter() - t0
    rate = steps * batch / dt
    syncs = count_host_syncs(lambda: _step(run, np.arange(batch), FLOW, 0.5, batch=batches[0]), device)
    aten, launches = count_ops(lambda ph: _step(run, np.arange(batch), ph, 0.5, batch=batches[0]), (FLOW, STRUCTURE), device)
    if profile:
        profile_steps(lambda ph: _step(run, np.arange(batch), ph, 0.5, batch=batches[0]), (FLOW, STRUCTURE), device)
    k, g, sweeps = config.latent_dim, config.latent_grid, config.latent_steps
    first = g**k if g**k <= 100 else k * g  # the first sweep is joint over the K-D grid where it is small
    evals = 1 + first + (sweeps - 1) * k * g  # forward-only evaluations of latent inference per particle
    n_vox_inference = int(view.model.canonical.n_voxels) if view is not None else n_vox
    per_particle = (evals * bytes_per_evaluation(n_vox_inference, config.kernel, False)
                    + bytes_per_evaluation(n_vox, config.kernel, True))
    return {
        "box": box, "latent_box": latent_box or box, "n_voxels_inference": n_vox_inference,
        "batch": batch, "steps": steps, "particles_per_s": rate, "peak_gb": _peak_gb(device),
        "n_voxels": n_vox, "evaluations_per_particle": evals + 1, "bytes_per_particle": per_particle,
        "apix": apix, "host_syncs_per_step": syncs, "aten_ops_per_step": aten, "kernel_launches_per_step": launches,
    }


def count_ops(step, phases, device) -> tuple[float, float | None]:
    """aten operator calls (every call the profiler records, nested ones included) and CUDA kernel
    launches (``cudaLaunchKernel``; ``None`` on the CPU) per step, over one step of each phase
    (benchmarks/ops_per_step.py counts a whole run's)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        for phase in phases:
            step(phase)
        _sync(device)
    names = [e.name for e in prof.events()]
    aten = sum(n.startswith("aten::") for n in names) / len(phases)
    launches = sum(n.startswith(("cudaLaunchKernel", "cuLaunchKernel")) for n in names) / len(phases)
    return aten, (launches if device.type == "cuda" else None)


def profile_steps(step, phases, device, rows: int = 22) -> None:
    """Print where one step of each phase spends its time (torch.profiler): the ops with the most
    device time (CPU time on the CPU), kernel launches and the step's wall time against the
    device's busy time (a step whose device time is far under its wall time is launch-bound)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for phase in phases:
        _sync(device)
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            step(phase)
            _sync(device)
        wall = time.perf_counter() - t0
        events = prof.key_averages()
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        try:  # on CUDA the kernels' own rows (an op's row repeats its kernels' time)
            rows_of = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
            if device.type != "cuda":
                rows_of = list(events)
            busy = sum(getattr(e, key, 0.0) for e in rows_of) / 1e6
            kernels = sum(e.count for e in rows_of) if device.type == "cuda" else 0
        except Exception as exc:  # a profiler API difference must not lose the table
            busy, kernels = float("nan"), f"? ({exc})"
        print(f"profile, {phase} step: wall {wall:.3f} s (under the profiler), device busy {busy:.3f} s, "
              f"{kernels} kernel launches", flush=True)
        for sort_by in (key, "self_cuda_time_total", "self_cpu_time_total"):  # names differ across torch versions
            try:
                print(events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=48), flush=True)
                break
            except (AttributeError, KeyError, ValueError, TypeError) as exc:
                print(f"(table by {sort_by}: {exc})", flush=True)


def bench_reconstruction(box: int, chunk: int, chunks: int, device) -> dict:
    import torch

    from napari_flex3d.config import TrainConfig
    from napari_flex3d.model.loss import data_loss

    config = TrainConfig(preview_every=0)
    model, apix = molecule_model(box, config, device)
    n_vox = int(model.canonical.n_voxels)
    batch = random_batch(model, chunk, device)
    z = torch.randn(chunk, config.latent_dim, device=device)
    values = model.canonical.values
    noise = torch.ones(box // 2 + 1, device=device)
    for p in model.flow.parameters():
        p.requires_grad_(False)

    def gradient():
        values.grad = None
        pred = model.project(z, batch["rotations"], batch["shifts_a"], ctf=batch["ctf"])
        data_loss(pred, batch["images"], noise).sum().backward()

    gradient()
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(chunks):
        gradient()
    _sync(device)
    dt = time.perf_counter() - t0
    return {
        "box": box, "chunk": chunk, "chunks": chunks, "particles_per_s": chunks * chunk / dt, "peak_gb": _peak_gb(device),
        "n_voxels": n_vox, "bytes_per_particle": bytes_per_evaluation(n_vox, config.kernel, True), "apix": apix,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized: boxes 32/40, reconstruction 48, few steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256, help="training minibatch")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per box")
    p.add_argument("--chunk", type=int, default=128, help="reconstruction particles per gradient chunk")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--train-boxes", type=int, nargs="+", default=[128, 180])
    p.add_argument("--latent-box", type=int, default=None,
                   help="latent inference at this Fourier-cropped box (TrainConfig.latent_box; default the training box)")
    p.add_argument("--recon-box", type=int, default=256)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per phase (first box)")
    p.add_argument("--no-reconstruction", action="store_true", help="training boxes only")
    p.add_argument("--wheels", default=None, help="pip-install the wheels in this folder first (offline)")
    p.add_argument("--mesh-dir", default=None,
                   help="read mesh_<box>.npz from here instead of building meshes (pyvista absent on the GPU machine)")
    p.add_argument("--save-meshes", default=None, metavar="DIR",
                   help="build the meshes of the given boxes, save them as DIR/mesh_<box>.npz and exit")
    a = p.parse_args(argv)
    if a.wheels:
        _install_wheels(a.wheels)
    _setup_path()
    import torch

    global MESH_DIR
    if a.save_meshes:
        from napari_flex3d.config import TrainConfig
        from napari_flex3d.mesh.mesh import save_mesh

        for box in [*a.train_boxes, a.recon_box]:
            mesh = molecule_mesh(box, TrainConfig(preview_every=0))[3]
            print(f"box {box}: {save_mesh(mesh, Path(a.save_meshes) / f'mesh_{box}.npz')}", flush=True)
        return 0
    MESH_DIR = Path(a.mesh_dir) if a.mesh_dir else None

    if a.quick:
        a.train_boxes, a.recon_box, a.batch, a.steps, a.chunk, a.chunks = [32, 40], 48, 32, 2, 16, 2
    device = resolve_device(a.device)
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    if device.type == "cpu" and not a.quick:
        print("note: no GPU here; these are CPU figures", flush=True)
    bw = bandwidth_gbs(device, 0.125 if a.quick else 1.0)
    print(f"memory bandwidth (copy): {bw:,.0f} GB/s", flush=True)
    out = {"device": name, "bandwidth_gbs": bw, "training": [], "reconstruction": None}
    for box in a.train_boxes:
        c0 = time.process_time()
        r = bench_training(box, a.batch, a.steps, device, a.quick, a.latent_box, profile=a.profile and box == a.train_boxes[0])
        r["bound_particles_per_s"] = bw * 1e9 / r["bytes_per_particle"]
        r["cpu_seconds"] = time.process_time() - c0
        out["training"].append(r)
        print(f"train box {box} (inference at {r['latent_box']}): {r['particles_per_s']:,.1f} particles/s (bandwidth bound {r['bound_particles_per_s']:,.0f}, "
              f"{r['particles_per_s'] / r['bound_particles_per_s']:.1%}), peak {r['peak_gb']:.2f} GB, "
              f"{r['n_voxels']:,} voxels, {r['evaluations_per_particle']} evaluations/particle, "
              f"host syncs per step {r['host_syncs_per_step']}, aten ops per step {r['aten_ops_per_step']:,.0f}"
              + ("" if r["kernel_launches_per_step"] is None else f", kernel launches per step {r['kernel_launches_per_step']:,.0f}"),
              flush=True)
    if a.no_reconstruction:
        print(json.dumps(out))
        return 0
    r = bench_reconstruction(a.recon_box, a.chunk, a.chunks, device)
    r["bound_particles_per_s"] = bw * 1e9 / r["bytes_per_particle"]
    out["reconstruction"] = r
    print(f"reconstruct box {a.recon_box}: {r['particles_per_s']:,.1f} particles/s per L-BFGS gradient "
          f"(bandwidth bound {r['bound_particles_per_s']:,.0f}, {r['particles_per_s'] / r['bound_particles_per_s']:.1%}), "
          f"peak {r['peak_gb']:.2f} GB, {r['n_voxels']:,} voxels", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
