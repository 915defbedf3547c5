"""The rigidity prior's cost: the SVD-free energy against the ``torch.linalg.svdvals`` one it replaced.

Times ``rigidity_energy`` forward + backward for a training minibatch's displacements
(``b`` particles x ``t`` mesh cells; the sizes of the CPU recovery benchmark's mesh at box 48
and of the default mesh at box 128) against the reference ``sum_l (s^_l - 1)^2`` with
``torch.linalg.svdvals`` (float32, as training ran it before) and against the first SVD-free
version (autograd through one Newton step of the quartic instead of the written-out gradient),
in the same process. Prints the bytes each keeps for the backward pass (what sets the peak
memory of a training step: on an H100 at box 128 the first SVD-free version took a step from
3.3 to 6.2 GB), and the largest difference of the energies and of their gradients.

    python benchmarks/rigidity.py                 # CPU, 1 thread
    python benchmarks/rigidity.py --device cuda   # a GPU (there the batched SVD was 62% of a step)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def reference_energy(rest_inv, disp, cells, weights):
    """The energy as computed before: float32 ``F``, ``svdvals``, sign of ``det F`` on the smallest."""
    from napari_flex3d.mesh.rigidity import deformation_gradients, signed_singular_values

    F = deformation_gradients(rest_inv, disp, cells)
    return (((signed_singular_values(F) - 1.0) ** 2).sum(-1) * weights).sum(-1)


def autograd_energy(rest_inv, disp, cells, weights):
    """The first SVD-free version: the same energy, ``dp/dF`` by autograd through one Newton step."""
    import torch

    from napari_flex3d.mesh import rigidity as r

    dD = r.edge_matrices(disp.to(torch.float64), cells)
    G = dD @ rest_inv.to(torch.float64)
    F = G + torch.eye(3, dtype=torch.float64, device=disp.device)
    i1, i2, det, _ = r._invariants(F)
    with torch.no_grad():
        p = r._largest_root(i1.reshape(-1), i2.reshape(-1), det.reshape(-1)).reshape(i1.shape)
        slope = (4.0 * (p * p - i1) * p - 8.0 * det).clamp_min(r._slope_floor(i1))
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


def main(argv=None) -> int:
    import numpy as np
    import torch

    from napari_flex3d.mesh.build import build_grid_mesh
    from napari_flex3d.mesh.rigidity import rest_edge_inverse, rigidity_energy

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    def timed(fn):
        best = float("inf")
        for _ in range(a.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    print(f"device {device}, {torch.get_num_threads()} thread(s); best of {a.repeats}")
    for batch, cells_across in [(128, 5), (256, 7)]:
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
