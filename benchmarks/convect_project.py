"""Benchmark of the full 3DFlex forward model around the fused convect-project operator.

Forward model (the pieces of ``model.flex.FlexModel``): flow MLP -> vertex displacements
-> FEM interpolation with a sparse CSR barycentric matrix ``B`` -> convect-project
(``ops.splat.convect_project``, one fused splat) -> CTF -> squared-error loss.

Naive reference, same process, same model, CTF and loss: materialise every particle's
convected volume ``W`` with the 3D splat (``ops.splat.convect_volume``, batched), rotate
it with ``grid_sample`` (trilinear), sum along the view axis.

Molecule: two ellipsoidal domains joined by a neck (a hinge), solvent mask dilated by
2 Å (fraction of the box printed), tetgen mesh with 20 cells across the box.

Prints images/s (forward with autograd on, and forward + backward), peak memory of one
step (CPU: a fresh subprocess per path, sampled RSS above its pre-step level; GPU:
``torch.cuda.max_memory_allocated``), speed-up and memory ratio, the FRC accuracy of the
splat kernels; the last line is one JSON object.

    python benchmarks/convect_project.py --quick          # a few minutes on 2 cores
    python benchmarks/convect_project.py --device cuda    # on a GPU

``--triton`` (a GPU only) times the splat alone, ``convect_project`` forward and
forward + backward, through the Triton kernels (``ops/triton_splat.py``) against the torch
path (``FLEX3D_TRITON=0``) on the molecule's masked voxels, each particle's points moved
by its own smooth flow, and prints the ratio, peak memory, GPU kernel launches per
forward + backward and how closely the two paths agree:

    python benchmarks/convect_project.py --device cuda --triton --boxes 128
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import warnings
import time

import numpy as np
import torch
import torch.nn.functional as F

from napari_flex3d.conventions import euler_to_matrix, voxel_grid_xyz_a
from napari_flex3d.ops.fourier import frequency_radius_grid
from napari_flex3d.ops.splat import convect_project, convect_volume
from _common import reset_peak_memory, rss_bytes, sync, timings

APIX_AT_64 = 3.0  # Å per voxel at box 64 (a ~190 Å box); box 128 halves it


# ----------------------------------------------------------------------------- setup


def two_domain_molecule(box: int) -> tuple[np.ndarray, np.ndarray]:
    """Two ellipsoidal domains joined by a neck: smooth ``(box,)*3`` density and a textured map."""
    grid = voxel_grid_xyz_a(box, 1.0 / box, dtype=torch.float64).numpy()  # xyz in box fractions
    x, y, z = grid[..., 0], grid[..., 1], grid[..., 2]

    def blob(cx, cy, cz, rx, ry, rz):
        return np.exp(-0.5 * (((x - cx) / rx) ** 4 + ((y - cy) / ry) ** 4 + ((z - cz) / rz) ** 4))

    smooth = blob(-0.15, 0.0, 0.0, 0.22, 0.2, 0.19) + blob(0.2, 0.04, 0.0, 0.18, 0.17, 0.16)
    smooth += 0.8 * blob(0.03, 0.02, 0.0, 0.08, 0.07, 0.07)
    rng = np.random.default_rng(0)
    textured = smooth * (1.0 + 0.3 * rng.standard_normal(smooth.shape))  # so the map is not flat
    return smooth.astype(np.float32), textured.astype(np.float32)


def build_model(box: int, kernel: str, device: str):
    """FlexModel (two-domain molecule, tetgen mesh, 20 cells across) and a few figures."""
    from napari_flex3d.mesh.build import build_mesh
    from napari_flex3d.mesh.masks import solvent_mask
    from napari_flex3d.model.flex import FlexModel

    apix = APIX_AT_64 * 64 / box
    smooth, vol = two_domain_molecule(box)
    mask = solvent_mask(smooth, apix, threshold=0.5, lowpass_a=None, dilate_a=2.0, soft_pad_a=0.0).binary
    mesh = build_mesh(mask, apix, cells_across=20)
    torch.manual_seed(0)
    model = FlexModel.from_map(vol, apix, mesh, mask, latent_dim=2, hidden=64, layers=4, kernel=kernel, init_std_a=0.05)
    info = {
        "box": box,
        "apix": apix,
        "mask_fraction": float(mask.mean()),
        "n_voxels": int(model.canonical.n_voxels),
        "mesh_vertices": int(mesh.vertices_a.shape[0]),
        "mesh_cells": int(mesh.cells.shape[0]),
    }
    return model.to(device), info


def make_batch(model, b: int, seed: int = 0):
    """Latents, poses, shifts, CTFs and target images for ``b`` particles."""
    from napari_flex3d.ops.ctf import ctf_2d

    device = model.vertices_a.device
    rng = np.random.default_rng(seed)
    rotations, shifts = random_poses(rng, b, device)
    z = torch.tensor(rng.normal(size=(b, model.latent_dim)), dtype=torch.float32, device=device)
    du = torch.tensor(rng.uniform(8000, 20000, size=b), dtype=torch.float32, device=device)
    ctf = ctf_2d(model.box, model.apix, du, du - 300.0, torch.full_like(du, 30.0), 300.0, 2.7, 0.1, device=device)
    target = torch.randn(b, model.box, model.box, device=device)
    return barycentric_csr(model), z, rotations, shifts, ctf, target


def random_poses(rng, b: int, device):
    """Uniformly random poses ``(b, 3, 3)`` and shifts ``(b, 2)`` Å (2 Å standard deviation)."""
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(b, 3))
    rotations = torch.tensor(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]), dtype=torch.float32, device=device)
    return rotations, torch.tensor(rng.normal(0, 2.0, size=(b, 2)), dtype=torch.float32, device=device)


def _apply_ctf(images, ctf):
    return torch.fft.irfft2(torch.fft.rfft2(images) * ctf, s=images.shape[-2:])


def barycentric_csr(model) -> torch.Tensor:
    """The FEM matrix ``B (n_vox, v)`` as sparse CSR, from the model's barycentric rows."""
    index, weight = model.bary_index, model.bary_weight  # (n, 4), (n, 4)
    n, k = index.shape
    crow = torch.arange(0, n * k + 1, k, device=index.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, index.reshape(-1), weight.reshape(-1), (n, model.flow.n_vertices))


