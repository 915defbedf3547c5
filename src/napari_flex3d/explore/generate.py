"""Convected maps of a trained run: at a latent point, along a latent path, as a series on disk.

The model is rebuilt from the run's last checkpoint (``model.run.load_run``; no mesh or map
needed) and its canonical map convected by the flow at ``z`` with the same 3D splat as
training, at the band limit the run had reached. ``box`` other than the training box
Fourier-pads (or crops) the result, changing the voxel size to keep the physical size.
The CLI (``flex3d generate``) and the napari explorer both go through ``RunVolumes``, so a
series from either is the same maps. Imports ``model``, ``ops``, ``training.schedule`` (the
band limit a run reached) and ``explore.series``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .series import write_series_movie, write_volume_series

__all__ = [
    "load_generator", "RunVolumes", "generate_volume", "axis_latents", "write_latent_series", "generate_axis_series",
]


def load_generator(run_dir, device="cpu"):
    """``(model, latents (n, K) tensor)`` of a run, the model at the run's final band limit."""
    from ..model.run import load_run

    return _generator(load_run(run_dir, device), run_dir)


def _generator(run, run_dir):
    """``(model, latents)`` of a loaded ``model.run.Run``: the model at its final band limit, in eval mode."""
    from ..training.schedule import band_limit

    config, state, model = run
    band = band_limit(int(state["epoch"]), config.epochs, config.band_start, config.band_end, config.band_ramp_epochs)
    model.max_freq_px = band * model.box / 2
    model.eval()
    from ..io.values import require_finite

    require_finite(state["latents"].numpy(), f"{run_dir}: the checkpoint's latents")  # NaN: the run diverged
    return model, state["latents"].to(torch.float32)


def _resize(vol: torch.Tensor, apix: float, box: int | None) -> tuple[np.ndarray, float]:
    from ..ops.fourier import fourier_crop_3d

    n = vol.shape[-1]
    if box is None or box == n:
        return vol.cpu().numpy().astype(np.float32), apix
    if box < 8 or box % 2:
        raise ValueError(f"box must be an even number >= 8, got {box}")
    return fourier_crop_3d(vol, box).cpu().numpy().astype(np.float32), apix * n / box


class RunVolumes:
    """A trained run loaded once, for many volumes: ``latents (n, K)`` float32, ``box``, ``apix``,
    ``config`` (its ``TrainConfig``)."""

    def __init__(self, run_dir, device="cpu"):
        from ..model.run import load_run

        self.run_dir = Path(run_dir)
        run = load_run(run_dir, device)  # the checkpoint read once: its settings are kept too
        self.config = run.config
        self.model, latents = _generator(run, run_dir)
        self.latents = latents.cpu().numpy().astype(np.float32)
        self.box = int(self.model.box)
        self.apix = float(self.model.apix)

    def volume(self, z, box: int | None = None, kernel: str | None = None) -> tuple[np.ndarray, float]:
        """The convected map at ``z (K,)``: ``(box, box, box)`` float32 and its voxel size in Å.

        ``kernel="linear"`` is the quick preview (``None``: the run's own kernel); ``box``
        other than the training box Fourier-crops or pads.
        """
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32).reshape(-1))
        if zt.numel() != self.model.latent_dim:
            raise ValueError(f"z has {zt.numel()} values; the run has K={self.model.latent_dim} latent dimensions")
        with torch.no_grad():
            vol = self.model.volume(zt.to(self.model.vertices_a), kernel=kernel)
        return _resize(vol, self.apix, box)


def generate_volume(run_dir, z, box: int | None = None) -> tuple[np.ndarray, float]:
    """The convected map ``(n, n, n)`` float32 at latent point ``z (K,)`` and its voxel size in Å."""
    return RunVolumes(run_dir).volume(z, box=box)


def axis_latents(latents, axis: int, frames: int = 41, sigma_range: float = 1.5) -> torch.Tensor:
    """``(frames, K)``: the latents' mean, moved along ``axis`` from ``-sigma_range`` to ``+sigma_range`` std.

    ``latents (n, K)`` is a tensor or an array; the std is the sample std (ddof 1) for the
    CLI and the explorer alike.
    """
    latents = torch.as_tensor(latents, dtype=torch.float32)
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


def write_latent_series(run: RunVolumes, zs, out_dir, box: int | None = None, prefix: str = "frame",
                        label: str = "flex3d") -> tuple[np.ndarray, float, list[Path], Path]:
    """The maps at latents ``zs (f, K)`` written as ``prefix_000.mrc``... with ``series.cxc``.

    Each map's MRC label is ``label`` and its latent. Returns ``(volumes (f, n, n, n), apix,
    frame paths, script path)``.
    """
    zs = np.asarray(zs, dtype=np.float32)
    maps = [run.volume(z, box=box) for z in zs]
    volumes, apix = np.stack([v for v, _ in maps]), maps[0][1]
    labels = [f"{label} z=" + ",".join(f"{v:.3f}" for v in z.tolist()) for z in zs]
    paths, script = write_volume_series(volumes, apix, out_dir, prefix=prefix, labels=labels)
    return volumes, apix, paths, script


def generate_axis_series(
    run_dir, axis: int, frames: int = 41, out_dir=None, box: int | None = None, sigma_range: float = 1.5, movie: bool = False
) -> dict:
    """Write a series along latent ``axis`` (0-based): MRC frames, ``series.cxc`` for ChimeraX, optional mp4.

    Returns ``{"frames": [paths], "script": path, "movie": path | None, "latents": (f, K) array, "apix": float}``.
    """
    if out_dir is None:
        raise ValueError("generate_axis_series needs an output folder")
    run = RunVolumes(run_dir)
    zs = axis_latents(run.latents, axis, frames, sigma_range).numpy()
    stack, apix, paths, script = write_latent_series(run, zs, out_dir, box=box, prefix=f"axis{axis}",
                                                     label=f"flex3d axis {axis}")
    movie_path = write_series_movie(stack, Path(out_dir) / f"axis{axis}.mp4") if movie else None
    return {"frames": paths, "script": script, "movie": movie_path, "latents": zs, "apix": apix}
