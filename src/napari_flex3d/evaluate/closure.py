"""Does a model reach the end states of a simulated closure? Figures of a trained run beside the oracle's.

:func:`closure_figures` scores any ``FlexModel`` and its per-particle latents against a
``flex3d simulate --motion closure`` folder (it works for the other motions too, the moving
domain being the linker and arm):

- ``spearman``: the latent's best |Spearman| with the true coordinate (``canonical`` for K > 1);
- ``moving_corr``: at the open end, the middle and the closed end, the convected map's
  correlation with the true density inside the moving domain (a soft mask round linker and
  arm); a state's latent is the median latent of the 5 % of particles truly nearest it, so an
  end state is where its particles are, not where a linear fit puts it;
- ``excursion``: the moving domain's atoms' displacement between the two end states as the
  flow predicts it (interpolated from the mesh), projected on the true one, as a fraction of
  it (1: the full excursion; ``excursion_rms`` the ratio of the two RMS lengths);
- ``span``: the convected maps at the latent's 3rd and 97th percentiles are matched against
  true maps at 41 states along the path; the true coordinates they match best (``span_match``)
  against those particles' own (``span_true``), as the ratio of the two spans;
- ``modes`` / ``curvature``: the motion modes (:func:`~.recovery.displacement_modes`) of the
  flow at the first 2,000 particles' latents and of the truth on the same mesh; the curvature:
  along 41 even steps from the open end's latent to the closed end's (the truth: from -1 to
  +1), how much of the truth's second displacement mode (the arc's ``1 - cos`` term) the flow
  carries, projected on it (a flow that stops short of the ends carries less: the term grows
  with the square of the angle).

:func:`oracle_latents` infers each particle's latent for a model with the project's own grid
inference (:func:`~napari_flex3d.training.latents.infer_latents_grid`), the model frozen; with
:func:`~napari_flex3d.simulate.oracle.true_motion_model_and_mesh` it is the oracle: the best a
3DFlex model of this mesh and flow family can do on these particles.
Imports core (io, mesh, model), simulate's truth, training's inference and :mod:`.recovery`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .recovery import best_spearman, displacement_modes, masked_correlation

__all__ = ["closure_figures", "oracle_latents", "oracle_closure_figures", "run_closure_figures"]


def _state_latents(latents: np.ndarray, coords: np.ndarray, states: np.ndarray, share: float = 0.05) -> np.ndarray:
    """``(s, K)``: for each true coordinate ``states (s,)``, the median latent of the ``share`` of
    particles whose first true coordinate is nearest it (at least 10)."""
    m = max(10, int(share * len(coords)))
    return np.stack([np.median(latents[np.argsort(np.abs(coords[:, 0] - c))[:m]], axis=0) for c in states])


def _model_mesh(model):
    from ..mesh import Mesh

    return Mesh(model.vertices_a.cpu().numpy(), model.cells.cpu().numpy(), int(model.box), float(model.apix))


def _render(mol, coords: np.ndarray, motion: str, box: int, apix: float) -> list[torch.Tensor]:
    from ..simulate.molecule import deform
    from ..simulate.render import render_volume

    return [render_volume(torch.as_tensor(x, dtype=torch.float32), box, apix, mol.sigma_a)
            for x in deform(mol, coords, motion)]


def _latent_axis(latents: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(K,)`` unit direction in latent space that best predicts the first true coordinate (least squares)."""
    z = latents - latents.mean(0)
    w, *_ = np.linalg.lstsq(z, coords[:, 0] - coords[:, 0].mean(), rcond=None)
    return w / max(np.linalg.norm(w), 1e-12)


