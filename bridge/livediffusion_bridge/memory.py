"""``memory://NAME``: an in-process transport for tests and for embedding the engine.

A named :class:`MemoryChannel` stands in for a host on both ends: :meth:`MemoryChannel.push`
plays the sending application (the ``memory://NAME`` source reads it), and the channel
records what the ``memory://NAME`` sink publishes. Channels are process-wide and created on
first use, so a test can open ``memory://x`` through :func:`open_source` and reach the same
channel with :func:`channel` without passing objects around.

Both directions copy the pixels: pushers and publishers recycle their buffers, and a
recording that changed after the fact would make tests lie.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
import numpy.typing as npt

from ._options import Options
from .errors import ClosedError, InvalidURIError
from .frame import Frame, FrameSink, FrameSource, Pixels, as_pixels
from .uri import SourceURI

__all__ = ["RECORD_LIMIT", "MemoryChannel", "MemorySink", "MemorySource", "channel", "reset"]

RECORD_LIMIT = 64
"""Published frames a channel keeps; older ones are dropped (the counters still count them)."""

_registry_lock = threading.Lock()
_channels: dict[str, MemoryChannel] = {}


def channel(name: str) -> MemoryChannel:
    """The process-wide channel called ``name``, created on first use."""
    if not name:
        raise ValueError("a memory channel needs a name")
    with _registry_lock:
        found = _channels.get(name)
        if found is None:
            found = _channels[name] = MemoryChannel(name)
        return found


def reset() -> None:
    """Forget every channel, so one test cannot see another's frames.

    Channels still held elsewhere are emptied and detached: later :func:`channel` calls and
    newly opened sources/sinks get fresh ones.
    """
    with _registry_lock:
        old = list(_channels.values())
        _channels.clear()
    for each in old:
        each.clear()


class MemoryChannel:
    """One named link: latest-frame-wins input, bounded recording of output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._input = threading.Condition()
        self._latest: Frame | None = None
        self._pushed = 0
        self._replaced = 0
        self._taken = 0
        self._output = threading.Condition()
        self._recorded: deque[Frame] = deque(maxlen=RECORD_LIMIT)
        self._published = 0

    def __repr__(self) -> str:
        return f"<MemoryChannel {self.name!r} pushed={self._pushed} published={self._published}>"

    # -- the source side ---------------------------------------------------------------

    def push(self, pixels: npt.ArrayLike, *, timestamp: float | None = None) -> None:
        """Offer a frame to the source; an unread older frame is replaced, like a live feed.

        ``timestamp`` is the capture time on the ``time.monotonic()`` clock; it defaults to now.
        """
        frame = Frame(np.array(as_pixels(pixels), copy=True), _now(timestamp))
        with self._input:
            if self._latest is not None:
                self._replaced += 1
            self._latest = frame
            self._pushed += 1
            self._input.notify_all()

    @property
    def pushed_count(self) -> int:
        """Frames pushed since creation or :func:`reset`."""
        return self._pushed

    @property
    def replaced_count(self) -> int:
        """Pushed frames that were replaced before any source read them."""
        return self._replaced

    @property
    def taken_count(self) -> int:
        """Pushed frames a source has read."""
        return self._taken

    @property
    def pending(self) -> bool:
        """Whether a pushed frame is waiting to be read."""
        return self._latest is not None

    def _take(self, timeout: float, closed: threading.Event) -> Frame | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._input:
            while self._latest is None and not closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._input.wait(remaining)
            frame, self._latest = self._latest, None
            if frame is not None:
                self._taken += 1
            return frame

    def _wake(self) -> None:
        with self._input:
            self._input.notify_all()

    # -- the sink side -----------------------------------------------------------------

    def _record(self, pixels: Pixels) -> None:
        frame = Frame(np.array(pixels, copy=True), time.monotonic())
        with self._output:
            self._recorded.append(frame)
            self._published += 1
            self._output.notify_all()

    @property
    def published(self) -> list[Frame]:
        """The most recent published frames (at most :data:`RECORD_LIMIT`), oldest first."""
        with self._output:
            return list(self._recorded)

    @property
    def published_count(self) -> int:
        """Frames published since creation or :func:`reset`, including dropped ones."""
        return self._published

    def wait_published(self, count: int, timeout: float) -> list[Frame]:
        """Block until ``count`` frames were published in total, then return the newest ``count``.

        Fewer than ``count`` come back when ``count`` exceeds :data:`RECORD_LIMIT`. Raises
        :class:`TimeoutError` (saying how many did arrive) after ``timeout`` seconds.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._output:
            if not self._output.wait_for(lambda: self._published >= count, timeout):
                raise TimeoutError(
                    f"memory://{self.name}: {self._published} of {count} frames published "
                    f"within {timeout:g} s"
                )
            return list(self._recorded)[-count:]

    def clear(self) -> None:
        """Drop the pending input, the recording and all counters."""
        with self._input:
            self._latest = None
            self._pushed = self._replaced = self._taken = 0
        with self._output:
            self._recorded.clear()
            self._published = 0


def _now(timestamp: float | None) -> float:
    return time.monotonic() if timestamp is None else float(timestamp)


def _channel_of(uri: SourceURI, role: str) -> MemoryChannel:
    if not uri.target:
        raise InvalidURIError(f"memory:// needs a channel name, for example memory://input ({uri})")
    Options(uri, role=role).finish()
    return channel(uri.target)


def open_source(uri: SourceURI) -> MemorySource:
    return MemorySource(str(uri), _channel_of(uri, "source"))


def open_sink(uri: SourceURI) -> MemorySink:
    return MemorySink(str(uri), _channel_of(uri, "sink"))


class MemorySource(FrameSource):
    """Reads what :meth:`MemoryChannel.push` offers; one reader per channel is intended."""

    def __init__(self, uri: str, link: MemoryChannel) -> None:
        self.uri = uri
        self.channel = link
        self._closed = threading.Event()

    def read(self, timeout: float) -> Frame | None:
        if self._closed.is_set():
            raise ClosedError(f"{self.uri} is closed")
        frame = self.channel._take(timeout, self._closed)
        return None if self._closed.is_set() else frame

    def close(self) -> None:
        self._closed.set()
        self.channel._wake()


class MemorySink(FrameSink):
    """Records into its channel; see :attr:`MemoryChannel.published`."""

    def __init__(self, uri: str, link: MemoryChannel) -> None:
        self.uri = uri
        self.channel = link
        self._closed = False

    def publish(self, pixels: Pixels) -> None:
        if self._closed:
            raise ClosedError(f"{self.uri} is closed")
        self.channel._record(as_pixels(pixels))

    def close(self) -> None:
        self._closed = True
