"""The one place that starts napari thread workers; errors become napari notifications.

Imports napari's threading and notifications; no library code.
"""

from __future__ import annotations

from typing import Callable

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error


def start_worker(func: Callable, *args, yielded=None, returned=None, errored=None, finished=None, **kwargs):
    """Run ``func(*args, **kwargs)`` (a function or generator) in a napari thread worker.

    ``returned``/``yielded``/``finished`` are connected if given; errors always show as a
    napari notification and then call ``errored(exc)`` if given. Returns the started worker.
    """
    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    if yielded is not None and hasattr(worker, "yielded"):
        worker.yielded.connect(yielded)
    if returned is not None:
        worker.returned.connect(returned)

    def _on_error(exc):
        show_error(f"napari-flex3d: {type(exc).__name__}: {exc}")
        if errored is not None:
            errored(exc)

    worker.errored.connect(_on_error)
    if finished is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker


class Background:
    """The workers one widget (and its parts) started and that have not finished yet.

    ``start(func, *args, **kwargs)`` is :func:`start_worker` with the worker counted until its
    ``finished`` (after ``returned`` or ``errored``; a ``finished`` given is still called);
    ``idle`` is true when none runs. Counting, not one attribute per job, so a job started
    again before the last one finished is still seen.
    """

    def __init__(self):
        self.running = 0

    def start(self, func: Callable, *args, finished=None, **kwargs):
        self.running += 1

        def _done():
            self.running -= 1
            if finished is not None:
                finished()

        return start_worker(func, *args, finished=_done, **kwargs)

    @property
    def idle(self) -> bool:
        return self.running == 0


class LatestOnly:
    """Run at most one job at a time; while one runs, keep only the newest request.

    A throttle for sliders and drags: ``request(*args)`` starts ``func`` now if idle, else
    remembers the arguments and starts them when the running job returns.
    """

    def __init__(self, func: Callable, on_result: Callable, on_error: Callable | None = None):
        self.func = func
        self.on_result = on_result
        self.on_error = on_error
        self.worker = None
        self._pending: tuple | None = None
        self.busy = False

    def request(self, *args) -> None:
        if self.busy:
            self._pending = args
            return
        self._launch(args)

    def _launch(self, args: tuple) -> None:
        self.busy = True
        self.worker = start_worker(self.func, *args, returned=self.on_result, errored=self.on_error, finished=self._done)

    def _done(self) -> None:
        self.busy = False
        if self._pending is not None:
            args, self._pending = self._pending, None
            self._launch(args)

    @property
    def idle(self) -> bool:
        return not self.busy and self._pending is None


class WorkerControls:
    """Start/stop state shared by the widgets that run one long job in a napari worker.

    ``state`` goes ``idle -> running -> (stopping) -> idle``. A widget mixes this in before
    ``QWidget`` and provides ``worker``, ``error``, ``progress`` (a ``QProgressBar``),
    ``status_label`` and ``_update_buttons()``; ``_after_finished()`` is its hook.
    """

    def stop(self) -> None:
        """Ask the job to stop after its current step (what it saved stays on disk)."""
        if self.worker is not None and self.state == "running":
            self.state = "stopping"
            self.progress.setFormat("stopping…")
            self.worker.quit()
            self._update_buttons()

    def _on_error(self, exc) -> None:
        self.error = exc
        self.status_label.setText(f"error: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        was = self.state
        self.state = "idle"
        self.worker = None
        self.progress.setFormat("failed" if self.error else ("stopped" if was == "stopping" else "done"))
        self._update_buttons()
        self._after_finished()

    def _after_finished(self) -> None:
        """Called once the job has ended (successfully, stopped or failed)."""


def preload(*modules: str, finished=None):
    """Import ``modules`` in a worker now, while the user fills in a form, then freeze the heap.

    A first import of the training or reconstruction code loads C extensions (parts of
    torch, scipy, VTK), whose set-up holds the GIL for up to a second: done at the start
    of a run it would stall the window then. Afterwards ``gc.freeze()`` moves the objects
    alive now (napari, Qt, torch: millions) out of the collector's sight: a full
    collection walks them all while holding the GIL, measured at 1 s on a loaded 2-core
    machine in the middle of a reconstruction. Errors are left for the run to report.
    ``finished()`` is connected before the worker starts (so a fast import cannot finish
    unseen) and is called at once when there is nothing to import. Returns the worker
    (``worker.is_running``), or ``None`` when all are imported already.
    """
    import gc
    import importlib
    import sys

    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        gc.freeze()
        if finished is not None:
            finished()
        return None

    def job():
        for name in missing:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the run itself says what is wrong
                pass
        gc.freeze()

    worker = create_worker(job, _start_thread=False, _ignore_errors=True)
    if finished is not None:
        worker.finished.connect(finished)
    worker.start()
    return worker


class Preloads:
    """Mixin: import the library code a widget will run in a worker *after* the widget is built.

    Started from the event loop (a zero-delay timer), so building the widget does not share the
    interpreter with the import; ``preload_pending`` is true until the import is done, and
    ``_preloaded()`` (override it) runs then, in the GUI thread.
    """

    preloading = None
    _preload_pending = False

    def _schedule_preload(self, *modules: str) -> None:
        from qtpy.QtCore import QTimer

        self._preload_pending = True
        QTimer.singleShot(0, lambda: self._start_preload(modules))

    def _start_preload(self, modules) -> None:
        self.preloading = preload(*modules, finished=self._preload_done)

    def _preload_done(self, *_) -> None:
        self._preload_pending = False
        self._preloaded()

    def _preloaded(self) -> None:
        """Called once the preload is done."""

    @property
    def preload_pending(self) -> bool:
        return self._preload_pending