def moved_points(model, fem: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Flow MLP -> vertex displacements -> ``u = B d`` (sparse) -> moved voxels ``(b, n, 3)`` Å."""
    d = model.flow(z)  # (b, v, 3) masked displacements
    b, v = d.shape[:2]
    u = torch.sparse.mm(fem, d.permute(1, 0, 2).reshape(v, 3 * b))  # (n, 3b)
    return model.canonical.points_xyz_a[None] + u.view(-1, b, 3).permute(1, 0, 2)  # (b, n, 3)


def fused_step(model, fem, z, rotations, shifts, ctf, target, backward: bool):
    """The full forward model through the fused convect-project operator."""
    values = model.canonical_values()  # (n,)
    images = convect_project(values, moved_points(model, fem, z), rotations, shifts, model.box, model.apix, model.kernel)
    pred = _apply_ctf(images, ctf)  # (b, N, N)
    loss = 0.5 * (pred - target).square().sum()
    if backward:
        loss.backward()
    return loss


def rotate_and_sum(volumes: torch.Tensor, rotations: torch.Tensor, shifts_a: torch.Tensor, apix: float) -> torch.Tensor:
    """Naive projection: ``volumes (b, N, N, N)`` -> ``(b, N, N)``, trilinear ``grid_sample``.

    Image-frame voxel ``q`` (xyz, from ``N // 2``, plus the shift) samples the map at
    ``A^T q``; the view axis (image-frame z) is summed.
    """
    b, n = volumes.shape[0], volumes.shape[-1]
    q = voxel_grid_xyz_a(n, 1.0, device=volumes.device, dtype=volumes.dtype).reshape(1, -1, 3)  # (1, N^3, 3) vox
    q = q.expand(b, -1, -1).clone()
    q[..., :2] += shifts_a[:, None, :] / apix  # content at (A r)_xy - shift
    r = torch.matmul(q, rotations)  # (b, N^3, 3): row vector q A = (A^T q)^T
    grid = ((r + n // 2) * (2.0 / (n - 1)) - 1.0).view(b, n, n, n, 3)  # align_corners=True
    sampled = F.grid_sample(volumes[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled[:, 0].sum(1)  # (b, N, N): sum over image-frame z


def naive_step(model, fem, z, rotations, shifts, ctf, target, backward: bool):
    """Same model, FEM, CTF and loss, but through the materialised convected volumes."""
    values = model.canonical_values()  # (n,)
    points = moved_points(model, fem, z)  # (b, n, 3)
    volumes = convect_volume(values, points, model.box, model.apix, model.kernel)  # (b, N, N, N)
    pred = _apply_ctf(rotate_and_sum(volumes, rotations, shifts, model.apix), ctf)
    loss = 0.5 * (pred - target).square().sum()
    if backward:
        loss.backward()
    return loss


STEPS = {"fused": fused_step, "naive": naive_step}


# ----------------------------------------------------------------------------- measuring


def time_step(step, model, batch, backward: bool, repeats: int, device) -> float:
    """Median seconds per call (after one warm-up)."""
    step(model, *batch, backward)
    model.zero_grad(set_to_none=True)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step(model, *batch, backward)
        sync(device)
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return float(np.median(times))


def save_model(model, info: dict, path: str) -> None:
    """Tensors and sizes of a benchmark model, so memory children skip meshing."""
    meta = {"info": info, "hidden": 64, "layers": 4, "kernel": model.kernel, "latent_dim": model.latent_dim}
    torch.save({"state": model.state_dict(), "meta": meta}, path)


def load_model(path: str, device: str):
    """Inverse of :func:`save_model` (``weights_only=True``)."""
    from napari_flex3d.model.canonical import CanonicalMap
    from napari_flex3d.model.flex import FlexModel
    from napari_flex3d.model.flow import FlowGenerator

    saved = torch.load(path, weights_only=True)
    state, meta = saved["state"], saved["meta"]
    info = meta["info"]
    canonical = CanonicalMap(state["canonical.values"], state["canonical.voxel_index"], info["box"], info["apix"])
    flow = FlowGenerator(
        meta["latent_dim"], state["vertices_a"].shape[0], hidden=meta["hidden"], layers=meta["layers"],
        vertex_mask=state["flow.vertex_mask"],
    )
    model = FlexModel(
        canonical, flow, state["vertices_a"], state["cells"], state["bary_index"], state["bary_weight"],
        state["rigidity_weights"], kernel=meta["kernel"],
    )
    model.load_state_dict(state)
    return model.to(device), info


def peak_memory_here(path: str, model, b: int, device: str) -> int:
    """Peak extra memory (bytes) of one forward + backward step of ``path`` (after a warm-up step)."""
    batch = make_batch(model, b)
    STEPS[path](model, *batch, True)  # warm-up: code pages, FFT plans, thread pools
    model.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        STEPS[path](model, *batch, True)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    import gc

    gc.collect()
    try:  # hand freed memory back to the OS so the RSS baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    STEPS[path](model, *batch, True)
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_bytes())
    return int(peak[0] - base)


def peak_memory(path: str, model, info: dict, b: int, device: str, threads: int) -> int:
    """Peak memory of one step; on the CPU in a fresh subprocess (RSS never shrinks)."""
    if device.startswith("cuda"):
        return peak_memory_here(path, model, b, device)
    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "model.pt")
        save_model(model, info, saved)
        cmd = [sys.executable, __file__, "--_memory-child", path, saved, str(b), "--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def frc_accuracy(box: int = 48, n_poses: int = 5) -> dict:
    """FRC at 0.8 Nyquist (mean over poses) of the zero-flow splat vs the reference projector."""
    from napari_flex3d.ops.project import project

    gen = torch.Generator().manual_seed(0)
    radius = voxel_grid_xyz_a(box, 1.0).norm(dim=-1)
    vol = torch.randn((box,) * 3, generator=gen) * ((0.38 * box - radius) / 3).clamp(0, 1)
    freq = frequency_radius_grid((box,) * 3, rfft=False)  # cycles per pixel
    vol = torch.fft.ifftn(torch.fft.fftn(vol) * (freq <= 0.45)).real  # signal to 0.9 Nyquist
    rng = np.random.default_rng(1)
    angles = rng.uniform([-180, 0, -180], [180, 180, 180], size=(n_poses, 3))
    rotations = torch.tensor(euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]), dtype=torch.float32)
    reference = project(vol, rotations, None, 1.0)
    points = voxel_grid_xyz_a(box, 1.0).reshape(-1, 3)
    shell = int(round(0.8 * box / 2))
    out = {}
    for kernel in ("cubic", "linear"):
        for deconvolve in (False, True):
            images = convect_project(vol.reshape(-1), points, rotations, None, box, 1.0, kernel, deconvolve=deconvolve)
            frc = _frc(images, reference)
            key = f"frc08_{kernel}" + ("_deconvolved" if deconvolve else "")
            out[key] = round(float(frc[:, shell].mean()), 4)
            out[key.replace("frc08", "frc_min_to08")] = round(float(frc[:, 1 : shell + 1].min()), 4)
    return out


def _frc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fourier ring correlation ``(b, box//2 + 1)``, integer shells."""
    box = a.shape[-1]
    fa, fb = (torch.fft.fftshift(torch.fft.fft2(t.double()), dim=(-2, -1)) for t in (a, b))
    k = torch.arange(box) - box // 2
    shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2.0).round().long().clamp(max=box // 2).flatten()
    zeros = torch.zeros(a.shape[0], box // 2 + 1, dtype=torch.float64)
    num = zeros.index_add(1, shell, (fa * fb.conj()).real.flatten(1))
    pa = zeros.index_add(1, shell, fa.abs().square().flatten(1))
    pb = zeros.index_add(1, shell, fb.abs().square().flatten(1))
    return num / torch.sqrt(pa * pb)


# ----------------------------------------------------------------------------- Triton against torch


def splat_inputs(box: int, b: int, device: str, seed: int = 0):
    """The molecule's masked voxels (values ``(n,)``, points ``(b, n, 3)`` Å, each particle's moved by a
    smooth flow of about 1 Å), poses ``(b, 3, 3)``, shifts ``(b, 2)`` Å and weights ``(b, box, box)``."""
    from napari_flex3d.mesh.masks import solvent_mask

    apix = APIX_AT_64 * 64 / box
    smooth, vol = two_domain_molecule(box)
    mask = solvent_mask(smooth, apix, threshold=0.5, lowpass_a=None, dilate_a=2.0, soft_pad_a=0.0).binary
    gen = torch.Generator().manual_seed(seed)
    rest = voxel_grid_xyz_a(box, apix)[torch.from_numpy(mask)].to(device)  # (n, 3)
    waves = (torch.randn(b, 3, 3, generator=gen) / (0.2 * box * apix)).to(device)  # (b, 3 waves, xyz) 1/Å
    points = rest + torch.sin(rest @ waves.transpose(1, 2))  # (b, n, 3): ~1 Å of flow, per particle
    rotations, shifts = random_poses(np.random.default_rng(seed), b, device)
    target = torch.randn(b, box, box, device=device)
    values = torch.from_numpy(vol[mask]).to(device)
    return values, points, rotations, shifts, target, apix


def splat_pass(path: str, inputs, box: int, kernel: str, backward: bool):
    """One ``convect_project`` through ``path`` ("torch" or "triton"); with ``backward`` the gradients of
    ``<images, target>`` for the values and the points. Returns ``[images, (grads)]``."""
    values, points, rotations, shifts, target, apix = inputs
    os.environ["FLEX3D_TRITON"] = "0" if path == "torch" else "1"
    v, p = values.detach().requires_grad_(backward), points.detach().requires_grad_(backward)
    images = convect_project(v, p, rotations, shifts, box, apix, kernel)
    if not backward:
        return [images]
    return [images.detach(), *torch.autograd.grad((images * target).sum(), (v, p))]


def gpu_launches(fn) -> int:
    """GPU kernels ``fn()`` launches, counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def triton_comparison(boxes, batches, kernel: str, device: str) -> dict:
    """Time the splat alone through the Triton kernels and through the torch path (see the docstring)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise SystemExit("--triton: triton is not installed (torch's CUDA builds bring it; pip install triton)")
    from napari_flex3d.ops import triton_splat

    summary: dict = {"device": torch.cuda.get_device_name(), "kernel": kernel}
    print(f"device: {summary['device']}; kernel {kernel}; torch {torch.__version__}")
    print(f"  {'box':>4s} {'batch':>5s} {'voxels':>8s} {'path':6s} {'fwd ms':>8s} {'fwd+bwd ms':>10s} {'peak MiB':>9s} {'launches':>8s}")
    for box in boxes:
        for b in batches:
            inputs = splat_inputs(box, b, device)
            n = inputs[0].shape[0]
            out = {}
            for path in ("torch", "triton"):
                row = {}
                for backward in (False, True):
                    times = timings(lambda: splat_pass(path, inputs, box, kernel, backward), device, repeats=5)
                    row["fwd+bwd" if backward else "fwd"] = float(np.median(times))
                reset_peak_memory(device)
                base = torch.cuda.memory_allocated()
                result = splat_pass(path, inputs, box, kernel, True)
                row["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
                row["launches"] = gpu_launches(lambda: splat_pass(path, inputs, box, kernel, True))
                out[path] = (row, result)
                print(f"  {box:4d} {b:5d} {n:8d} {path:6s} {1e3 * row['fwd']:8.2f} {1e3 * row['fwd+bwd']:10.2f} "
                      f"{row['peak_mib']:9.1f} {row['launches']:8d}")
            if not triton_splat._VERDICT.get((inputs[0].device, torch.float32), False):
                raise SystemExit("the Triton kernels failed their first-use check on this GPU (see the warning above)")
            agree = [float((t - r).abs().max() / r.abs().max()) for t, r in zip(out["triton"][1], out["torch"][1])]
            ratio = out["torch"][0]["fwd+bwd"] / out["triton"][0]["fwd+bwd"]
            print(f"  speed-up triton / torch (fwd+bwd) {ratio:.2f}x, forward {out['torch'][0]['fwd'] / out['triton'][0]['fwd']:.2f}x;"
                  f" largest difference / largest value: images {agree[0]:.1e}, d/dvalues {agree[1]:.1e}, d/dpoints {agree[2]:.1e}")
            key = f"box{box}_b{b}"
            summary[f"speedup_triton_{key}"] = round(ratio, 2)
            for path, (row, _) in out.items():
                summary[f"{path}_{key}"] = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
            summary[f"agreement_{key}"] = [float(f"{a:.2e}") for a in agree]
    del os.environ["FLEX3D_TRITON"]
    print(json.dumps(summary))
    return summary


# ----------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes and repeats (a few minutes on 2 cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu; 'auto' picks cuda when present)")
    parser.add_argument("--kernel", default="cubic", choices=["cubic", "linear"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine OpenMP threads oversubscribe and "
        "every op slows ~10x; 0 keeps torch's default)",
    )
    parser.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--triton", action="store_true",
                        help="time the splat through the Triton kernels against the torch path (needs a CUDA GPU)")
    parser.add_argument("--_memory-child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args._memory_child is not None:
        path, saved, b = args._memory_child
        model, _ = load_model(saved, "cpu")
        print(peak_memory_here(path, model, int(b), "cpu"))
        return {}
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    on_gpu = device.startswith("cuda")
    if args.triton:
        if not (on_gpu and torch.cuda.is_available()):
            parser.error("--triton times the Triton kernels on a GPU: it needs --device cuda and a CUDA GPU "
                         "(on the CPU, tests/ops/test_triton_splat.py checks them under TRITON_INTERPRET=1)")
        return triton_comparison(args.boxes, [64, 256], args.kernel, device)
    if args.quick:
        batches = {64: [16], 128: [8]}
        repeats = {64: 2, 128: 2}
    else:
        batches = {64: [8, 32, 64], 128: [8, 16, 32]}
        repeats = {64: 5, 128: 3}
    if on_gpu:
        batches = {64: [32, 128, 256], 128: [32, 64, 128]}
        repeats = {64: 10, 128: 5}
    name = torch.cuda.get_device_name() if on_gpu else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"device: {name}; kernel {args.kernel}; torch {torch.__version__}")
    summary: dict = {"device": name, "kernel": args.kernel}
    for box in args.boxes:
        t0 = time.perf_counter()
        model, info = build_model(box, args.kernel, device)
        print(
            f"box {box}: apix {info['apix']:.2f} Å, mask {100 * info['mask_fraction']:.1f}% of the box = "
            f"{info['n_voxels']} voxels, mesh {info['mesh_vertices']} vertices / {info['mesh_cells']} cells "
            f"(setup {time.perf_counter() - t0:.1f} s)"
        )
        summary[f"mask_fraction_box{box}"] = round(info["mask_fraction"], 3)
        summary[f"n_voxels_box{box}"] = info["n_voxels"]
        summary[f"mesh_vertices_box{box}"] = info["mesh_vertices"]
        print(f"  {'path':6s} {'batch':>5s} {'fwd img/s':>10s} {'fwd+bwd img/s':>14s}")
        for b in batches.get(box, [8]):
            batch = make_batch(model, b)
            rates = {}
            for path, step in STEPS.items():
                if path == "naive" and not on_gpu and box >= 128 and b > 8:
                    continue  # minutes per step on a shared CPU; the ratio is clear at b = 8
                reps = 1 if (path == "naive" and args.quick and box >= 128) else repeats[box]
                fwd = time_step(step, model, batch, False, reps, device)
                both = time_step(step, model, batch, True, reps, device)
                rates[path] = (b / fwd, b / both)
                print(f"  {path:6s} {b:5d} {b / fwd:10.1f} {b / both:14.1f}")
            if "naive" in rates:
                speedup = rates["fused"][1] / rates["naive"][1]
                print(f"  speed-up fused / naive (fwd+bwd) at batch {b}: {speedup:.1f}x")
                summary[f"speedup_vs_naive_box{box}_b{b}"] = round(speedup, 2)
            summary[f"images_per_s_box{box}_b{b}"] = round(rates["fused"][1], 1)
            summary[f"images_per_s_fwd_box{box}_b{b}"] = round(rates["fused"][0], 1)
        largest = max(b for b in batches.get(box, [8]) if f"speedup_vs_naive_box{box}_b{b}" in summary)
        summary[f"images_per_s_box{box}"] = summary[f"images_per_s_box{box}_b{largest}"]
        summary[f"speedup_vs_naive_box{box}"] = summary[f"speedup_vs_naive_box{box}_b{largest}"]
        b_mem = 8
        mem = {path: peak_memory(path, model, info, b_mem, device, args.threads) for path in STEPS}
        ratio = mem["fused"] / max(mem["naive"], 1)
        print(
            f"  peak memory of one fwd+bwd step, batch {b_mem}: fused {mem['fused'] / 2**20:.1f} MiB, "
            f"naive {mem['naive'] / 2**20:.1f} MiB, ratio {ratio:.3f}"
        )
        summary[f"peak_mem_mib_fused_box{box}"] = round(mem["fused"] / 2**20, 1)
        summary[f"peak_mem_mib_naive_box{box}"] = round(mem["naive"] / 2**20, 1)
        summary[f"peak_mem_ratio_box{box}"] = round(ratio, 4)
        del model
    frc = frc_accuracy()
    print("FRC at 0.8 Nyquist vs the reference projector (48^3, 5 poses, zero flow): " + ", ".join(f"{k} {v}" for k, v in frc.items()))
    summary.update(frc)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
