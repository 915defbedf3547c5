"""Read the next minibatch while the current one computes: a background-thread prefetcher.

Particle images live in memory-mapped stacks (:meth:`ParticleSet.images`); a random
minibatch touches scattered pages, so its read (and Fourier crop) can take as long as a
step on a fast GPU. :class:`Prefetcher` runs ``fn(item)`` for the items of a known
sequence (the epoch's minibatch indices) in one daemon thread, at most ``depth`` results
ahead of the consumer, and hands them back in order. NumPy's memmap copies and torch's
kernels release the GIL, so the read overlaps the step.

Results are exactly what ``fn`` returns in the calling thread (it is a pure function of
the item), so training with or without prefetching gives the same numbers. An exception
in ``fn`` is raised in the consumer at the item that caused it. Leaving the ``with``
block early (a generator closed between yields, an error) stops the thread.

Imports torch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import torch

__all__ = ["Prefetcher", "host_to_device"]

_DONE = object()


def host_to_device(x, device) -> torch.Tensor:
    """A host array or tensor on ``device`` without making the host wait for the device.

    A plain ``.to("cuda")`` of pageable memory synchronises the stream, i.e. waits for all
    queued work; from pinned memory with ``non_blocking=True`` the copy is queued like a
    kernel (torch keeps the pinned buffer alive until it is done). Elsewhere: ``.to(device)``.
    """
    t = torch.as_tensor(x)
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class Prefetcher:
    """Iterate ``fn(item)`` over ``items``, computed up to ``depth`` items ahead in a background thread.

    Use as a context manager::

        with Prefetcher(lambda idx: ps.images(idx), minibatches) as batches:
            for images in batches:
                ...
    """

    def __init__(self, fn: Callable, items: Iterable, depth: int = 1):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._fn = fn
        self._items = list(items)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._work, name="flex3d-prefetch", daemon=True)
        self._started = False

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        torch.set_num_threads(self._threads)  # a new thread would otherwise use every core
        for item in self._items:
            if self._stop.is_set():
                return
            try:
                entry = (True, self._fn(item))
            except BaseException as exc:  # handed to the consumer, raised there
                self._put((False, exc))
                return
            if not self._put(entry):
                return
        self._put((True, _DONE))

    def __iter__(self) -> Iterator:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            ok, value = self._queue.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value

    def close(self) -> None:
        """Stop the thread (it finishes the item in hand) and drop what it read ahead."""
        self._stop.set()
        if self._started:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
