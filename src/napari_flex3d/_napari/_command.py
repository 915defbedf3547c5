"""The "Copy command" button every job widget carries: the job as a ``flex3d`` command line.

Each widget that starts a job (mesh, train, reconstruct) writes the equivalent command into the
job's output folder (:func:`napari_flex3d.io.atomic.write_command`) and hands it to this button,
which puts it on the clipboard. Imports Qt and napari's notifications only.
"""

from __future__ import annotations

import shlex

from napari.utils.notifications import show_info
from qtpy.QtWidgets import QApplication, QPushButton


class CommandButton(QPushButton):
    """"Copy command": enabled once a job has a command; a click copies it to the clipboard."""

    def __init__(self, parent=None):
        super().__init__("Copy command", parent)
        self.command: str | None = None
        self.setEnabled(False)
        self.setToolTip("copy the flex3d command line that runs the same job (start a job first)")
        self.clicked.connect(self.copy)

    def set_command(self, argv: list[str] | None, written_to=None) -> None:
        """The job's command line (``None``: none known); ``written_to``: the script that holds it."""
        self.command = None if argv is None else shlex.join(str(a) for a in argv)
        self.setEnabled(self.command is not None)
        where = f"; also in {written_to}" if written_to else ""
        self.setToolTip(f"copy: {self.command}{where}" if self.command else "start a job first")

    def copy(self) -> None:
        if self.command:
            QApplication.clipboard().setText(self.command)
            show_info(f"napari-flex3d: copied: {self.command}")
