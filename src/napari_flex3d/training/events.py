"""What a training run reports, as small frozen dataclasses (one per kind of news).

:func:`napari_flex3d.training.loop.train_run` yields these; the CLI prints them with a
progress bar (:mod:`napari_flex3d.training.progress`) and the napari widget plots them.
Arrays inside events are NumPy copies: a consumer may keep them.
Imports NumPy only: every front end may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Event",
    "SetupProgress",
    "RunStarted",
    "StepLoss",
    "EpochSummary",
    "FSCCurve",
    "LatentSnapshot",
    "PreviewVolumes",
    "CheckpointWritten",
    "MicroBatchReduced",
    "RunFinished",
]


@dataclass(frozen=True)
class Event:
    """Base of every training event."""


@dataclass(frozen=True)
class SetupProgress(Event):
    """The run's set-up before ``RunStarted`` (reading the particles, checking their images, mesh and
    model, noise spectra, first latents): its ``stage`` and ``done`` of ``total`` ``unit`` (0: no count).
    A stage's first event has ``done == 0``; at most a few per second."""

    stage: str
    done: int = 0
    total: int = 0
    unit: str = ""


@dataclass(frozen=True)
class RunStarted(Event):
    run_dir: str
    n_particles: int
    n_train: int
    n_val: int
    box: int  # training box N_L
    apix: float  # Å per pixel at the training box
    device: str
    epochs: int
    steps_per_epoch: int
    start_epoch: int  # 0 for a new run, the number of finished epochs when resuming
    n_vertices: int
    latent_prior: str = "gaussian"  # "learned (9^2 grid)" or "gaussian": what latent inference uses
    start_step: int = 0  # steps of epoch start_epoch already done (resuming from a mid-epoch checkpoint)
    memory_estimate_mb: float = float("nan")  # estimated peak device memory of a step (training.memory), MiB
    micro_batch: int = 0  # particles per micro-batch (0: each minibatch in one piece)


@dataclass(frozen=True)
class StepLoss(Event):
    epoch: int  # 0-based
    step: int  # minibatch within the epoch, 0-based
    global_step: int
    phase: str  # "warmup" | "flow" | "structure"
    loss: float  # data + rigidity (+ prior) per particle
    data_loss: float
    rigidity_loss: float
    band_limit_nyquist: float  # the band limit as a fraction of the training box's Nyquist
    band_limit_a: float  # the same as a resolution, Å: 2 x the training box's pixel size / band_limit_nyquist
    steps_per_epoch: int
    # 2 x data_loss / (Fourier coefficients in the band): the whitened residual per
    # coefficient, 1 = nothing but noise left. The loss itself grows as frequency marching
    # lets more coefficients in; this does not, so it is what the plots show.
    residual: float = float("nan")


@dataclass(frozen=True)
class EpochSummary(Event):
    epoch: int
    train_loss: float  # mean per-particle loss over the epoch
    val_loss: float  # per-particle data loss on held-out particles with inferred latents (nan if none held out)
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process (all threads) during the epoch
    band_limit_nyquist: float
    band_limit_a: float
    latent_std: tuple[float, ...]  # (K,) spread of the training latents
    peak_memory_mb: float  # peak resident memory of the process (CPU) or the device (CUDA)
    train_residual: float = float("nan")  # mean of the steps' residual per coefficient (1 = noise)
    val_residual: float = float("nan")  # the validation data loss per coefficient of the final band (x 2)
    # the smallest canonical correlation between the latents after this epoch and before it
    # (1: the latent space stopped moving; nan where undefined, such as constant latents).
    # Near 1 only once the model settles: the last epochs' figure says whether more epochs
    # or a lower --lr-final could still change the latents.
    latent_agreement: float = float("nan")


@dataclass(frozen=True, eq=False)
class FSCCurve(Event):
    """Model FSC: the canonical map against the consensus map it started from, at the training box."""

    epoch: int
    kind: str  # "model"
    frequencies_per_a: np.ndarray  # (n//2+1,) 1/Å
    fsc: np.ndarray  # (n//2+1,)
    resolution_a: float  # at 0.143


@dataclass(frozen=True, eq=False)
class LatentSnapshot(Event):
    epoch: int
    latents: np.ndarray  # (n_particles, K) float32, the input's row order


@dataclass(frozen=True, eq=False)
class PreviewVolumes(Event):
    epoch: int
    sigmas: tuple[float, ...]  # e.g. (-1.0, 1.0)
    volumes: np.ndarray  # (K, len(sigmas), n, n, n) float32 convected maps
    apix: float


@dataclass(frozen=True)
class CheckpointWritten(Event):
    epoch: int  # epochs finished
    path: str
    step: int = 0  # steps of the next epoch done (0: written at an epoch's end)


@dataclass(frozen=True)
class MicroBatchReduced(Event):
    """The device ran out of memory (``torch.OutOfMemoryError``); the minibatch is now worked through
    in micro-batches of ``micro_batch`` particles (gradient accumulated: the same result), for the
    rest of the run and after ``--resume``."""

    epoch: int  # 0-based epoch in progress
    step: int  # its minibatch, 0-based (``steps_per_epoch`` in the epoch's validation)
    where: str  # "latent inference", "model update", "validation"
    batch: int  # particles per minibatch (unchanged)
    previous: int  # the piece that did not fit
    micro_batch: int  # particles per piece from now on
    message: str = ""  # the first line of torch's error


@dataclass(frozen=True)
class RunFinished(Event):
    run_dir: str
    epochs: int
    seconds: float
