"""What every live transport repeats, written once: NDI, Syphon and Spout are thin on top.

:class:`LiveSource` owns the closed flag, the lock, the lazy connection on the *reading*
thread, the reconnect loop and the "waiting for ..." state; a transport implements three
steps (``_connect``, ``_grab``, ``_disconnect``). :class:`LiveSink` owns the closed flag, the
lock, the pixel check and the lazy (re)creation of the sender at the first frame and at every
size change, on the *publishing* thread; a transport implements ``_create``, ``_send`` and
``_destroy``. python-mss does the same with ``grab`` around ``_grab_impl``.

Thread affinity is the point of doing the connection lazily: Spout needs its OpenGL context on
the thread that receives or sends, and Syphon's Metal objects are best made where they are
used. The engine reads on its capture thread and publishes on its publish thread, so that is
where these libraries' objects are born, used and (when the thread closes them) released.
"""

from __future__ import annotations

import abc
import logging
import threading
import time

from ._pacing import poll_for_frame
from .errors import ClosedError, TransportError
from .frame import Frame, FrameSink, FrameSource, Pixels, as_pixels

__all__ = ["LiveSink", "LiveSource", "SourceLost"]

log = logging.getLogger(__name__)


class SourceLost(TransportError):
    """Raised by ``_grab`` when the sender went away: the source disconnects and waits."""


class LiveSource(FrameSource):
    """A source that connects lazily, on the reading thread, and reconnects by itself.

    While not connected, :attr:`waiting_for` names what it waits for (the status line shows
    it) and ``read`` returns ``None``; a connection attempt is made at most every
    :attr:`retry_interval` seconds. ``_grab`` raises :class:`SourceLost` when the sender is
    gone; the source then releases it and starts waiting again (the attempt after a loss is
    immediate). Frames may change size at any time: the engine copes.
    """

    poll_pause: float = 0.002
    """Sleep between attempts to grab a frame: well under a frame at any host frame rate."""
    retry_interval: float = 0.5

    def __init__(self, uri: str, *, describe: str) -> None:
        self.uri = uri
        self.describe = describe
        self.reconnects = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._connected = False
        self._connections = 0
        self._next_attempt = 0.0
        self._last_problem = ""

    # -- what transports implement ------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> bool:
        """Try once to reach the sender; True when connected. Runs on the reading thread."""

    @abc.abstractmethod
    def _grab(self, deadline: float) -> Frame | None:
        """One short attempt at the next frame; raise :class:`SourceLost` if the sender left."""

    @abc.abstractmethod
    def _disconnect(self) -> None:
        """Release what ``_connect`` made. Called with the lock held; must not raise."""

    def _shutdown(self) -> None:
        """Release what lives longer than one connection (a finder, a directory)."""

    # -- the shared part ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def waiting_for(self) -> str | None:
        """What the source is waiting for, or None while frames can flow."""
        return None if self._connected or self._closed.is_set() else self.describe

    def read(self, timeout: float) -> Frame | None:
        if self._closed.is_set():
            raise ClosedError(f"{self.uri} is closed")
        return poll_for_frame(
            self._step,
            timeout=timeout,
            lock=self._lock,
            closed=self._closed,
            pause=self.poll_pause,
        )

    def _step(self, deadline: float) -> Frame | None:
        if not self._connected and not self._try_connect():
            return None
        try:
            frame = self._grab(deadline)
        except SourceLost as exc:
            log.warning("%s lost: %s; waiting for it to come back", self.describe, exc)
            self._drop_connection()
            return None
        if frame is not None:
            as_pixels(frame.pixels)  # a transport bug, not a frame: fail loudly here
        return frame

    def _try_connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_attempt:
            return False
        self._next_attempt = now + self.retry_interval
        try:
            connected = self._connect()
        except TransportError as exc:
            problem = str(exc)
            if problem != self._last_problem:  # say each new problem once, not every retry
                log.warning("%s: %s (retrying)", self.describe, problem)
                self._last_problem = problem
            return False
        if connected:
            self._connected = True
            self._connections += 1
            self._last_problem = ""
            if self._connections > 1:
                self.reconnects += 1
                log.info("%s is back (reconnect %d)", self.describe, self.reconnects)
        return connected

    def _drop_connection(self) -> None:
        self._connected = False
        self._next_attempt = 0.0
        try:
            self._disconnect()
        except Exception:
            log.exception("%s: releasing the lost connection failed", self.describe)

    def close(self) -> None:
        """Stop reading and release everything. Safe to call twice, from any thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            if self._connected:
                self._drop_connection()
            try:
                self._shutdown()
            except Exception:
                log.exception("%s: shutting down failed", self.describe)


class LiveSink(FrameSink):
    """A sink whose sender is created on the publishing thread at the first frame, and again
    whenever the frame size changes; ``publish`` never blocks on receivers."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._closed = False
        self._size: tuple[int, int] | None = None  # (height, width) of the live sender

    @abc.abstractmethod
    def _create(self, width: int, height: int) -> None:
        """Make the sender for frames of this size. Runs on the publishing thread."""

    @abc.abstractmethod
    def _send(self, pixels: Pixels) -> None:
        """Send one checked RGBA frame of the current size; done with ``pixels`` on return."""

    @abc.abstractmethod
    def _destroy(self) -> None:
        """Release the sender. Called with the lock held; must not raise."""

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, pixels: Pixels) -> None:
        pixels = as_pixels(pixels)
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self.uri} is closed")
            if self._size != (height, width):
                if self._size is not None:
                    self._release()
                self._create(width, height)
                self._size = (height, width)
            self._send(pixels)

    def _release(self) -> None:
        self._size = None
        try:
            self._destroy()
        except Exception:
            log.exception("%s: releasing the sender failed", self.uri)

    def close(self) -> None:
        """Stop publishing. Safe to call twice, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._size is not None:
                self._release()
