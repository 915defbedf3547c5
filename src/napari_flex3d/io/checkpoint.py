"""Training checkpoints: written atomically, read without executing pickled code.

A checkpoint is a ``dict`` of tensors, numbers, strings, lists and dicts saved with
``torch.save`` and read with ``torch.load(weights_only=True)``, which refuses anything
but these plain types. Configs and NumPy generator states travel as JSON strings,
torch generator states as ``uint8`` tensors. The file is written by :mod:`.atomic` (a
temporary in the same folder, fsync, rename): a process killed at any moment leaves either
the previous checkpoint or the new one, never half a file.

Imports torch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .atomic import torch_save

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "napari-flex3d-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path, state: dict) -> Path:
    """Save ``state`` (plain types and CPU tensors) atomically with the format tag and version added."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}
    return torch_save(path, payload)


def load_checkpoint(path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises ``ValueError`` naming the file when it is missing, truncated or corrupt, holds
    anything but plain data (``weights_only`` refuses it), or is not a napari-flex3d
    checkpoint of a version this code reads.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  damaged bytes reach torch's unpickler: IndexError, KeyError, ... too
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable napari-flex3d checkpoint (corrupt, truncated or foreign): {first}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a napari-flex3d checkpoint (no '{CHECKPOINT_FORMAT}' tag)")
    version = state.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version!r}; this napari-flex3d reads up to {CHECKPOINT_VERSION}")
    return state
