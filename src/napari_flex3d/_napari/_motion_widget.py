"""Motion analysis: what moved at the explorer's latent point, side-by-side maps, and the map of a selection.

The widget works on the run open in the **Latent explorer** of the same viewer and never
opens a run of its own: ``explorer`` is that ``LatentExplorerWidget``, found by
:func:`find_explorer` among the viewer's docked widgets (napari's ``window.dock_widgets``;
a plugin widget may sit inside a scroll area, so its children are searched too) each time
an action needs it, or set directly (``widget.explorer = ex``, as the tests do). It reads
only the explorer's public state: ``run`` (the ``RunVolumes``: model, box, voxel size),
``run_dir``, ``latents``, ``z`` (the current point), ``movie_latents()`` (the traversal
chosen in its "movie along" menu, with its frame count), ``selection`` and
``selection_changed``.

Three parts, one module each: what moved (``_motion_moved``: displacement on a surface,
strain along the traversal, displacement per painted region), side by side
(``_motion_compare``) and subset to map (``_motion_subset``). All compute runs in thread
workers (``_workers.start_worker``); the GUI thread only puts prepared arrays into layers.
Imports Qt and its own ``_napari`` parts; the library only through those parts.
"""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from ._motion_compare import SideBySide
from ._motion_moved import WhatMoved
from ._motion_subset import SubsetToMap
from ._session import session_for

__all__ = ["MotionWidget", "find_explorer"]


def find_explorer(viewer):
    """The ``LatentExplorerWidget`` docked on ``viewer`` (``None`` if there is none)."""
    from ._explore_widget import LatentExplorerWidget

    window = getattr(viewer, "window", None)
    if window is None:
        return None
    try:
        docked = list(window.dock_widgets.values())  # napari >= 0.6.2: the inner widgets
    except AttributeError:
        docked = [d.widget() for d in getattr(window, "_dock_widgets", {}).values()]
    for w in docked:
        w = getattr(w, "native", w)  # a magicgui widget's Qt widget
        if isinstance(w, LatentExplorerWidget):
            return w
        if isinstance(w, QWidget):
            found = w.findChild(LatentExplorerWidget)
            if found is not None:
                return found
    return None


class MotionWidget(WhatMoved, SideBySide, SubsetToMap, QWidget):
    """Displacement and strain, two latent points side by side, and the half maps of a selection."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self._explorer = None
        self.worker = None  # the running what-moved or side-by-side job
        layout = QVBoxLayout(self)
        self.explorer_label = QLabel("")
        self.explorer_label.setWordWrap(True)
        layout.addWidget(self.explorer_label)
        self.tabs = QTabWidget()  # one tab per part: the dock stays short
        self.tabs.addTab(self._build_moved_box(), "What moved")
        self.tabs.addTab(self._build_compare_box(), "Side by side")
        self.tabs.addTab(self._build_subset_box(), "Subset to map")
        layout.addWidget(self.tabs)
        layout.addStretch(1)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self._describe_explorer()
        self._update_buttons()

    # ------------------------------------------------------------------ the explorer
    @property
    def explorer(self):
        """The Latent explorer this widget reads (looked up on the viewer until one is found)."""
        if self._explorer is None:
            self.explorer = find_explorer(self.viewer)
        return self._explorer

    @explorer.setter
    def explorer(self, ex) -> None:
        if ex is self._explorer:
            return
        self._explorer = ex
        if ex is not None:
            ex.selection_changed.connect(self._on_selection)
        self._describe_explorer()
        self._on_selection(None if ex is None else ex.selection)

    def _describe_explorer(self) -> None:
        ex = self._explorer
        if ex is None:
            text = "Open the Latent explorer (Plugins > napari-flex3d) and a run in it: this widget works on its run."
        elif ex.run is None:
            text = "Latent explorer found; open a run in it."
        else:
            text = f"Run: {ex.run_dir} (K = {ex.latents.shape[1]}, {len(ex.latents):,} particles)"
        self.explorer_label.setText(text)

    def _require_run(self):
        """The explorer (with a run open), or ``ValueError`` saying what to do."""
        ex = self.explorer
        if ex is None:
            raise ValueError("no Latent explorer on this viewer: open it (Plugins > napari-flex3d > Latent explorer)")
        if ex.run is None:
            raise ValueError("open a run in the Latent explorer first")
        self._describe_explorer()
        return ex

    @property
    def idle(self) -> bool:
        """No job of this widget is running."""
        return self.worker is None and self.subset_worker is None

    def _job_done(self) -> None:
        self.worker = None
        self._update_buttons()

    def _job_failed(self, exc) -> None:
        self.status_label.setText(f"error: {type(exc).__name__}: {exc}")

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        for b in self._job_buttons():
            b.setEnabled(not busy)
        self._update_moved_buttons()
        self._update_subset_buttons()
