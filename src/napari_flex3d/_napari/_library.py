"""Where the widgets meet the headless library.

Every call from the front end into ``napari_flex3d`` goes through this module, so the
widgets hold no compute and a library piece that has not landed shows up as one clear
``MissingPiece`` naming the module, never as a faked result.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingPiece(RuntimeError):
    """A library module the front end needs is not available in this version."""

    def __init__(self, module: str, name: str | None = None, why: str = ""):
        self.module = module
        self.name = name
        what = f"{module}.{name}" if name else module
        super().__init__(f"{what} is not available in this version" + (f" ({why})" if why else ""))


def piece(module: str, name: str | None = None):
    """Import ``napari_flex3d.<module>`` (and return its attribute ``name`` if given).

    Raises ``MissingPiece`` if the module or the attribute does not exist.
    """
    full = f"napari_flex3d.{module}"
    try:
        mod: ModuleType = importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == full or full.startswith(exc.name + ".") or exc.name.startswith(full)):
            raise MissingPiece(full) from exc
        raise
    if name is None:
        return mod
    try:
        return getattr(mod, name)
    except AttributeError as exc:
        raise MissingPiece(full, name) from exc


def available(module: str, name: str | None = None) -> str | None:
    """``None`` if the piece is there, else the reason it is not (for skips and disabled buttons)."""
    try:
        piece(module, name)
    except MissingPiece as exc:
        return str(exc)
    return None
