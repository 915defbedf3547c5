"""How well a run recovered a simulated motion: latents against true coordinates, maps against true states.

Used by the slow hinge test, ``benchmarks/recovery.py`` and the demo. The truth comes
from a ``flex3d simulate`` folder (``truth/coords.npy``, ``truth/truth.json``,
``truth/state_*.mrc``); nothing here is used in training. Imports config/core and the
features it scores (simulate's truth, explore's maps, reconstruct's masked FSC); no
feature imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..training.agreement import canonical_correlations

__all__ = [
    "spearman", "best_spearman", "quadratic_readout_correlations", "latents_for_coords",
    "masked_correlation", "map_figures", "state_fsc_report", "displacement_modes", "motion_modes",
]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two ``(n,)`` arrays."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a), np.asarray(b)).statistic)


def best_spearman(latents: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """For each true coordinate ``(n, k)``, the largest ``|Spearman|`` over the latent axes ``(n, K)``: ``(k,)``."""
    latents, coords = np.atleast_2d(latents.T).T, np.atleast_2d(coords.T).T
    return np.array([max(abs(spearman(latents[:, j], coords[:, i])) for j in range(latents.shape[1])) for i in range(coords.shape[1])])


def quadratic_readout_correlations(latents: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Canonical correlations between the true coordinates ``coords (n, k)`` and their least-squares
    prediction from the latents ``(n, K)``, their squares and pairwise products: ``(min(K, k),)``.

    A diagnostic beside :func:`~napari_flex3d.training.agreement.canonical_correlations`, not a replacement: it forgives a latent
    space that is bent (one motion tracing a curve instead of a line), which the linear figure
    counts as error. The auto-decoder's objective does not change under a smooth warp of the
    latent space, so a bend inherited from the start stays; the difference between the two
    figures says how much of the linear figure's shortfall is that bend.
    """
    z = np.atleast_2d(np.asarray(latents, np.float64).T).T
    c = np.atleast_2d(np.asarray(coords, np.float64).T).T
    z = (z - z.mean(0)) / np.where(z.std(0) > 0, z.std(0), 1.0)
    i, j = np.triu_indices(z.shape[1])
    features = np.concatenate([np.ones((len(z), 1)), z, z[:, i] * z[:, j]], axis=1)  # (n, 1 + K + K(K+1)/2)
    coef, *_ = np.linalg.lstsq(features, c, rcond=None)
    prediction = features @ coef  # (n, k)
    return canonical_correlations(prediction, c)[: min(z.shape[1], c.shape[1])]


