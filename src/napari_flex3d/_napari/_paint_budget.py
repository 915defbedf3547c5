"""Whether the canvas can afford a repaint that nobody asked for, measured on its own frames.

A canvas paint runs in the GUI thread. With a GPU a 3D frame takes milliseconds; with
software OpenGL (Mesa llvmpipe, what cluster desktops without a GPU have) a frame with an
iso-surface volume takes 0.7-6 s, and every change to the scene (a layer added, a visible
layer's data swapped) repaints all visible layers. So a job's automatic layer updates
(training previews each epoch, the maps at the end of a reconstruction) are made only
while recent frames were cheap; otherwise the widget keeps the prepared arrays and offers
a button, and the repaint happens when the user asks for it. Imports Qt only.
"""

from __future__ import annotations

import time
import weakref
from collections import deque

from qtpy.QtCore import QTimer

BUDGET_MS = 100.0  # an automatic repaint is made only if recent frames took less than this


class PaintBudget:
    """Frame times of one viewer's canvas: ``frame_ms`` (recent, newest last) and ``affordable()``."""

    def __init__(self, viewer, keep: int = 4):
        self._viewer = weakref.ref(viewer)
        self.frame_ms: deque[float] = deque(maxlen=keep)
        canvas = _scene_canvas(viewer)
        if canvas is not None:
            canvas.events.draw.connect(self._on_draw, position="first")

    def _on_draw(self, _event) -> None:
        t0 = time.perf_counter()
        # vispy's draw event only queues GL commands; software OpenGL rasterises when Qt
        # composes the frame, so the frame is done when the event loop next runs
        QTimer.singleShot(0, lambda: self.frame_ms.append((time.perf_counter() - t0) * 1000.0))

    def affordable(self, budget_ms: float = BUDGET_MS) -> bool:
        """True if a repaint now is expected to take less than ``budget_ms``.

        A 2D canvas paints slices (cheap); a 3D one is judged by its slowest recent frame,
        and with no frame seen yet (a hidden viewer, a test) it is taken as cheap.
        """
        viewer = self._viewer()
        if viewer is None or viewer.dims.ndisplay == 2 or not self.frame_ms:
            return True
        return max(self.frame_ms) < budget_ms

    def describe(self) -> str:
        return f"a 3D frame of the canvas takes {max(self.frame_ms, default=0.0) / 1000:.1f} s here"


_BUDGETS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def paint_budget(viewer) -> PaintBudget:
    """The one ``PaintBudget`` of ``viewer`` (plugin widgets get proxies: keyed on the viewer behind)."""
    while hasattr(viewer, "__wrapped__"):
        viewer = viewer.__wrapped__
    budget = _BUDGETS.get(viewer)
    if budget is None:
        budget = _BUDGETS[viewer] = PaintBudget(viewer)
    return budget


def _scene_canvas(viewer):
    """The vispy ``SceneCanvas`` of a napari viewer, or ``None`` (no window, another napari)."""
    try:
        return viewer.window._qt_viewer.canvas._scene_canvas
    except AttributeError:
        return None
