"""Initial latents from the principal directions of variability (a 3DVA-like start).

The paper initialises 3DFlex's latents from cryoSPARC's 3D Variability Analysis when
the data are small or noisy. This is the same idea in a few lines: with the rigid model
(consensus map, no flow), every particle's whitened residual ``r_i = I_i - s_i C_i P_i V``
is explained as ``sum_k c_ik C_i P_i U_k`` by ``K`` orthonormal volumes ``U`` at the
voxels of the mask. Block power iteration finds the ``U`` that carry the most residual
variance: ``U <- orth(sum_i A_i^T Sigma^-1 r_i r_i^T Sigma^-1 A_i U)`` with ``A_i = C_i
P_i`` and ``Sigma`` the noise spectrum; the adjoint ``A_i^T`` comes from autograd through
the same convect-project splat. Every particle's coefficients are then solved for in its
own view (3DVA's E-step, :func:`coefficients_map`: least squares with the ``K x K`` Gram
matrix of its projected volumes and an empirical Gaussian prior), and, standardised per
axis, are the initial latents. Band-limited to low resolution.

Every particle's share of both passes depends on that particle alone, so a batch is worked
through in micro-batches (:mod:`.micro_batch`) that halve on a CUDA out-of-memory error, as
a training step's are. Imports core (ops, model) and training's :mod:`.micro_batch`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ITERATIONS", "variability_latents", "coefficients_map"]

ITERATIONS = 6  # block power iterations: passes over the particles the volumes are fitted to


def _whitening(box: int, spectra: torch.Tensor, max_freq_px: float) -> torch.Tensor:
    """``(b, N, N//2+1)`` weights ``plane_w * [0 < |k| <= max] / P_noise`` for ``spectra (b, n_shells)``."""
    from ..model.loss import radial_frequency_2d, rfft_plane_weights, spectrum_to_image

    k = radial_frequency_2d(box, spectra.device)
    allowed = (k > 0) & (k <= max_freq_px)
    return (rfft_plane_weights(box, spectra.device) * allowed)[None] / spectrum_to_image(spectra, box)


def _project(model, values: torch.Tensor, batch: dict) -> torch.Tensor:
    """Rigid CTF-modulated projections of ``values (n_vox,)`` at the mask voxels: rfft ``(b, N, N//2+1)``."""
    from ..ops.splat import convect_project

    images = convect_project(
        values, model.canonical.points_xyz_a, batch["rotations"], batch["shifts_a"], model.box, model.apix,
        kernel=model.kernel,
    )
    return torch.fft.rfft2(images, norm="ortho") * batch["ctf"]


def _residuals(model, batch: dict, spectra: torch.Tensor, max_freq_px: float):
    """Whitened-metric pieces of a batch: ``(F r (b, N, N//2+1), weights, scale s (b,))``."""
    from ..model.loss import fit_scale

    with torch.no_grad():
        pred = model.project(None, batch["rotations"], batch["shifts_a"], ctf=batch["ctf"])
        noise = spectra[batch["optics_group"]]
        s = fit_scale(pred, batch["images"], noise, max_freq_px)  # (b,)
        resid = torch.fft.rfft2(batch["images"] - s[:, None, None] * pred, norm="ortho")
        return resid, _whitening(model.box, noise, max_freq_px), s


def _inner(fa: torch.Tensor, fb: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Whitened inner product per image ``(b,)`` of two rfft stacks."""
    return (w * (fa.real * fb.real + fa.imag * fb.imag)).sum(dim=(-2, -1))


def _in_pieces(micro, batch: dict, work):
    """``[work(piece)]`` over the particles of ``batch``: in micro-batches of ``micro``'s size that halve
    on running out of memory (:func:`~.micro_batch.in_micro_batches`), or whole (``micro`` None)."""
    from .micro_batch import in_micro_batches, rows_of

    if micro is None:
        return [work(batch)]
    n = batch["images"].shape[0]
    return in_micro_batches(micro, n, lambda rows: work(rows_of(batch, rows)), "latent initialisation")


def variability_latents(
    model,
    batches,
    spectra: torch.Tensor,
    latent_dim: int,
    band: float = 0.4,
    iterations: int = ITERATIONS,
    seed: int = 0,
    final_batches=None,
    micro=None,
) -> np.ndarray:
    """Standardised coefficients ``(n, K)`` of the particles on the top-``K`` variability volumes.

    Args:
        model: a fresh :class:`~napari_flex3d.model.flex.FlexModel` (its canonical map is the mean).
        batches: a callable returning an iterable of ``(idx (b,), batch dict)`` over the
            particles the volumes are fitted to (called once per iteration).
        final_batches: the same over every particle to get coefficients for (default ``batches``);
            the returned rows follow its ``idx``.
        spectra: ``(n_groups, n_shells)`` noise spectra.
        band: fraction of Nyquist to work at.
        micro: the run's :class:`~.micro_batch.MicroBatchState` (or ``RunState``): batches in its
            micro-batches, halved on out-of-memory; ``None``: each batch whole.
    """
    max_freq_px = band * model.box / 2
    saved, model.max_freq_px = model.max_freq_px, max_freq_px
    try:
        gen = torch.Generator().manual_seed(seed)
        start = torch.randn(latent_dim, model.canonical.n_voxels, generator=gen).to(model.canonical.values)  # (K, n_vox)
        basis = _orthonormal_bandlimited(model, start, max_freq_px)
        for _ in range(iterations):
            basis = _power_iteration(model, basis, batches, spectra, max_freq_px, micro)
        b, gram = _normal_equations(model, basis, final_batches or batches, spectra, max_freq_px, micro)
    finally:
        model.max_freq_px = saved
    return _standardised(coefficients_map(b, gram))


def _orthonormal_bandlimited(model, u: torch.Tensor, max_freq_px: float) -> torch.Tensor:
    """``u (K, n_vox)`` band-limited to ``max_freq_px`` and made orthonormal: ``(K, n_vox)``."""
    from ..model.canonical import bandlimit

    full = model.canonical.to_volume(u)  # (K, N, N, N)
    u = model.canonical.from_full(bandlimit(full, max_freq_px))  # (K, n_vox)
    q, _ = torch.linalg.qr(u.T)  # (n_vox, K)
    return q.T.contiguous()


def _power_iteration(model, basis: torch.Tensor, batches, spectra: torch.Tensor, max_freq_px: float, micro):
    """One block power iteration: ``orth(sum_i A_i^T W r_i r_i^T W A_i U)`` over ``batches``, ``(K, n_vox)``."""
    new = torch.zeros_like(basis)
    for _, batch in batches():
        for grad in _in_pieces(micro, batch, lambda piece: _residual_pull(model, basis, piece, spectra, max_freq_px)):
            new += grad
    return _orthonormal_bandlimited(model, new, max_freq_px)


def _residual_pull(model, basis: torch.Tensor, batch: dict, spectra: torch.Tensor, max_freq_px: float) -> torch.Tensor:
    """A batch's ``sum_i c_ik A_i^T W r_i`` with ``c_ik = (A_i U_k)^T W r_i``: ``(K, n_vox)``, the
    adjoint by autograd through the projection."""
    resid, w, s = _residuals(model, batch, spectra, max_freq_px)
    u = basis.clone().requires_grad_(True)
    proj = [s[:, None, None] * _project(model, u_k, batch) for u_k in u]  # K x (b, N, N//2+1)
    coeff = torch.stack([_inner(resid, p.detach(), w) for p in proj], dim=1)  # (b, K)
    objective = sum((coeff[:, k] * _inner(resid, p, w)).sum() for k, p in enumerate(proj))
    (grad,) = torch.autograd.grad(objective, [u])  # sum_i c_ik A_i^T W r_i = C U
    return grad


@torch.no_grad()
def _projections_and_gram(model, basis: torch.Tensor, batch: dict, spectra: torch.Tensor, max_freq_px: float):
    """A batch's ``b (b, K)`` (projected volumes against the residual) and ``gram (b, K, K)``, float64."""
    resid, w, s = _residuals(model, batch, spectra, max_freq_px)
    proj = [s[:, None, None] * _project(model, u_k, batch) for u_k in basis]
    rhs = torch.stack([_inner(resid, p, w) for p in proj], 1)  # (b, K)
    gram = torch.stack([torch.stack([_inner(p, q, w) for q in proj], 1) for p in proj], 1)  # (b, K, K)
    return rhs.double().cpu().numpy(), gram.double().cpu().numpy()


def _normal_equations(model, basis: torch.Tensor, batches, spectra: torch.Tensor, max_freq_px: float, micro):
    """Every particle's ``b (n, K)`` and ``gram (n, K, K)`` on ``basis``, in the rows of ``batches``' ``idx``."""
    rows, rhs, grams = [], [], []
    for idx, batch in batches():
        for b_piece, g_piece in _in_pieces(micro, batch, lambda piece: _projections_and_gram(
                model, basis, piece, spectra, max_freq_px)):
            rhs.append(b_piece)
            grams.append(g_piece)
        rows.append(np.asarray(idx))
    order = np.concatenate(rows)
    k = basis.shape[0]
    b, gram = np.empty((len(order), k)), np.empty((len(order), k, k))
    b[order], gram[order] = np.concatenate(rhs), np.concatenate(grams)
    return b, gram


def _standardised(z: np.ndarray) -> np.ndarray:
    """``z (n, K)`` centred and scaled to unit spread per axis (an axis without spread: centred only), float32."""
    z = z - z.mean(0)
    z /= np.where(z.std(0) > 0, z.std(0), 1.0)
    return z.astype(np.float32)


def coefficients_map(b: np.ndarray, gram: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Per-particle MAP coefficients ``(n, K)`` on the variability volumes (3DVA's E-step).

    In the whitened metric the residual of particle ``i`` is ``r_i = sum_k c_ik A_i U_k +
    noise`` with unit noise, so ``b_i = (A_i U)^T r_i`` (``b (n, K)``) and ``G_i = (A_i
    U)^T (A_i U)`` (``gram (n, K, K)``) give the least-squares ``c_i = G_i^-1 b_i``, whose
    noise covariance is ``G_i^-1``. A plain projection ``b_i`` would scale each
    particle's coefficients by how visible each volume is in its view and mix the axes
    where two volumes project alike; solving with ``G_i`` undoes both. The Gaussian prior
    ``c_k ~ N(0, s_k^2)`` takes its variances from the data (empirical Bayes: the spread of
    the least-squares coefficients less their mean noise variance, at least ``floor`` of
    that spread), and the MAP is ``(G_i + diag(1/s^2))^-1 b_i``: views that barely show a
    volume (a near-singular ``G_i``) fall back towards zero instead of amplifying noise.
    """
    n, k = b.shape
    eye = np.eye(k)
    ridge = 1e-6 * np.maximum(np.trace(gram, axis1=1, axis2=2) / k, 1e-30)[:, None, None] * eye
    ls = np.linalg.solve(gram + ridge, b[..., None])[..., 0]  # (n, K)
    noise_var = np.linalg.inv(gram + ridge)[:, np.arange(k), np.arange(k)]  # (n, K)
    spread = ls.var(0)
    signal_var = np.maximum(spread - noise_var.mean(0), floor * spread)  # E[var(ls)] = s^2 + E[noise var]
    return np.linalg.solve(gram + np.diag(1.0 / np.maximum(signal_var, 1e-30)), b[..., None])[..., 0]
