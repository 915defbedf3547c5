"""Everything a training run needs before its first step, built from a :class:`TrainConfig`.

Pure functions: the device, the training box, the consensus map at that box, its mask
and mesh, the :class:`~napari_flex3d.model.flex.FlexModel`, the noise spectra and the
train/validation split. (A model rebuilt from a checkpoint is
:func:`napari_flex3d.model.run.load_run`'s job.)
Imports config and core (io, ops, mesh, model).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig

__all__ = [
    "resolve_device",
    "training_box",
    "consensus_at_box",
    "build_mask_and_mesh",
    "build_model",
    "estimate_spectra",
    "split_train_val",
    "usable_particles",
    "adam",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:i]"`` -> ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"device {name!r}: use auto, cpu or cuda[:i]") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: use auto, cpu or cuda[:i]")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def training_box(config_box: int | None, particle_box: int) -> int:
    """The training box ``N_L``: the configured one, or ``min(particle box, 128)``; even, <= the particles'."""
    box = min(particle_box, 128) if config_box is None else int(config_box)
    if box < 16 or box % 2 or box > particle_box:
        raise ValueError(f"training box {box} must be even, >= 16 and <= the particles' box {particle_box}")
    return box


def consensus_at_box(map_path, particle_box: int, particle_apix: float, box: int, resample: bool = False) -> np.ndarray:
    """The consensus map Fourier-cropped to the training box, ``(box, box, box)`` float32.

    A map of another box or pixel size than the particles' is refused, or with ``resample``
    (``--resample-map``) first resampled to theirs (:func:`~napari_flex3d.ops.fourier.resample_volume`).
    """
    from ..io.mrc import read_map
    from ..io.values import require_informative_map
    from ..ops.fourier import fourier_crop_3d

    m = read_map(map_path)
    data = require_informative_map(m.data, str(map_path))  # a constant map has no automatic mask threshold
    vol = torch.tensor(data, dtype=torch.float32)  # a copy: read_map may hand back a read-only array
    vol = map_on_particle_grid(vol, m.apix, particle_box, particle_apix, str(map_path), resample)
    if box != particle_box:
        vol = fourier_crop_3d(vol, box)
    return vol.numpy().astype(np.float32)


def map_on_particle_grid(vol: torch.Tensor, map_apix: float | None, particle_box: int, particle_apix: float,
                         what: str, resample: bool = False, tolerance: float = 0.01) -> torch.Tensor:
    """``vol (N, N, N)`` if it is on the particles' grid (``particle_box`` at ``particle_apix`` Å, the
    pixel size within ``tolerance``), else resampled onto it when ``resample``, else ``ValueError``
    naming ``what``, both grids and ``--resample-map``."""
    from ..ops.fourier import resample_volume

    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"{what}: a consensus map must be a cubic volume, got shape {tuple(vol.shape)}")
    apix_ok = map_apix is None or abs(map_apix - particle_apix) <= tolerance * particle_apix
    if vol.shape[0] == particle_box and apix_ok:
        return vol
    here = f"{vol.shape[0]} voxels at {map_apix:.4g} Å" if map_apix else f"{vol.shape[0]} voxels (no pixel size in its header)"
    there = f"the particles' box is {particle_box} pixels at {particle_apix:.4g} Å"
    if not resample:
        raise ValueError(f"{what}: the map is {here}, {there}; pass --resample-map to resample the map to the "
                         "particles' grid (or give the map the particles were refined against)")
    if map_apix is None:
        raise ValueError(f"{what}: the map is {here}, {there}; it cannot be resampled without its pixel size "
                         "(set it in the header, e.g. with relion_image_handler --angpix or ChimeraX volume ... voxelSize)")
    out, reached = resample_volume(vol, float(map_apix), particle_box, particle_apix)
    if abs(reached - particle_apix) > 1e-3 * particle_apix:  # pragma: no cover - _padded_box finds closer for real boxes
        raise ValueError(f"{what}: resampling reached {reached:.5g} Å, not the particles' {particle_apix:.5g} Å")
    return out


def build_mask_and_mesh(consensus: np.ndarray, apix: float, config: TrainConfig):
    """``(mask (N, N, N) bool, Mesh)``: the solvent mask and the mesh (loaded or built over it)."""
    from ..mesh.build import build_mesh
    from ..mesh.mesh import load_mesh
    from ..mesh.masks import solvent_mask

    mask = solvent_mask(consensus, apix, threshold=config.mask_threshold, dilate_a=config.mask_dilate_a).binary
    if config.mesh:
        mesh = load_mesh(config.mesh, box=consensus.shape[-1], apix=apix)  # refuses another box's mesh
    else:
        mesh = build_mesh(mask, apix, cell_size_a=default_cell_size_a(consensus.shape[-1], apix, config.mesh_cell_size_a))
    return mask, mesh


def default_cell_size_a(box: int, apix: float, cell_size_a: float | None) -> float:
    """The configured cell size, or 20 cells across the box (cryoSPARC) but no smaller than 4 voxels."""
    if cell_size_a is not None:
        return float(cell_size_a)
    return max(box * apix / 20.0, 4.0 * apix)


