"""The latent side of a run: the inference view at ``latent_box`` and the learned latent prior.

:class:`LatentView` is the model at a smaller box that latent inference runs on
(``TrainConfig.latent_box``); :func:`empirical_prior` and :func:`update_latent_prior` keep the
learned prior on the latent grid (one EM step per epoch). How far latents moved in an epoch
is :func:`~napari_flex3d.training.agreement.latent_agreement`. Imports config, core
(ops, model) and training's own :mod:`.latents`, :mod:`.setup`, :mod:`.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import TrainConfig
from .latents import GridPrior

__all__ = ["LatentView", "checked_latent_box", "latent_view", "empirical_prior", "update_latent_prior"]


@dataclass
class LatentView:
    """The model at a smaller box for latent inference (``TrainConfig.latent_box``).

    It shares the model's flow generator; its canonical map is the training map,
    band-limited and Fourier-cropped, refreshed before every inference; minibatches are
    Fourier-cropped to it (images and CTF); its noise spectra are estimated at its box.
    """

    model: torch.nn.Module  # FlexModel.at_box(box)
    spectra: torch.Tensor  # (n_groups, n_shells) at the view's box
    max_freq_px: float  # the highest frequency inference uses (band_end of this box's Nyquist)

    @property
    def box(self) -> int:
        return self.model.box

    def batch(self, batch: dict) -> dict:
        from ..ops.fourier import crop_rfft_2d, fourier_crop_2d

        out = dict(batch)
        out["images"] = fourier_crop_2d(batch["images"], self.box)
        out["ctf"] = crop_rfft_2d(batch["ctf"], self.box)
        out["box"], out["apix"] = self.box, self.model.apix
        return out


def checked_latent_box(latent_box: int, training_box: int) -> int:
    """``latent_box`` as an int, or ``ValueError`` unless it is even, >= 16 and <= ``training_box``."""
    box = int(latent_box)
    if box < 16 or box % 2 or box > training_box:
        raise ValueError(f"latent_box {box} must be even, >= 16 and <= the training box {training_box}")
    return box


def latent_view(config: TrainConfig, model, ps, device) -> LatentView | None:
    """The inference view of ``model`` at ``config.latent_box``, or ``None`` (infer at the training box)."""
    from .setup import estimate_spectra

    if config.latent_box is None or int(config.latent_box) == model.box:
        return None
    box = checked_latent_box(config.latent_box, model.box)
    spectra = estimate_spectra(ps, np.arange(min(len(ps), 2048)), box, device)
    return LatentView(model.at_box(box), spectra, config.band_end * box / 2)


def empirical_prior(config: TrainConfig, device, log_density: torch.Tensor | None = None) -> GridPrior | None:
    """The learned latent prior where ``config`` asks for it and grid inference runs a joint
    first sweep (``latent_grid ** K <= 100``); ``None`` (the Gaussian) elsewhere. Starts as
    the Gaussian unless ``log_density`` (from a checkpoint) is given."""
    k, g = config.latent_dim, config.latent_grid
    if config.latent_prior_shape != "empirical" or config.latent_inference != "grid" or g**k > 100:
        return None
    if log_density is not None:
        return GridPrior(log_density.to(device), k, g, config.latent_range, config.latent_prior)
    return GridPrior.gaussian(k, g, config.latent_range, config.latent_prior, device)


def update_latent_prior(run, epoch: int) -> None:
    """End of an epoch of ``run`` (a :class:`~.run_state.RunState`): the learned prior takes
    one EM step from the epoch's posterior weights (summed over ranks under torchrun), and
    the next epoch collects afresh. Warm-up epochs (only the validation particles inferred)
    leave it as it is."""
    mass, run.latent_mass = run.latent_mass, None
    if run.latent_prior is None or epoch < run.config.warmup_epochs:
        return
    if mass is None:  # this rank inferred nothing; it still joins the sum
        mass = torch.zeros_like(run.latent_prior.log_density)
    if run.dist.active:
        from .distributed import all_reduce_sum

        mass = all_reduce_sum(mass)
    run.latent_prior = run.latent_prior.updated(mass)
