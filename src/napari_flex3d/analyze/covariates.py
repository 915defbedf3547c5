"""What each particle is besides its latent: defocus, pose, optics group, half set, file columns.

:func:`particle_table` joins a run's latents with every per-particle quantity a user may
colour the latent scatter by; :func:`pose_artefacts` flags a latent axis whose rank
correlation with defocus or the pose exceeds a threshold (docs/analysis.md, "Reading the
analysis report"). Angles wrap (rot = 359° sits next to rot = 1°), so the pose enters the
test as the sines and cosines of the Euler angles and the three components of the viewing
direction, never as raw degrees. Pure NumPy/pandas/SciPy; imports ``conventions`` only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..conventions import matrix_to_euler

__all__ = ["ARTEFACT_SPEARMAN", "latent_columns", "particle_table", "pose_covariates", "spearman_matrix", "pose_artefacts"]

# |Spearman| above which a latent axis is reported as tracking defocus or pose. A real motion
# is independent of how the particle lay in the ice and of its defocus, so its rank
# correlation with them is sampling noise, sd ~ 1/sqrt(n) (0.007 at 20,000 particles, 0.03 at
# 1,000): 0.3 is ten such sds at 1,000 particles, yet it catches an axis that shares a tenth
# of its rank variance with a nuisance (0.3^2 = 0.09), which is what users' artefacts look like.
ARTEFACT_SPEARMAN = 0.3


def latent_columns(k_dim: int) -> list[str]:
    """``["z1", ..., "zK"]``: the latent columns of :func:`particle_table` (1-based, as RELION's columns)."""
    return [f"z{i + 1}" for i in range(k_dim)]


def _viewing_direction(rotations: np.ndarray) -> np.ndarray:
    """``(n, 3)`` xyz unit vector of each particle's projection direction in the map frame.

    ``A r`` is the image frame and the projection integrates along its z, so the direction
    is ``A^T e_z``: the third row of ``A``.
    """
    return np.asarray(rotations, np.float64)[:, 2, :]


def particle_table(latents: np.ndarray, ps, residual: np.ndarray | None = None) -> pd.DataFrame:
    """One row per particle: ``z1..zK``, ``latent_norm``, defocus, Euler angles, viewing direction, ...

    ``latents (n, K)`` in the rows of ``ps`` (an ``io.particles.ParticleSet``). Columns:
    ``z1..zK``, ``latent_norm``, ``defocus_a`` (the mean of U and V, Å), ``astigmatism_a``,
    ``rot_deg``, ``tilt_deg``, ``psi_deg``, ``view_x/y/z``, ``shift_x_a/shift_y_a``,
    ``optics_group``, ``half_set``, ``residual`` (when given) and every numeric column of
    the input file that is not already one of these (``file:<name>``).
    """
    z = np.asarray(latents, np.float64)
    if z.ndim != 2 or len(z) != len(ps):
        raise ValueError(f"latents {z.shape} do not match the {len(ps)} particles")
    euler = matrix_to_euler(ps.rotations)  # (n, 3) degrees
    view = _viewing_direction(ps.rotations)
    cols = {name: z[:, i] for i, name in enumerate(latent_columns(z.shape[1]))}
    cols["latent_norm"] = np.linalg.norm(z, axis=1)
    cols["defocus_a"] = 0.5 * (np.asarray(ps.defocus_u_a) + np.asarray(ps.defocus_v_a))
    cols["astigmatism_a"] = np.abs(np.asarray(ps.defocus_u_a) - np.asarray(ps.defocus_v_a))
    cols.update(rot_deg=euler[:, 0], tilt_deg=euler[:, 1], psi_deg=euler[:, 2])
    cols.update(view_x=view[:, 0], view_y=view[:, 1], view_z=view[:, 2])
    shifts = np.asarray(ps.shifts_a, np.float64)
    cols.update(shift_x_a=shifts[:, 0], shift_y_a=shifts[:, 1])
    cols["optics_group"] = np.asarray(ps.optics_group, np.int64)
    cols["half_set"] = np.asarray(ps.half_set, np.int64)
    if residual is not None:
        cols["residual"] = np.asarray(residual, np.float64)
    table = pd.DataFrame(cols)
    for name in getattr(ps.table, "columns", ()):
        col = ps.table[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            table[f"file:{name}"] = col.to_numpy(np.float64)
    return table


def pose_covariates(table: pd.DataFrame) -> pd.DataFrame:
    """The nuisances a latent axis must not track, as columns that do not wrap.

    ``defocus_a``, ``astigmatism_a``, ``sin``/``cos`` of ``rot``, ``tilt`` and ``psi``, and
    ``view_x/y/z``, from a :func:`particle_table`.
    """
    out = {"defocus_a": table["defocus_a"].to_numpy(), "astigmatism_a": table["astigmatism_a"].to_numpy()}
    for angle in ("rot", "tilt", "psi"):
        rad = np.deg2rad(table[f"{angle}_deg"].to_numpy())
        out[f"sin_{angle}"], out[f"cos_{angle}"] = np.sin(rad), np.cos(rad)
    for axis in "xyz":
        out[f"view_{axis}"] = table[f"view_{axis}"].to_numpy()
    return pd.DataFrame(out)


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=0)


def spearman_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlations ``(p, q)`` between the columns of ``a (n, p)`` and ``b (n, q)``.

    A constant column correlates 0 with everything (SciPy would say NaN).
    """
    a = np.atleast_2d(np.asarray(a, np.float64).T).T
    b = np.atleast_2d(np.asarray(b, np.float64).T).T
    if len(a) != len(b):
        raise ValueError(f"spearman_matrix: {len(a)} rows against {len(b)}")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(0), rb - rb.mean(0)
    na, nb = np.linalg.norm(ra, axis=0), np.linalg.norm(rb, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra.T @ rb) / np.outer(na, nb)
    return np.nan_to_num(r, nan=0.0)


def pose_artefacts(table: pd.DataFrame, threshold: float = ARTEFACT_SPEARMAN) -> pd.DataFrame:
    """Per latent axis, its strongest nuisance: ``axis``, ``covariate``, ``spearman``, ``flagged``.

    ``table`` is a :func:`particle_table`; ``flagged`` is ``|spearman| > threshold``.
    Also returned as ``.attrs["matrix"]``: the full ``(K, n_covariates)`` Spearman table.
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    axes = [c for c in table.columns if c.startswith("z") and c[1:].isdigit()]
    cov = pose_covariates(table)
    r = spearman_matrix(table[axes].to_numpy(), cov.to_numpy())  # (K, q)
    rows = []
    for i, axis in enumerate(axes):
        j = int(np.argmax(np.abs(r[i])))
        rows.append({"axis": axis, "covariate": cov.columns[j], "spearman": float(r[i, j]),
                     "flagged": bool(abs(r[i, j]) > threshold)})
    out = pd.DataFrame(rows)
    out.attrs["matrix"] = pd.DataFrame(r, index=axes, columns=cov.columns)
    return out
