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

import re
import time
import weakref
from collections import deque

from qtpy.QtCore import QTimer

BUDGET_MS = 100.0  # an automatic repaint is made only if recent frames took less than this
# OpenGL renderers that rasterise on the CPU: Mesa's llvmpipe / softpipe / swrast, SwiftShader,
# Windows' "Basic Render Driver" (GL_RENDERER strings)
SOFTWARE_GL = re.compile(r"llvmpipe|softpipe|swrast|software|swiftshader|basic render", re.IGNORECASE)


class PaintBudget:
    """Frame times of one viewer's canvas: ``frame_ms`` (recent, newest last) and ``affordable()``."""

    def __init__(self, viewer, keep: int = 4):
        self._viewer = weakref.ref(viewer)
        self.frame_ms: deque[float] = deque(maxlen=keep)
        self.renderer: str | None = None  # GL_RENDERER, read during the first frame (its context is current)
        canvas = _scene_canvas(viewer)
        if canvas is not None:
            canvas.events.draw.connect(self._on_draw, position="first")
            if viewer.window._qt_window.isVisible():  # its GL context exists: ask now, not at the next frame
                try:
                    canvas.set_current()
                    self.renderer = _gl_renderer() or None
                except Exception:  # noqa: BLE001 - read during the first frame instead
                    pass

    def _on_draw(self, _event) -> None:
        t0 = time.perf_counter()
        if self.renderer is None:
            self.renderer = _gl_renderer()
        # vispy's draw event only queues GL commands; software OpenGL rasterises when Qt
        # composes the frame, so the frame is done when the event loop next runs
        QTimer.singleShot(0, lambda: self.frame_ms.append((time.perf_counter() - t0) * 1000.0))

    def affordable(self, budget_ms: float = BUDGET_MS) -> bool:
        """True if a repaint now is expected to take less than ``budget_ms``.

        A 2D canvas paints slices (cheap); a 3D one is judged by its slowest recent frame;
        with no frame seen yet it is slow with software OpenGL, else (a hidden viewer) cheap.
        """
        viewer = self._viewer()
        if viewer is None or viewer.dims.ndisplay == 2:
            return True
        if not self.frame_ms:
            return not self.software_gl
        return max(self.frame_ms) < budget_ms

    def affords_volumes(self, budget_ms: float = BUDGET_MS) -> bool:
        """True if volume layers can be added or swapped now without a slow frame: a 2D canvas,
        or a 3D one whose recent frames were cheap and that does not ray-cast on the CPU. Recent
        frames alone do not tell: a 3D scene of surfaces paints fast under software OpenGL, and
        the first volume added to it then takes seconds a frame."""
        viewer = self._viewer()
        if viewer is None or viewer.dims.ndisplay == 2:
            return True
        return self.affordable(budget_ms) and not self.software_gl

    @property
    def software_gl(self) -> bool:
        """True if the canvas rasterises on the CPU (known after its first frame)."""
        return bool(self.renderer) and SOFTWARE_GL.search(self.renderer) is not None

    def volumes_slow(self, budget_ms: float = BUDGET_MS) -> bool:
        """True if a 3D frame of a volume is expected to take longer than ``budget_ms``: software
        OpenGL (ray-casting an iso volume there takes seconds: 0.9 s at 16³ and 4.7 s at 64³ in
        a 1200x800 window on 2 cores), or a slow 3D frame seen on this canvas."""
        viewer = self._viewer()
        slow_frames = viewer is not None and viewer.dims.ndisplay == 3 and max(self.frame_ms, default=0.0) > budget_ms
        return self.software_gl or slow_frames

    def describe(self) -> str:
        if not self.frame_ms and self.software_gl:
            return f"software OpenGL ({self.renderer}): a 3D frame of a volume takes seconds here"
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


def _gl_renderer() -> str:
    """The current OpenGL context's ``GL_RENDERER`` string, or ``""`` if it cannot be read."""
    try:
        from vispy.gloo import gl

        return str(gl.glGetParameter(gl.GL_RENDERER) or "")
    except Exception:  # noqa: BLE001 - no context, another backend: unknown, judged by frame times
        return ""


def _scene_canvas(viewer):
    """The vispy ``SceneCanvas`` of a napari viewer, or ``None`` (no window, another napari)."""
    try:
        return viewer.window._qt_viewer.canvas._scene_canvas
    except AttributeError:
        return None
