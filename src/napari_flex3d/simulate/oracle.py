"""An oracle 3DFlex model of a simulated dataset: the flow generator fitted to the
simulator's true motion, the canonical map set to the true rest-state map.

Training should approach it; reconstruction and benchmarks use it to separate what the
solver can do from what training learned. Nothing here reads anything but the files
``flex3d simulate`` wrote (``truth/truth.json``, ``truth/atoms.npy``, the state maps).
Imports core (io, ops, mesh, model) and simulate's own :mod:`.molecule`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["simulated_molecule", "true_vertex_displacements", "true_motion_model", "true_motion_model_and_mesh",
           "domain_mask"]


def simulated_molecule(sim_dir):
    """``(molecule, truth)``: the simulator's molecule rebuilt from ``truth/truth.json`` (and that
    file's contents), checked against the rest coordinates in ``truth/atoms.npy``; for the
    closure motion a :class:`~.closure.ClosureMolecule` read from ``truth/`` (atoms, domains, weights)."""
    from .molecule import build_molecule

    truth_dir = Path(sim_dir) / "truth"
    truth = json.loads((truth_dir / "truth.json").read_text())
    if truth["motion"] == "closure":  # a user's model cannot be rebuilt: its atoms and weights are in truth/
        from .closure import ClosureMolecule

        c = truth["closure"]
        mol = ClosureMolecule(
            np.load(truth_dir / "atoms.npy", allow_pickle=False).astype(np.float64), np.load(truth_dir / "atom_domains.npy", allow_pickle=False),
            np.load(truth_dir / "atom_motion_weight.npy", allow_pickle=False), np.asarray(c["axis_point_a"]),
            np.asarray(c["axis_direction"]), float(c["closure_deg"]), float(truth["atom_sigma_a"]),
        )
        return mol, truth
    mol = build_molecule(int(truth["box"]), float(truth["apix"]), n_atoms=truth["n_atoms"], seed=truth["seed"])
    if not np.allclose(mol.xyz_a, np.load(truth_dir / "atoms.npy", allow_pickle=False), atol=1e-3):
        raise ValueError(f"{truth_dir}: the rebuilt molecule differs from atoms.npy (another simulator version?)")
    return mol, truth


def true_vertex_displacements(mesh, mol, coords_grid: np.ndarray, motion: str, smooth: float = 0.1):
    """Vertex displacements ``(s, v, 3)`` Å whose FEM interpolation best matches the atoms' motion.

    Least squares over the atoms at each of the ``coords_grid (s, k)`` states, with a small
    edge-difference penalty (``smooth``) that fixes vertices far from any atom. Returns
    ``(d, residual_rms_a, motion_rms_a)``.
    """
    from ..mesh import barycentric_matrix, mesh_edges
    from .molecule import deform

    u_atoms = deform(mol, coords_grid, motion) - mol.xyz_a  # (s, a, 3)
    b = barycentric_matrix(mesh, mol.xyz_a, dtype=torch.float64).to_dense().numpy()  # (a, v)
    e = mesh_edges(mesh)  # (e, 2)
    n_v = len(mesh.vertices_a)
    diff = np.zeros((len(e), n_v))
    diff[np.arange(len(e)), e[:, 0]], diff[np.arange(len(e)), e[:, 1]] = 1.0, -1.0
    lhs = b.T @ b + smooth * diff.T @ diff  # (v, v)
    rhs = np.einsum("av,sad->vsd", b, u_atoms).reshape(n_v, -1)
    d = np.linalg.solve(lhs, rhs).reshape(n_v, len(coords_grid), 3).transpose(1, 0, 2)
    resid = np.einsum("av,svd->sad", b, d) - u_atoms
    return d, float(np.sqrt((resid**2).mean())), float(np.sqrt((u_atoms**2).mean()))


def _resize_map(vol: np.ndarray, box: int) -> np.ndarray:
    if vol.shape[0] == box:
        return vol
    from ..ops.fourier import fourier_crop_3d

    return fourier_crop_3d(torch.tensor(vol, dtype=torch.float32), box).numpy()


def true_motion_model(sim_dir, box: int | None = None, cells_across: float = 12, fit_steps: int = 300, seed: int = 0):
    """``(model, latents)``: a ``FlexModel`` at ``box`` (default: the simulation's) with the true
    rest map as ``V`` and a flow generator fitted to the true motion, and the true motion
    coordinates ``(n, k)`` as latents (in the STAR's row order)."""
    model, _, latents = true_motion_model_and_mesh(sim_dir, box, cells_across, fit_steps, seed)
    return model, latents


def true_motion_model_and_mesh(sim_dir, box: int | None = None, cells_across: float = 12, fit_steps: int = 300,
                               seed: int = 0):
    """:func:`true_motion_model` and the mesh it is built on: ``(model, mesh, latents)``.

    The flow generator is fitted, with the latent fixed to the true coordinate, to the
    per-vertex displacements of :func:`true_vertex_displacements` at 41 states along each
    coordinate (11 x 11 for two): the true deformation put into the model as far as the
    mesh's linear interpolation carries it (for the closure motion, the arcs included).
    """
    from ..io.mrc import read_map
    from ..mesh import build_mesh, solvent_mask
    from ..model.flex import FlexModel
    from .molecule import motion_dim

    truth_dir = Path(sim_dir) / "truth"
    mol, truth = simulated_molecule(sim_dir)
    motion, box_sim, apix_sim = truth["motion"], int(truth["box"]), float(truth["apix"])
    box = box_sim if box is None else int(box)
    apix = apix_sim * box_sim / box
    rest_file = next(s["file"] for s in truth["states"] if np.allclose(s["coords"], 0.0))
    rest = _resize_map(np.asarray(read_map(truth_dir / rest_file).data, dtype=np.float32), box)
    masks = solvent_mask(rest, apix)
    mesh = build_mesh(masks.binary, apix, cells_across=cells_across)
    k = motion_dim(motion)
    torch.manual_seed(seed)
    model = FlexModel.from_map(rest, apix, mesh, masks.soft > 0, latent_dim=k)
    if k == 1:
        grid = np.linspace(-1.0, 1.0, 41)[:, None]
    else:
        g = np.linspace(-1.0, 1.0, 11)
        grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    d_true, _, _ = true_vertex_displacements(mesh, mol, grid, motion)
    z_grid = torch.as_tensor(grid, dtype=torch.float32)
    target = torch.as_tensor(d_true, dtype=torch.float32)
    opt = torch.optim.Adam(model.flow.parameters(), lr=2e-3)
    for _ in range(fit_steps):
        opt.zero_grad()
        (model.flow(z_grid) - target).pow(2).mean().backward()
        opt.step()
    latents = torch.as_tensor(np.load(truth_dir / "coords.npy", allow_pickle=False), dtype=torch.float32)
    return model, mesh, latents


def domain_mask(sim_dir, domain, box: int | None = None, dilate_a: float = 6.0, soft_a: float = 15.0) -> np.ndarray:
    """A soft mask ``(box,)*3`` around one domain of the molecule at rest (0 body, 1 linker,
    2 arm: the part that moves), or several (``domain=(1, 2)``: linker and arm), as a user
    would draw around a flexible domain: the atoms dilated by ``dilate_a``, then a linear
    edge ``soft_a`` wide (at least 3 voxels; a sharp edge makes the masked FSC report the
    mask, not the map)."""
    from scipy import ndimage

    mol, truth = simulated_molecule(sim_dir)
    box_sim, apix_sim = int(truth["box"]), float(truth["apix"])
    box = box_sim if box is None else int(box)
    apix = apix_sim * box_sim / box
    pts = mol.xyz_a[np.isin(mol.domain, np.atleast_1d(domain))]
    if len(pts) == 0:
        raise ValueError(f"the molecule has no atoms in domain {domain}")
    idx = np.round(pts[:, ::-1] / apix + box // 2).astype(int)  # (z, y, x) voxel indices
    idx = idx[np.all((idx >= 0) & (idx < box), axis=1)]
    hard = np.zeros((box,) * 3, dtype=bool)
    hard[tuple(idx.T)] = True
    hard = ndimage.binary_dilation(hard, iterations=max(1, int(round(dilate_a / apix))))
    soft_a = max(float(soft_a), 3.0 * apix)
    dist = ndimage.distance_transform_edt(~hard) * apix
    return np.clip(1.0 - dist / soft_a, 0.0, 1.0).astype(np.float32)
