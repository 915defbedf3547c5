"""A trained run folder, read back: its settings, last checkpoint and model.

This is the one loader of a run folder (``RUN/config.json``, ``RUN/checkpoints/last.pt``,
``RUN/latents.npy``); training resumes from it, and ``generate``, ``reconstruct``, the
simulator's scoring and the napari explorer read runs through it. The model is rebuilt from
the checkpoint's state dict alone (every buffer is in it), without the mesh or the map.

May import: ``config``, ``io``, and the rest of ``model``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..config import TrainConfig, from_dict

__all__ = ["CHECKPOINT_NAME", "Run", "checkpoint_path", "config_and_model", "final_latents", "load_run", "model_from_state"]

CHECKPOINT_NAME = "last.pt"


def checkpoint_path(run_dir) -> Path:
    """``run_dir/checkpoints/last.pt``."""
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


class Run(NamedTuple):
    """A run folder's settings, last checkpoint (a dict of tensors and JSON strings) and model.

    Unpacks as ``config, checkpoint, model = load_run(run_dir)``.
    """

    config: TrainConfig
    checkpoint: dict
    model: torch.nn.Module

    @property
    def latents(self) -> torch.Tensor:
        """``(n, K)`` float32 latents of the checkpoint (the same rows as ``latents.npy`` at the end)."""
        return self.checkpoint["latents"].to(torch.float32)

    @property
    def epoch(self) -> int:
        """Epochs completed when the checkpoint was written."""
        return int(self.checkpoint["epoch"])


def model_from_state(state: dict, box: int, apix: float, config: TrainConfig):
    """Rebuild a :class:`~napari_flex3d.model.flex.FlexModel` from its ``state_dict``."""
    from .canonical import CanonicalMap
    from .flex import FlexModel
    from .flow import FlowGenerator

    try:
        canonical = CanonicalMap(state["canonical.values"], state["canonical.voxel_index"], box, apix)
        flow = FlowGenerator(
            config.latent_dim,
            int(state["vertices_a"].shape[0]),
            hidden=config.hidden,
            layers=config.layers,
            vertex_mask=state["flow.vertex_mask"],
        )
        model = FlexModel(
            canonical,
            flow,
            state["vertices_a"],
            state["cells"],
            state["bary_index"],
            state["bary_weight"],
            state["rigidity_weights"],
            kernel=config.kernel,
        )
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint model does not match its settings: {exc}") from exc
    return model


def config_and_model(state: dict, path, config: TrainConfig | None = None):
    """The checkpoint's settings and its model (CPU).

    ``config`` (a resumed run's) may change only how long and where the run goes: epochs,
    device, threads, preview and checkpoint intervals; everything else comes from the checkpoint.
    """
    try:
        settings = json.loads(state["config_json"])
        settings.setdefault("latent_prior_shape", "gaussian")  # runs from before the learned prior keep their Gaussian
        saved = from_dict(TrainConfig, settings)
        if config is not None:
            saved = dataclasses.replace(
                saved, epochs=config.epochs, device=config.device, threads=config.threads,
                preview_every=config.preview_every, checkpoint_minutes=config.checkpoint_minutes,
            )
        model = model_from_state(state["model"], int(state["box"]), float(state["apix"]), saved)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: checkpoint lacks {exc}") from exc
    return saved, model


def load_run(run_dir, device="cpu") -> Run:
    """The run folder's last checkpoint, its settings and its model on ``device``."""
    from ..io.checkpoint import load_checkpoint

    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint at {path} (is this a napari-flex3d training run?)")
    state = load_checkpoint(path)
    config, model = config_and_model(state, path)
    return Run(config, state, model.to(device))


def final_latents(run_dir) -> np.ndarray:
    """``(n, K)`` latents a finished run wrote to ``latents.npy``; ``ValueError`` if there are none."""
    path = Path(run_dir) / "latents.npy"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no latents.npy (is this a finished training run?)")
    from ..io.values import require_finite

    return require_finite(np.load(path, allow_pickle=False), str(path))
