"""How well a run recovered a simulated motion: latents against true coordinates, maps against true states.

Used by the CI learning test, ``benchmarks/recovery.py`` and the demo. The truth comes
from a ``flex3d simulate`` folder (``truth/coords.npy``, ``truth/truth.json``,
``truth/state_*.mrc``); nothing here is used in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = [
    "spearman", "best_spearman", "canonical_correlations", "latents_for_coords", "masked_correlation", "state_fsc_report",
]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two ``(n,)`` arrays."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a), np.asarray(b)).statistic)


def best_spearman(latents: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """For each true coordinate ``(n, k)``, the largest ``|Spearman|`` over the latent axes ``(n, K)``: ``(k,)``."""
    latents, coords = np.atleast_2d(latents.T).T, np.atleast_2d(coords.T).T
    return np.array([max(abs(spearman(latents[:, j], coords[:, i])) for j in range(latents.shape[1])) for i in range(coords.shape[1])])


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations between ``x (n, p)`` and ``y (n, q)``: ``(min(p, q),)``, largest first.

    The singular values of ``Qx^T Qy`` with ``Qx``, ``Qy`` orthonormal bases of the centred columns.
    """
    x = np.atleast_2d(np.asarray(x, np.float64).T).T
    y = np.atleast_2d(np.asarray(y, np.float64).T).T
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    return np.clip(np.linalg.svd(qx.T @ qy, compute_uv=False), 0.0, 1.0)


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


def state_fsc_report(run_dir, sim_dir, threshold: float = 0.143, moving_domain=(1, 2)) -> list[dict]:
    """FSC resolution against each true state: the convected map at the state's latent vs the consensus.

    The latent of a true state comes from :func:`latents_for_coords`. Both maps are
    compared with the true state's density at the training box, over the whole box and
    inside a soft mask around the moving domain (``moving_domain``: the simulator's linker
    and arm, :func:`~napari_flex3d.simulate.oracle.domain_mask` at rest, dilated, with a
    soft edge; the same mask multiplies the map and the truth). Returns one dict per
    state: ``coords``, ``flex_a``, ``consensus_a``, ``flex_moving_a``,
    ``consensus_moving_a`` (Å at ``threshold``) and the same at FSC 0.5 (``flex_half_a``,
    ``consensus_half_a``, ``flex_moving_half_a``, ``consensus_moving_half_a``): at a
    small training box both maps often reach its Nyquist at 0.143, and 0.5 still tells
    them apart; a masked FSC keeps the mask's own edge in both maps and often stays
    high to Nyquist, so ``flex_moving_corr`` and ``consensus_moving_corr`` give the
    mask-weighted real-space correlation with the truth (:func:`masked_correlation`).
    """
    import torch

    from ..explore.generate import generate_volume
    from ..io.mrc import read_map
    from ..ops.fourier import fourier_crop_3d
    from ..ops.fsc import fsc, fsc_resolution
    from ..simulate.oracle import domain_mask

    run_dir, sim_dir = Path(run_dir), Path(sim_dir)
    truth = json.loads((sim_dir / "truth" / "truth.json").read_text())
    coords = np.load(sim_dir / "truth" / "coords.npy")
    latents = np.load(run_dir / "latents.npy")
    n = len(latents)
    consensus = torch.tensor(read_map(sim_dir / "consensus.mrc").data)  # a copy: the array may be read-only
    out, mask = [], None
    for state in truth["states"]:
        c = np.asarray(state["coords"], np.float64)[None]
        z = latents_for_coords(latents, coords[:n], c)[0]
        flex, apix = generate_volume(run_dir, z)
        flex = torch.as_tensor(flex)
        box = flex.shape[-1]
        true = torch.tensor(read_map(sim_dir / "truth" / state["file"]).data)
        if true.shape[-1] != box:
            true = fourier_crop_3d(true, box)
        cons = consensus if consensus.shape[-1] == box else fourier_crop_3d(consensus, box)
        if mask is None:
            mask = torch.as_tensor(domain_mask(sim_dir, moving_domain, box=box))

        row = {"coords": state["coords"]}
        for name, vol in (("flex", flex), ("consensus", cons)):
            whole, moving = fsc(vol, true), fsc(vol * mask, true * mask)
            row[f"{name}_a"] = fsc_resolution(whole, box, apix, threshold)
            row[f"{name}_moving_a"] = fsc_resolution(moving, box, apix, threshold)
            row[f"{name}_half_a"] = fsc_resolution(whole, box, apix, 0.5)
            row[f"{name}_moving_half_a"] = fsc_resolution(moving, box, apix, 0.5)
            row[f"{name}_moving_corr"] = masked_correlation(vol, true, mask)
        out.append(row)
    return out