@torch.no_grad()
def smooth_initial_flow(flow, vertices_a: torch.Tensor, rms_a: float, smooth_frac: float = 0.5) -> None:
    """Make a fresh flow generator's first flows smooth random fields of a chosen size.

    Each hidden unit's column of the last layer (a displacement field over the vertices)
    is low-passed by a Gaussian over vertex positions (width ``smooth_frac`` times the
    mesh's RMS radius), then the layer is scaled so that ``f(+e_k) - f(-e_k)`` has RMS
    ``rms_a`` Å. Smooth fields barely strain the cells (the rigidity penalty stays small)
    yet move parts of the molecule enough for latent inference to tell latents apart,
    which breaks the symmetry of zero initial latents. ``rms_a <= 0`` leaves the layer.
    """
    if rms_a <= 0:
        return
    x = vertices_a.to(flow.out.weight)  # (v, 3)
    sigma = smooth_frac * float((x - x.mean(0)).pow(2).sum(-1).mean().sqrt())
    kern = torch.exp(-torch.cdist(x, x).pow(2) / (2 * sigma**2))  # (v, v)
    kern = kern / kern.sum(1, keepdim=True)
    v, hidden = flow.n_vertices, flow.out.weight.shape[1]
    w = flow.out.weight.reshape(v, 3, hidden)  # rows of the output are (vertex, xyz)
    flow.out.weight.copy_(torch.einsum("uv,vch->uch", kern, w).reshape(3 * v, hidden))
    eye = torch.eye(flow.latent_dim, device=x.device)
    diff = flow(eye) - flow(-eye)  # (K, v, 3)
    rms = float(diff.pow(2).sum(-1).mean().sqrt())
    if rms > 0:
        flow.out.weight.mul_(rms_a / rms)


def build_model(consensus: np.ndarray, apix: float, mask: np.ndarray, mesh, config: TrainConfig):
    """A fresh :class:`FlexModel` at the training box (flow initialised from ``torch``'s global RNG)."""
    from ..model.flex import FlexModel

    model = FlexModel.from_map(
        consensus,
        apix,
        mesh,
        mask,
        latent_dim=config.latent_dim,
        hidden=config.hidden,
        layers=config.layers,
        rigidity_floor=config.rigidity_floor,
        kernel=config.kernel,
    )
    if config.rigidity_scale == "volume":  # each cell's strain by its volume (mesh.rigidity's notes)
        from ..mesh.rigidity import cell_volume_factors

        factors = cell_volume_factors(model.vertices_a.numpy(), model.cells.numpy())
        model.rigidity_weights.mul_(torch.as_tensor(factors))
    smooth_initial_flow(model.flow, model.vertices_a, config.flow_init_a)
    return model


def estimate_spectra(ps, idx: np.ndarray, box: int, device, chunk: int = 256) -> torch.Tensor:
    """Noise spectra ``(n_groups, n_shells)`` from the background of particles ``idx`` at the training box.

    Images are read and Fourier-cropped in chunks; only the cropped ones are kept.
    """
    from ..model.flex import batch_from_particles
    from ..model.loss import estimate_noise_spectra

    images, groups = [], []
    for s in range(0, len(idx), chunk):
        batch = batch_from_particles(ps, idx[s : s + chunk], box=box, device=device)
        images.append(batch["images"])
        groups.append(batch["optics_group"])
    return estimate_noise_spectra(torch.cat(images), torch.cat(groups), len(ps.optics)).to(torch.float32)


def usable_particles(ps, config: TrainConfig, folder=None, read_only: bool = False, log=None, progress=None):
    """``ps`` without its images of NaN/Inf or constant pixels (:mod:`~napari_flex3d.io.image_check`).

    The check's record is kept in ``folder`` (the run's: a resumed run or its analysis reads it
    instead of the stacks; ``read_only``: read it, write nothing). The line counting and naming
    the images left out goes to ``log(line)``, by default appended to ``folder/train.log``; more
    than ``config.max_bad_image_fraction`` of them refuses the run. ``progress(done, total)``: the
    scan's progress (:func:`~napari_flex3d.io.image_check.scan_images`).
    """
    from pathlib import Path

    from ..io.atomic import open_log
    from ..io.image_check import exclude_unusable_images

    def append_to_train_log(line: str) -> None:
        if folder is not None and not read_only:
            with open_log(Path(folder) / "train.log") as f:
                f.write(line + "\n")

    usable, _ = exclude_unusable_images(ps, folder, max_fraction=config.max_bad_image_fraction, read_only=read_only,
                                        log=log or append_to_train_log, progress=progress)
    return usable


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train_idx, val_idx)``: a seeded random ``val_fraction`` of ``range(n)`` held out."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    n_val = int(round(val_fraction * n))
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 7])).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with its fused update: one operator for all ``params`` (a kernel or two on a GPU) where
    the default runs about ten per parameter on the CPU (torch's default on a GPU, the multi-tensor
    update, is about ten kernels in all). The same update up to rounding (1e-7 relative per step)."""
    return torch.optim.Adam(params, lr=lr, fused=True)
