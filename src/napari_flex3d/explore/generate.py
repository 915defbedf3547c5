"""Convected maps of a trained run: at a latent point, or as a series along a latent axis.

The model is rebuilt from the run's last checkpoint (no mesh or map needed) and its
canonical map convected by the flow at ``z`` with the same 3D splat as training, at the
band limit the run had reached. ``box`` other than the training box Fourier-pads (or
crops) the result, changing the voxel size to keep the physical size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["load_generator", "generate_volume", "axis_latents", "generate_axis_series"]


def load_generator(run_dir, device="cpu"):
    """``(model, latents (n, K) tensor)`` of a run, the model at the run's final band limit."""
    from ..model.run import load_run
    from ..training.schedule import band_limit

    config, state, model = load_run(run_dir, device)
    band = band_limit(int(state["epoch"]), config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    model.max_freq_px = band * model.box / 2
    model.eval()
    return model, state["latents"].to(torch.float32)


def _resize(vol: torch.Tensor, apix: float, box: int | None) -> tuple[np.ndarray, float]:
    from ..ops.fourier import fourier_crop_3d

    n = vol.shape[-1]
    if box is None or box == n:
        return vol.cpu().numpy().astype(np.float32), apix
    if box < 8 or box % 2:
        raise ValueError(f"box must be an even number >= 8, got {box}")
    return fourier_crop_3d(vol, box).cpu().numpy().astype(np.float32), apix * n / box


@torch.no_grad()
def _volumes(model, zs: torch.Tensor) -> torch.Tensor:
    """Convected maps ``(f, N, N, N)`` at latents ``zs (f, K)``."""
    return torch.stack([model.volume(z.to(model.vertices_a)) for z in zs])


def generate_volume(run_dir, z, box: int | None = None) -> tuple[np.ndarray, float]:
    """The convected map ``(n, n, n)`` float32 at latent point ``z (K,)`` and its voxel size in Å."""
    model, _ = load_generator(run_dir)
    z = torch.as_tensor(np.asarray(z, dtype=np.float32).reshape(-1))
    if z.numel() != model.latent_dim:
        raise ValueError(f"z has {z.numel()} values; the run has K={model.latent_dim} latent dimensions")
    vol = _volumes(model, z[None])[0]
    return _resize(vol, model.apix, box)


def axis_latents(latents: torch.Tensor, axis: int, frames: int = 41, sigma_range: float = 1.5) -> torch.Tensor:
    """``(frames, K)``: the latents' mean, moved along ``axis`` from ``-sigma_range`` to ``+sigma_range`` std."""
    k_dim = latents.shape[1]
    if not 0 <= axis < k_dim:
        raise ValueError(f"axis {axis} out of range for K={k_dim} latent dimensions (0-based)")
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    mean = latents.mean(0)
    std = latents[:, axis].std() if len(latents) > 1 else torch.tensor(1.0)
    zs = mean.repeat(frames, 1)  # (f, K)
    zs[:, axis] = mean[axis] + torch.linspace(-sigma_range, sigma_range, frames) * std
    return zs


def generate_axis_series(
    run_dir, axis: int, frames: int = 41, out_dir=None, box: int | None = None, sigma_range: float = 1.5, movie: bool = False
) -> dict:
    """Write a series along latent ``axis`` (0-based): MRC frames, ``series.cxc`` for ChimeraX, optional mp4.

    Returns ``{"frames": [paths], "script": path, "movie": path | None, "latents": (f, K) array, "apix": float}``.
    """
    from .series import write_series_movie, write_volume_series

    if out_dir is None:
        raise ValueError("generate_axis_series needs an output folder")
    model, latents = load_generator(run_dir)
    zs = axis_latents(latents, axis, frames, sigma_range)
    vols = _volumes(model, zs)  # (f, N, N, N)
    resized = [_resize(v, model.apix, box) for v in vols]
    apix = resized[0][1]
    stack = np.stack([r[0] for r in resized])
    labels = [f"flex3d axis {axis} z=" + ",".join(f"{v:.3f}" for v in z.tolist()) for z in zs]
    paths, script = write_volume_series(stack, apix, out_dir, prefix=f"axis{axis}", labels=labels)
    movie_path = write_series_movie(stack, Path(out_dir) / f"axis{axis}.mp4") if movie else None
    return {"frames": paths, "script": script, "movie": movie_path, "latents": zs.numpy(), "apix": apix}
