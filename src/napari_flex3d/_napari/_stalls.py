"""Event-loop stalls of the GUI thread, measured by a timer that should tick every 10 ms.

A ``QTimer`` in the GUI thread fires every ``interval_ms``; when it fires late, the thread
was busy (a slot, a canvas paint) or could not get the GIL (a worker holding it). The
lateness of each tick is one sample; a *stall* is a tick later than ``STALL_MS``. Samples
are kept per phase (``monitor.phase("training")``), so one run measures training,
reconstruction and a movie export apart. Used by ``benchmarks/gui_latency.py`` and the
GUI tests, the same code for both; ``settle(viewer)`` waits for a quiet canvas. Imports Qt only.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QTimer

STALL_MS = 50.0  # a tick this late counts as a stall (the p99 target)


class StallMonitor:
    """Tick lateness of the GUI thread per phase: ``start()``, ``phase(name)``, ``stop()``, ``summary()``.

    ``lateness_ms[phase]`` holds one value per tick, ``when_s[phase]`` the tick's time
    (``time.perf_counter()`` seconds) for matching a stall with what happened then.
    """

    def __init__(self, interval_ms: int = 10):
        self.interval_ms = interval_ms
        self.lateness_ms: dict[str, list[float]] = {}
        self.when_s: dict[str, list[float]] = {}
        self._current: str | None = None
        self._last = 0.0
        self._timer = QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self, phase: str) -> None:
        """Begin (or switch to) ``phase`` and tick."""
        self.phase(phase)
        if not self._timer.isActive():
            self._last = time.perf_counter()
            self._timer.start()

    def phase(self, name: str) -> None:
        """Count the following ticks under ``name`` (earlier samples of ``name`` are kept).

        Called from the GUI thread, so whatever delayed the next tick until now (the
        caller's own set-up) belongs to the phase before: the clock restarts here.
        """
        self._current = name
        self._last = time.perf_counter()
        self.lateness_ms.setdefault(name, [])
        self.when_s.setdefault(name, [])

    def stop(self) -> None:
        self._timer.stop()
        self._current = None

    def _tick(self) -> None:
        now = time.perf_counter()
        late = max(0.0, (now - self._last) * 1000.0 - self.interval_ms)
        self._last = now
        if self._current is not None:
            self.lateness_ms[self._current].append(late)
            self.when_s[self._current].append(now)

    def summary(self, phase: str) -> dict:
        """``{"max_ms", "p99_ms", "stalls" (ticks later than STALL_MS), "over_250_ms", "ticks"}`` of ``phase``."""
        late = np.asarray(self.lateness_ms.get(phase, []), dtype=np.float64)
        if late.size == 0:
            return {"max_ms": float("nan"), "p99_ms": float("nan"), "stalls": 0, "over_250_ms": 0, "ticks": 0}
        return {
            "max_ms": float(late.max()),
            "p99_ms": float(np.percentile(late, 99)),
            "stalls": int((late > STALL_MS).sum()),
            "over_250_ms": int((late > 250.0).sum()),
            "ticks": int(late.size),
        }

    def longest(self, phase: str, n: int = 3) -> list[tuple[float, float]]:
        """The ``n`` longest stalls of ``phase`` as ``(start time s, length ms)``, longest first."""
        late = np.asarray(self.lateness_ms.get(phase, []))
        when = np.asarray(self.when_s.get(phase, []))
        order = np.argsort(late)[::-1][:n]
        return [(float(when[i] - (late[i] + self.interval_ms) / 1000.0), float(late[i])) for i in order]


def format_summary(phase: str, s: dict) -> str:
    """One line: ``phase: max / p99 / count``."""
    return (
        f"{phase}: max {s['max_ms']:.0f} ms / p99 {s['p99_ms']:.1f} ms / {s['stalls']} stalls over "
        f"{STALL_MS:.0f} ms ({s['over_250_ms']} over 250 ms) in {s['ticks']} ticks"
    )


def settle(viewer, quiet_ms: int = 500, timeout_s: float = 600.0) -> None:
    """Run the event loop until ``viewer``'s canvas has not painted for ``quiet_ms`` (so that
    the paints of a set-up are not counted in the phase that follows)."""
    from qtpy.QtWidgets import QApplication

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    draws = [0]

    def count(_event):
        draws[0] += 1

    canvas.events.draw.connect(count)
    app = QApplication.instance()
    start = since = time.perf_counter()
    seen = draws[0]
    try:
        while time.perf_counter() - since < quiet_ms / 1000 and time.perf_counter() - start < timeout_s:
            app.processEvents()
            time.sleep(0.005)
            if draws[0] != seen:
                seen, since = draws[0], time.perf_counter()
    finally:
        canvas.events.draw.disconnect(count)
