"""How well a run recovered a simulated motion: latents against true coordinates, maps against true states.

Used by the CI learning test, ``benchmarks/recovery.py`` and the demo. The truth comes
from a ``flex3d simulate`` folder (``truth/coords.npy``, ``truth/truth.json``,
``truth/state_*.mrc``); nothing here is used in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["spearman", "best_spearman", "canonical_correlations", "latents_for_coords", "state_fsc_report"]


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


def state_fsc_report(run_dir, sim_dir, threshold: float = 0.143) -> list[dict]:
    """FSC resolution against each true state: the convected map at the state's latent vs the consensus.

    The latent of a true state comes from :func:`latents_for_coords`. Both maps are
    compared with the true state's density at the training box. Returns one dict per
    state: ``coords``, ``flex_a``, ``consensus_a`` (Å at ``threshold``).
    """
    import torch

    from ..explore.generate import generate_volume
    from ..io.mrc import read_map
    from ..ops.fourier import fourier_crop_3d
    from ..ops.fsc import fsc, fsc_resolution

    run_dir, sim_dir = Path(run_dir), Path(sim_dir)
    truth = json.loads((sim_dir / "truth" / "truth.json").read_text())
    coords = np.load(sim_dir / "truth" / "coords.npy")
    latents = np.load(run_dir / "latents.npy")
    n = len(latents)
    consensus = torch.tensor(read_map(sim_dir / "consensus.mrc").data)  # a copy: the array may be read-only
    out = []
    for state in truth["states"]:
        c = np.asarray(state["coords"], np.float64)[None]
        z = latents_for_coords(latents, coords[:n], c)[0]
        flex, apix = generate_volume(run_dir, z)
        box = flex.shape[-1]
        true = torch.tensor(read_map(sim_dir / "truth" / state["file"]).data)
        if true.shape[-1] != box:
            true = fourier_crop_3d(true, box)
        cons = consensus if consensus.shape[-1] == box else fourier_crop_3d(consensus, box)
        out.append(
            {
                "coords": state["coords"],
                "flex_a": fsc_resolution(fsc(torch.as_tensor(flex), true), box, apix, threshold),
                "consensus_a": fsc_resolution(fsc(cons, true), box, apix, threshold),
            }
        )
    return out
