"""Latest-wins hand-over between threads, and the recycled output buffers.

A slot holds at most one item. Putting into a full slot replaces (and returns) the item that
was never taken, so a slow consumer sees only the newest frame and nothing queues up.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["BufferPool", "LatestSlot"]

T = TypeVar("T")


class LatestSlot(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._ready = threading.Condition()

    def put(self, item: T) -> T | None:
        """Offer ``item``; returns the unconsumed item it replaced (a dropped frame) or None."""
        with self._ready:
            replaced, self._item = self._item, item
            self._ready.notify()
            return replaced

    def take(self, timeout: float) -> T | None:
        """The newest item, or None if nothing arrived within ``timeout`` seconds."""
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout)
            item, self._item = self._item, None
            return item

    def take_now(self) -> T | None:
        """The newest item if there is one, without waiting."""
        with self._ready:
            item, self._item = self._item, None
            return item

    def clear(self) -> T | None:
        with self._ready:
            item, self._item = self._item, None
            return item


class BufferPool:
    """Reuses RGBA output arrays, so steady-state frames allocate nothing.

    With one slot between the producer and the consumer at most three buffers are in flight
    (being written, waiting in the slot, being published); the pool never holds more than
    ``keep`` spares of a shape and drops spares of a shape that is no longer asked for.
    """

    def __init__(self, *, keep: int = 4) -> None:
        self._keep = keep
        self._spares: list[npt.NDArray[np.uint8]] = []
        self._lock = threading.Lock()
        self.allocations = 0

    def acquire(self, shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
        with self._lock:
            while self._spares:
                buffer = self._spares.pop()
                if buffer.shape == shape:
                    return buffer
            self.allocations += 1
        return np.empty(shape, dtype=np.uint8)

    def release(self, buffer: npt.NDArray[np.uint8]) -> None:
        with self._lock:
            if len(self._spares) < self._keep:
                self._spares.append(buffer)
