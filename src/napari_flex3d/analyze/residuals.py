"""Per-particle fit of a trained run: the whitened residual, and robust outlier thresholds.

The residual of particle ``i`` is the mean, over the Fourier coefficients inside the run's
final band limit (DC excluded), of ``|F(I_i - s_i * model_i)|^2 / P_noise(|k|)``: the data
term training minimises (``model.loss.data_loss`` with the fitted per-image scale, as
``training.step.data_terms``) divided by the number of coefficients. An image the model
explains down to the noise scores 1; junk (ice, a wrong pose, another particle) scores
more. The model image is the run's forward path at the particle's final latent, pose,
shift and CTF.

It may run at a box smaller than the training box (``box``): images and CTFs are
Fourier-cropped as in latent inference, the canonical map is cropped
(``FlexModel.at_box``), and the noise spectra are estimated afresh at that box, so 1
still means noise. A projection costs about ``(box / N_L)^3`` of one at the training box.

Imports ``model`` (run loading, the forward model, the loss), ``io`` and ``training``'s
schedule and spectrum estimate.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["OUTLIER_Z", "particle_residuals", "robust_z", "robust_threshold", "outlier_mask"]

# A robust z above 3.5 (median/MAD, Iglewicz & Hoaglin 1993) marks an outlier: for Gaussian
# scores that is 1 particle in 2,000; real junk sits far beyond it.
OUTLIER_Z = 3.5


def _run_at_box(run_dir, ps, box: int | None, device):
    """``(model at the asked box, noise spectra there, max_freq_px, final latents)``."""
    from ..model.run import load_run
    from ..training.schedule import band_limit
    from ..training.setup import estimate_spectra

    config, state, model = load_run(run_dir, device)
    band = band_limit(int(state["epoch"]), config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    model.max_freq_px = band * model.box / 2
    model.eval()
    latents = state["latents"].to(torch.float32)
    if box is None or int(box) >= model.box:
        return model, state["spectra"].to(device), model.max_freq_px, latents
    view = model.at_box(int(box))
    view.copy_canonical_from(model)
    spectra = estimate_spectra(ps, np.arange(min(len(ps), 1024)), view.box, device)
    return view, spectra, band * view.box / 2, latents


@torch.no_grad()
def particle_residuals(run_dir, ps, latents=None, box: int | None = None, batch: int = 256, device="cpu",
                       progress=None) -> np.ndarray:
    """Whitened residual per coefficient of every particle, ``(n,)`` float64 (1 = only noise).

    ``ps``: the run's particles (an ``io.particles.ParticleSet``, the rows it trained on);
    ``latents (n, K)``: default the run's final latents; ``box``: an even box below the
    training box to work at (default the training box); ``progress(done, total)`` is
    called after each batch.
    """
    from ..model.flex import batch_from_particles
    from ..model.loss import band_coefficients, data_loss

    device = torch.device(device)
    model, spectra, max_freq_px, run_latents = _run_at_box(run_dir, ps, box, device)
    z_all = run_latents if latents is None else torch.as_tensor(np.asarray(latents), dtype=torch.float32)
    if z_all.shape[0] != len(ps):
        raise ValueError(f"{len(ps)} particles but {z_all.shape[0]} latent rows: pass the particles the run trained on")
    n_coef = band_coefficients(model.box, max_freq_px)
    out = np.empty(len(ps), np.float64)
    for s in range(0, len(ps), batch):
        idx = np.arange(s, min(s + batch, len(ps)))
        b = batch_from_particles(ps, idx, box=model.box, device=device)
        pred = model.project(z_all[idx].to(device), b["rotations"], b["shifts_a"], ctf=b["ctf"])  # (b, N, N)
        loss = data_loss(pred, b["images"], spectra[b["optics_group"]], max_freq_px=max_freq_px, scale="fit")  # (b,)
        out[idx] = (2.0 * loss / n_coef).double().cpu().numpy()  # data_loss is half the whitened sum
        if progress is not None:
            progress(int(idx[-1]) + 1, len(ps))
    return out


def _median_spread(x: np.ndarray) -> tuple[float, float]:
    """``(median, MAD / 0.6745)``: the centre and a Gaussian-equivalent sd that outliers do not inflate."""
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med)))
    if mad <= 0:  # over half the values tie: fall back to the mean absolute deviation
        mad = float(np.mean(np.abs(x - med))) * 0.6745 / 0.7979 or 0.6745
    return med, mad / 0.6745


def robust_z(x: np.ndarray) -> np.ndarray:
    """``0.6745 (x - median) / MAD``: a z-score that outliers themselves do not inflate."""
    x = np.asarray(x, np.float64)
    med, sd = _median_spread(x)
    return (x - med) / sd


def robust_threshold(x: np.ndarray, z_threshold: float = OUTLIER_Z) -> float:
    """The value of ``x`` whose :func:`robust_z` is ``z_threshold``."""
    med, sd = _median_spread(np.asarray(x, np.float64))
    return med + z_threshold * sd


def outlier_mask(residual: np.ndarray, latent_norm: np.ndarray, z_threshold: float = OUTLIER_Z) -> np.ndarray:
    """``(n,)`` bool: particles whose residual or latent norm has a robust z above ``z_threshold``
    (only the high side: a particle fitting better than the rest is not junk)."""
    return (robust_z(residual) > z_threshold) | (robust_z(latent_norm) > z_threshold)
