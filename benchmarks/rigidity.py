"""The rigidity prior's cost: the SVD-free energy against the ``torch.linalg.svdvals`` one it replaced.

Times ``rigidity_energy`` forward + backward for a training minibatch's displacements
(``b`` particles x ``t`` mesh cells; the sizes of the CPU recovery benchmark's mesh at box 48
and of the default mesh at box 128) against the reference ``sum_l (s^_l - 1)^2`` with
``torch.linalg.svdvals`` (float32, as training ran it before) and against the first SVD-free
version (autograd through one Newton step of the quartic instead of the written-out gradient),
in the same process. Prints the bytes each keeps for the backward pass (what sets the peak
memory of a training step: on an H100 at box 128 the first SVD-free version took a step from
3.3 to 6.2 GB), and the largest difference of the energies and of their gradients.

Then, at the size of the dense box-128 mesh of ``benchmarks/gpu_scale.py`` (256 x 34,992
cells), the energy in pieces of the batch (``mesh.rigidity._CHUNK_BYTES``, what training runs)
against the whole batch at once: time, and the peak memory of a forward + backward pass
(each in a fresh process on the CPU, ``max_memory_allocated`` on a GPU).

    python benchmarks/rigidity.py                 # CPU, 1 thread
    python benchmarks/rigidity.py --device cuda   # a GPU (there the batched SVD was 62% of a step)
    python benchmarks/rigidity.py --dense-only    # only the pieces against the whole batch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _common import best_time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def reference_energy(rest_inv, disp, cells, weights):
    """The energy as computed before: float32 ``F``, ``svdvals``, sign of ``det F`` on the smallest."""
    from napari_flex3d.mesh.rigidity import deformation_gradients, signed_singular_values

    F = deformation_gradients(rest_inv, disp, cells)
    return (((signed_singular_values(F) - 1.0) ** 2).sum(-1) * weights).sum(-1)


def _invariants(F):
    """``(|F|^2, |cof F|^2, det F)`` of ``F (..., 3, 3)``, elementwise (as the first SVD-free version)."""
    a, b, c, d, e, f, g, h, k = F.flatten(-2).movedim(-1, 0).unbind(0)
    cof = [e * k - f * h, f * g - d * k, d * h - e * g, c * h - b * k, a * k - c * g, b * g - a * h,
           b * f - c * e, c * d - a * f, a * e - b * d]
    det = a * cof[0] + b * cof[1] + c * cof[2]
    return (F * F).sum((-2, -1)), sum(x * x for x in cof), det


def _largest_root(a, b, r, steps: int = 16):
    """Largest root of ``p^4 - 2 a p^2 - 8 r p + a^2 - 4 b`` by Newton's method from above (before the closed form)."""
    import torch

    c0 = a * a - 4.0 * b
    floor = 1e-9 * a.clamp_min(1e-200) ** 1.5
    p = torch.sqrt(a + 2.0 * torch.sqrt(3.0 * b))
    for _ in range(steps):
        t = p * p - a
        p = p - ((t - a) * p * p - 8.0 * r * p + c0) / (4.0 * t * p - 8.0 * r).clamp_min(floor)
    return p


def autograd_energy(rest_inv, disp, cells, weights):
    """The first SVD-free version: the same energy, the quartic's root by Newton's method, ``dp/dF`` by
    autograd through one Newton step."""
    import torch

    from napari_flex3d.mesh import rigidity as r

    dD = r.edge_matrices(disp.to(torch.float64), cells)
    G = dD @ rest_inv.to(torch.float64)
    F = G + torch.eye(3, dtype=torch.float64, device=disp.device)
    i1, i2, det = _invariants(F)
    with torch.no_grad():
        p = _largest_root(i1, i2, det)
        slope = (4.0 * (p * p - i1) * p - 8.0 * det).clamp_min(1e-9 * i1.clamp_min(1e-200) ** 1.5)
    quartic = ((p * p - 2.0 * i1) * p - 8.0 * det) * p + i1 * i1 - 4.0 * i2
    trace = p - quartic / slope
    per_cell = ((G * G).sum((-1, -2)) + 2.0 * G.diagonal(dim1=-2, dim2=-1).sum(-1) - 2.0 * (trace - 3.0)).clamp_min(0.0)
    return (per_cell.to(disp.dtype) * weights.to(disp.dtype)).sum(-1)


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    import torch

    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _dense_mesh(path: Path, cells_across: int = 18) -> None:
    """The dense case's mesh, written to ``path`` (``.npz``) so that a fresh process measures
    only the step (building the mesh has a peak of its own)."""
    import numpy as np

    from napari_flex3d.mesh.build import build_grid_mesh

    mesh = build_grid_mesh(np.ones((cells_across,) * 3, bool), 1.0, cell_size_a=1.0)
    np.savez(path, vertices_a=mesh.vertices_a, cells=mesh.cells)


def _dense_case(device, mesh_path: Path, batch: int = 256):
    import numpy as np
    import torch

    from napari_flex3d.mesh.rigidity import rest_edge_inverse

    mesh = np.load(mesh_path)
    X = torch.as_tensor(mesh["vertices_a"], dtype=torch.float32, device=device)
    cells = torch.as_tensor(mesh["cells"], dtype=torch.int64, device=device)
    w = torch.rand(len(cells), generator=torch.Generator().manual_seed(0)).to(device) + 0.5
    disp = (0.08 * torch.randn(batch, len(X), 3, generator=torch.Generator().manual_seed(1))).to(device)
    return X, cells, w, rest_edge_inverse(X, cells), disp