@torch.no_grad()
def closure_figures(model, latents, sim_dir, n_path: int = 41, percentiles=(3.0, 97.0), n_modes: int = 2000) -> dict:
    """The figures of the module docstring for ``model`` (a ``FlexModel``) with latents ``(n, K)``
    in the STAR's row order (the first ``n`` particles of the simulation)."""
    from ..mesh import barycentric_matrix
    from ..simulate.molecule import deform
    from ..simulate.oracle import domain_mask, simulated_molecule, true_vertex_displacements
    from ..training.agreement import canonical_correlations

    sim_dir = Path(sim_dir)
    mol, truth = simulated_molecule(sim_dir)
    motion = truth["motion"]
    latents = np.asarray(latents, np.float64).reshape(len(latents), -1)
    coords = np.load(sim_dir / "truth" / "coords.npy", allow_pickle=False)[: len(latents)].astype(np.float64)
    k_dim = latents.shape[1]
    out = {"spearman": float(best_spearman(latents, coords)[0])}
    if k_dim > 1 or coords.shape[1] > 1:
        out["canonical"] = [float(c) for c in canonical_correlations(latents, coords)]
    box, apix = int(model.box), float(model.apix)
    mask = domain_mask(sim_dir, (1, 2), box=box)

    def volume(z):
        return model.volume(torch.as_tensor(np.asarray(z), dtype=torch.float32).to(model.vertices_a))

    ends = np.zeros((3, coords.shape[1]))
    ends[:, 0] = (-1.0, 0.0, 1.0)
    z_states = _state_latents(latents, coords, ends[:, 0])  # (3, K)
    true_maps = _render(mol, ends, motion, box, apix)
    out["moving_corr"] = [masked_correlation(volume(z), t, mask) for z, t in zip(z_states, true_maps)]

    moving = mol.domain == 2
    b = barycentric_matrix(_model_mesh(model), mol.xyz_a[moving], dtype=torch.float64).to_dense().numpy()  # (a, v)
    d = model.displacements(torch.as_tensor(z_states[[0, 2]], dtype=torch.float32).to(model.vertices_a))
    pred = b @ (d[1] - d[0]).double().cpu().numpy()  # (a, 3) Å
    moved = deform(mol, ends[[0, 2]], motion)[:, moving]
    true = moved[1] - moved[0]
    out["excursion"] = float((pred * true).sum() / (true * true).sum())
    out["excursion_rms"] = float(np.sqrt((pred**2).sum() / (true**2).sum()))
    out["excursion_true_rms_a"] = float(np.sqrt((true**2).sum(1).mean()))

    axis = _latent_axis(latents, coords)
    t = latents @ axis  # (n,) the latent along the direction that follows the truth
    lo, hi = np.percentile(t, percentiles)
    path = np.zeros((n_path, coords.shape[1]))
    path[:, 0] = np.linspace(-1.0, 1.0, n_path)
    path_maps = _render(mol, path, motion, box, apix)
    match, own = [], []
    for q, level in zip(percentiles, (lo, hi)):
        vol = volume(latents.mean(0) + (level - t.mean()) * axis)
        match.append(float(path[np.argmax([masked_correlation(vol, m, mask) for m in path_maps]), 0]))
        band = np.abs(t - level) <= np.percentile(np.abs(t - level), 2.0)  # the 2 % of particles nearest that level
        own.append(float(np.median(coords[band, 0])))
    out["span_match"], out["span_true"] = match, own
    out["span"] = float(abs(match[1] - match[0]) / max(abs(own[1] - own[0]), 1e-9))

    m = min(int(n_modes), len(latents))
    d_true, _, _ = true_vertex_displacements(_model_mesh(model), mol, coords[:m], motion)
    d_model = model.displacements(torch.as_tensor(latents[:m], dtype=torch.float32).to(model.vertices_a)).cpu().numpy()
    modes = {"trained": displacement_modes(d_model), "true": displacement_modes(d_true)}
    out["modes"] = {key: [float(v) for v in val] for key, val in modes.items()}
    # the arc, independent of where the particles sit: 41 even steps from end to end, the model's
    # from the open end's latent to the closed end's, the truth's in its own coordinate
    steps = np.linspace(0.0, 1.0, 41)[:, None]
    z_path = z_states[0] + steps * (z_states[2] - z_states[0])  # (41, K)
    d_path = model.displacements(torch.as_tensor(z_path, dtype=torch.float32).to(model.vertices_a)).cpu().numpy()
    c_path = np.zeros((41, coords.shape[1]))
    c_path[:, 0] = -1.0 + 2.0 * steps[:, 0]
    d_true_path, _, _ = true_vertex_displacements(_model_mesh(model), mol, c_path, motion)
    out["curvature"] = _mode_fraction(d_path, d_true_path, 1)
    return out


