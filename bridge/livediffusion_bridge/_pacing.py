"""Frame pacing for sources that generate frames themselves (test pattern, video files).

Such sources behave like a live camera: a frame becomes due every ``1/fps`` seconds, a
reader that is on time gets frames on that grid, and a reader that falls behind gets a
frame at once and the next one a full period later, never a burst (live input has no
backlog).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .frame import Frame

__all__ = ["Pacer", "poll_for_frame"]


class Pacer:
    """When the next frame is due. Waits are cut short by ``stop``, so ``close()`` is prompt."""

    def __init__(self, fps: float, stop: threading.Event) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._stop = stop
        self._due: float | None = None

    def wait(self, timeout: float) -> bool:
        """Sleep until the next frame is due and claim it.

        Returns ``False`` without claiming when that is more than ``timeout`` seconds away
        (after sleeping ``timeout``) or when ``stop`` is set.
        """
        now = time.monotonic()
        due = now if self._due is None else self._due
        delay = due - now
        if delay > max(timeout, 0.0):
            self._stop.wait(max(timeout, 0.0))
            return False
        if delay > 0 and self._stop.wait(delay):
            return False
        if self._stop.is_set():
            return False
        # Keep the grid while the reader keeps up; restart it when the reader missed a whole
        # frame, instead of catching up with a burst of frames nobody would have seen.
        after = due + self.period
        now = time.monotonic()
        self._due = after if after > now else now + self.period
        return True


def poll_for_frame(
    step: Callable[[float], Frame | None],
    *,
    timeout: float,
    lock: threading.Lock,
    closed: threading.Event,
    pause: float = 0.0,
) -> Frame | None:
    """The read loop of sources that poll a library: NDI, Syphon, Spout.

    ``step(deadline)`` makes one short attempt under ``lock`` (so ``close()`` never frees the
    library's objects mid-call); between attempts the loop sleeps ``pause`` seconds. Returns
    the first frame, or ``None`` at the deadline or once ``closed`` is set.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        with lock:
            if closed.is_set():
                return None
            frame = step(deadline)
        now = time.monotonic()
        if frame is not None or now >= deadline:
            return frame
        if pause > 0:
            time.sleep(min(pause, deadline - now))