def _dense_step(device, mesh_path: Path, whole: bool):
    """Forward + backward of the dense case; ``whole``: the batch in one piece. Returns the gradient."""
    from napari_flex3d.mesh import rigidity

    X, cells, w, inv, disp = _dense_case(device, mesh_path)
    saved = rigidity._CHUNK_BYTES
    if whole:
        rigidity._CHUNK_BYTES = 1 << 62
    try:
        d = disp.requires_grad_(True)
        rigidity.rigidity_energy(X, d, cells, w, rest_inv=inv).sum().backward()
    finally:
        rigidity._CHUNK_BYTES = saved
    return d.grad


def _peak_gb_in_fresh_process(mesh_path: Path, whole: bool) -> float:
    """Peak resident memory added by one dense step, in a process of its own (CPU; Linux).

    Read from ``VmHWM`` in ``/proc/self/status``: ``ru_maxrss`` would carry over the parent's
    resident size from the fork."""
    import subprocess

    code = ("import sys, torch; sys.path.insert(0, %r); sys.path.insert(0, %r); import rigidity as b; "
            "hwm = lambda: int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]); "
            "torch.set_num_threads(1); b._dense_case('cpu', %r); base = hwm(); "
            "b._dense_step('cpu', %r, %r); print((hwm() - base) / 2**20)"
            % (str(Path(__file__).resolve().parent.parent / "src"), str(Path(__file__).resolve().parent),
               str(mesh_path), str(mesh_path), whole))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def main(argv=None) -> int:
    import numpy as np
    import torch

    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.mesh.rigidity import rest_edge_inverse, rigidity_energy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dense-only", action="store_true", help="only the whole batch against pieces of it")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    def timed(fn, repeats=None):
        return best_time(fn, device, repeats or a.repeats)

    print(f"device {device}, {torch.get_num_threads()} thread(s); best of {a.repeats}")
    for batch, cells_across in [] if a.dense_only else [(128, 5), (256, 7)]:
        mask = np.ones((cells_across,) * 3, bool)
        mesh = build_grid_mesh(mask, 1.0, cell_size_a=1.0)  # 6 tetrahedra per cube
        X = torch.as_tensor(mesh.vertices_a, dtype=torch.float32, device=device)
        cells = torch.as_tensor(mesh.cells, dtype=torch.int64, device=device)
        w = torch.rand(len(cells), generator=torch.Generator().manual_seed(0)).to(device) + 0.5
        inv = rest_edge_inverse(X, cells)
        g = torch.Generator().manual_seed(1)
        disp = (0.08 * torch.randn(batch, len(X), 3, generator=g)).to(device)  # strains of a few %

        def run(fn):
            d = disp.clone().requires_grad_(True)
            fn(inv, d, cells, w).sum().backward()
            return d.grad

        new = lambda i, d, c, ww: rigidity_energy(X, d, c, ww, rest_inv=i)  # noqa: E731
        fns = {"svdvals": reference_energy, "SVD-free, autograd": autograd_energy, "SVD-free": new}
        times = {k: timed(lambda f=f: run(f)) for k, f in fns.items()}
        kept = {k: saved_bytes(lambda f=f: f(inv, disp.clone().requires_grad_(True), cells, w)) for k, f in fns.items()}
        e_ref = reference_energy(inv.double(), disp.double(), cells, w.double())
        e_new = rigidity_energy(X.double(), disp.double(), cells, w.double(), rest_inv=inv.double())
        g_ref, g_new, g_auto = run(reference_energy), run(new), run(autograd_energy)
        print(f"b={batch}, {len(cells)} cells: " + ", ".join(
            f"{k} {times[k] * 1e3:.1f} ms, keeps {kept[k] / 2**20:.1f} MiB" for k in fns))
        print(f"  SVD-free against svdvals {times['svdvals'] / times['SVD-free']:.1f}x faster, against its autograd "
              f"version {times['SVD-free, autograd'] / times['SVD-free']:.2f}x faster and "
              f"{kept['SVD-free, autograd'] / kept['SVD-free']:.2f}x less kept; energy rel. diff (float64) "
              f"{((e_new - e_ref).abs() / e_ref).max().item():.1e}, gradient max diff (float32) "
              f"{(g_new - g_ref).abs().max().item():.1e} of {g_ref.abs().max().item():.1e} (autograd version: "
              f"{(g_new - g_auto).abs().max().item():.1e})")

    # the dense mesh: the batch in pieces against at once (each step builds its own inputs)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mesh_path = Path(tmp) / "dense.npz"
        _dense_mesh(mesh_path)
        times, grads, peak = {}, {}, {}
        for whole in (True, False):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            step = lambda whole=whole: grads.__setitem__(whole, _dense_step(device, mesh_path, whole))  # noqa: E731
            times[whole] = timed(step, repeats=min(a.repeats, 2))  # seconds each on a CPU
            if device.type == "cuda":
                peak[whole] = (torch.cuda.max_memory_allocated(device) - base) / 2**30
            else:
                peak[whole] = _peak_gb_in_fresh_process(mesh_path, whole)
        diff = (grads[True] - grads[False]).abs().max().item()
    print(f"b=256, 34992 cells (the dense box-128 mesh's size), forward + backward: whole batch {times[True]:.2f} s, "
          f"peak +{peak[True]:.2f} GB; in pieces of at most {_chunk_mib():.0f} MiB {times[False]:.2f} s, peak "
          f"+{peak[False]:.2f} GB: {peak[True] / peak[False]:.2f}x less memory in {times[False] / times[True]:.2f}x "
          f"the time; gradient max diff {diff:.1e}")
    return 0


def _chunk_mib() -> float:
    from napari_flex3d.mesh import rigidity

    return rigidity._CHUNK_BYTES / 2**20


if __name__ == "__main__":
    raise SystemExit(main())