def _mode_fraction(d_model: np.ndarray, d_true: np.ndarray, j: int) -> float:
    """How much of the truth's ``j``-th displacement mode ``(m, v, 3)`` the model's displacements
    at the same ``m`` steps carry: the norm of their projection on it over its singular value.

    Projected on the truth's field, and along an evenly stepped path, not a ratio of relative
    singular values at the particles' latents: a flow between two crowded ends has second
    modes of its own that are not the arc's, and the particles' spread changes those values
    (measured at the particles: relative second modes 0.21 trained against 0.04 true on a
    closure whose flow reached a third of the excursion)."""
    t = d_true.reshape(len(d_true), -1)
    t = t - t.mean(0)
    _, s, vt = np.linalg.svd(t, full_matrices=False)
    if j >= len(s) or s[j] <= 0:
        return float("nan")
    d = d_model.reshape(len(d_model), -1).astype(np.float64)
    return float(np.linalg.norm((d - d.mean(0)) @ vt[j]) / s[j])


@torch.no_grad()
def oracle_latents(model, sim_dir, n: int | None = None, batch: int = 256, n_grid: int = 11, sweeps: int = 2,
                   z_range: float = 1.0, band: float = 0.8, estimate: str = "mean") -> np.ndarray:
    """Each of the first ``n`` particles' latent ``(n, K)`` for a frozen ``model`` whose latent is
    the true coordinate (so ``z_range`` 1 covers it), inferred as training does: the whitened
    data loss at the particles' poses and CTF up to ``band`` of Nyquist, the noise spectrum
    estimated from the images' background, :func:`~napari_flex3d.training.latents.infer_latents_grid`
    with a flat prior (the oracle knows the range, not the occupancy)."""
    from ..io.particles import read_particles
    from ..model.flex import batch_from_particles, particle_noise_spectra
    from ..model.loss import data_loss
    from ..training.latents import infer_latents_grid

    ps = read_particles(Path(sim_dir) / "particles.star")
    n = len(ps) if n is None else min(int(n), len(ps))
    box = int(model.box)
    spectra = particle_noise_spectra(ps, box=box)  # (groups, shells)
    max_freq_px = band * box / 2
    model.max_freq_px = max_freq_px
    out = []
    for s in range(0, n, batch):
        b = batch_from_particles(ps, np.arange(s, min(s + batch, n)), box=box)

        def loss_fn(z, b=b):
            pred = model.project(z, b["rotations"], b["shifts_a"], ctf=b["ctf"])
            return data_loss(pred, b["images"], spectra[b["optics_group"]], max_freq_px=max_freq_px, scale="fit")

        z0 = torch.zeros(len(b["images"]), model.latent_dim)
        out.append(infer_latents_grid(loss_fn, z0, sweeps=sweeps, n_grid=n_grid, z_range=z_range, prior_weight=0.0,
                                      estimate=estimate).numpy())
    return np.concatenate(out)


def oracle_closure_figures(sim_dir, box: int | None = None, n: int | None = None, latents_file=None) -> dict:
    """:func:`closure_figures` of the oracle (the true map and motion at ``box``, latents from
    :func:`oracle_latents` of the first ``n`` particles). ``latents_file`` (``.npy``): reused if
    it holds ``n`` latents, else written (the inference is the slow part)."""
    from ..simulate.oracle import true_motion_model_and_mesh

    model, _, _ = true_motion_model_and_mesh(sim_dir, box=box)
    model.eval()
    path = None if latents_file is None else Path(latents_file)
    if path is not None and path.is_file() and (n is None or len(np.load(path, allow_pickle=False)) == n):
        latents = np.load(path, allow_pickle=False)
        model.max_freq_px = 0.8 * int(model.box) / 2  # as oracle_latents leaves it
    else:
        latents = oracle_latents(model, sim_dir, n=n)
        if path is not None:
            from ..io.atomic import save_npy

            save_npy(path, latents)
    return closure_figures(model, latents, sim_dir)


def run_closure_figures(run_dir, sim_dir, **kwargs) -> dict:
    """:func:`closure_figures` (``kwargs`` passed on) of a trained run (its final model and latents)."""
    from ..explore.generate import load_generator

    model, latents = load_generator(run_dir)
    return closure_figures(model, latents.numpy(), sim_dir, **kwargs)