def latents_for_coords(latents: np.ndarray, coords: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Latent points ``(m, K)`` for true coordinates ``query (m, k)`` by a least-squares linear fit ``z ~ a + B c``."""
    c1 = np.concatenate([np.ones((len(coords), 1)), coords], axis=1)  # (n, 1 + k)
    coef, *_ = np.linalg.lstsq(c1, latents, rcond=None)  # (1 + k, K)
    q1 = np.concatenate([np.ones((len(query), 1)), np.atleast_2d(query)], axis=1)
    return q1 @ coef


def masked_correlation(a, b, weight) -> float:
    """Weighted Pearson correlation of two maps over the voxels, weights ``weight`` (a soft mask); any scale."""
    import torch

    a, b, w = (torch.as_tensor(x, dtype=torch.float64) for x in (a, b, weight))
    w = w / w.sum()
    da, db = a - (w * a).sum(), b - (w * b).sum()
    return float((w * da * db).sum() / ((w * da * da).sum() * (w * db * db).sum()).sqrt())


def map_figures(vol, true, mask, apix: float, threshold: float = 0.143) -> dict:
    """How close ``vol (N, N, N)`` is to the true density ``true``: over the whole box and
    inside the soft ``mask`` of a domain.

    Returns ``a`` and ``half_a`` (Å at ``threshold`` and 0.5 of the FSC over the whole box),
    ``moving_a`` and ``moving_half_a`` (the same of the masked FSC, with both maps flattened
    by one radial filter first, as :func:`~napari_flex3d.reconstruct.validation.masked_fsc`
    does for half maps, so that the curve is not the mask's own edge) and ``moving_corr``
    (:func:`masked_correlation`).

    Inside a moving domain the FSC is blind to motion blur: an average of the domain's
    positions keeps the phases of each and only lowers amplitudes, which an FSC normalises
    away (the noise-free average of a simulation's states reaches Nyquist there, see
    ``tests/training/test_recovery_figures.py``); misplacement, a phase error, is what it
    sees. The real-space correlation sees both, so it is the figure that says whether a
    domain is resolved better.
    """
    import torch

    from ..ops.fsc import fsc, fsc_resolution
    from ..reconstruct.validation import masked_fsc

    vol, true = torch.as_tensor(vol), torch.as_tensor(true)
    box = vol.shape[-1]
    whole = fsc(vol, true)
    moving = masked_fsc(vol, true, apix, mask=torch.as_tensor(mask)).curve
    return {
        "a": fsc_resolution(whole, box, apix, threshold),
        "half_a": fsc_resolution(whole, box, apix, 0.5),
        "moving_a": fsc_resolution(moving, box, apix, threshold),
        "moving_half_a": fsc_resolution(moving, box, apix, 0.5),
        "moving_corr": masked_correlation(vol, true, mask),
    }


def state_fsc_report(run_dir, sim_dir, threshold: float = 0.143, moving_domain=(1, 2)) -> list[dict]:
    """The convected map at each true state's latent against the true density, next to the
    consensus map and, as a control, the noise-free average of the simulation's states.

    The latent of a true state comes from :func:`latents_for_coords`. Each map is compared
    with the true state's density at the training box by :func:`map_figures`, the domain
    being the moving one (``moving_domain``: the simulator's linker and arm,
    :func:`~napari_flex3d.simulate.oracle.domain_mask` at rest, dilated, with a soft edge).
    Returns one dict per state: ``coords`` and, for ``name`` in ``flex``, ``consensus`` and
    ``average``, the figures of :func:`map_figures` as ``{name}_{figure}`` (``flex_a``,
    ``consensus_moving_corr``, ...). The average (``truth/average.mrc``: pure motion blur, no
    noise) shows what the moving-domain FSC cannot see.
    """
    import torch

    from ..explore.generate import generate_volume
    from ..io.mrc import read_map
    from ..ops.fourier import fourier_crop_3d
    from ..simulate.oracle import domain_mask

    run_dir, sim_dir = Path(run_dir), Path(sim_dir)
    truth = json.loads((sim_dir / "truth" / "truth.json").read_text())
    coords = np.load(sim_dir / "truth" / "coords.npy", allow_pickle=False)
    latents = np.load(run_dir / "latents.npy", allow_pickle=False)
    n = len(latents)

    def at_box(path, box):  # a copy: the array may be read-only
        vol = torch.tensor(read_map(path).data)
        return vol if vol.shape[-1] == box else fourier_crop_3d(vol, box)

    out, mask, refs = [], None, None
    for state in truth["states"]:
        c = np.asarray(state["coords"], np.float64)[None]
        z = latents_for_coords(latents, coords[:n], c)[0]
        flex, apix = generate_volume(run_dir, z)
        flex = torch.as_tensor(flex)
        box = flex.shape[-1]
        if mask is None:
            mask = torch.as_tensor(domain_mask(sim_dir, moving_domain, box=box))
            refs = {"consensus": at_box(sim_dir / "consensus.mrc", box),
                    "average": at_box(sim_dir / "truth" / truth.get("average", "average.mrc"), box)}
        true = at_box(sim_dir / "truth" / state["file"], box)
        row = {"coords": state["coords"]}
        for name, vol in (("flex", flex), *refs.items()):
            row.update({f"{name}_{k}": v for k, v in map_figures(vol, true, mask, apix, threshold).items()})
        out.append(row)
    return out


def displacement_modes(displacements, n_modes: int = 4) -> np.ndarray:
    """Singular values ``(min(n_modes, ...),)``, relative to the largest, of per-particle vertex
    displacements ``(n, v, 3)`` about their mean over the particles.

    How many independent displacement fields the motion uses: a flow that is linear in its
    latents has exactly ``K`` non-zero values; a rotation adds its curvature (the ``1 - cos``
    term) as further modes.
    """
    d = np.asarray(displacements, np.float64).reshape(len(displacements), -1)
    s = np.linalg.svd(d - d.mean(0), compute_uv=False)[:n_modes]
    return s / s[0] if s[0] > 0 else s


def motion_modes(run_dir, sim_dir, n: int = 2000, n_modes: int = 4) -> dict:
    """:func:`displacement_modes` of a run's flow at its first ``n`` particles' latents and of the
    simulator's true motion of the same particles, both on the run's own mesh.

    The truth is the least-squares fit of the atoms' displacements on the mesh's vertices
    (:func:`~napari_flex3d.simulate.oracle.true_vertex_displacements`). Returns ``{"trained":
    (m,), "true": (m,)}``; where the trained values fall off faster than the true ones, the flow
    is missing part of the motion's shape and the latents bend to make up for it.
    """
    import torch

    from ..explore.generate import load_generator
    from ..mesh.mesh import load_mesh
    from ..simulate.oracle import simulated_molecule, true_vertex_displacements

    run_dir, sim_dir = Path(run_dir), Path(sim_dir)
    mol, truth = simulated_molecule(sim_dir)
    model, latents = load_generator(run_dir)
    n = min(int(n), len(latents))
    coords = np.load(sim_dir / "truth" / "coords.npy", allow_pickle=False)[:n]
    mesh = load_mesh(run_dir / "mesh.npz")
    d_true, _, _ = true_vertex_displacements(mesh, mol, coords, truth["motion"])
    with torch.no_grad():
        d_trained = model.displacements(latents[:n]).cpu().numpy()
    return {"trained": displacement_modes(d_trained, n_modes), "true": displacement_modes(d_true, n_modes)}
