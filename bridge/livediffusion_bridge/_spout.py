"""Spout sources and sinks (Windows) through SpoutGL 0.1.1, imported on first use.

Written against the SpoutGL 0.1.1 binding source; not run on this project's Linux machines.
Two quirks of that binding matter here: ``sendImage`` labels its integers ``height, width``
but hands the first to Spout as the width (its own test passes the width first, and so do
we), and ``getSenderName`` is wired to ``GetSenderWidth``, so it is never used.

Spout works through OpenGL, which SpoutGL opens itself on the first send or receive, on
the calling thread. Read (or publish) from one thread; ``close()`` from another thread
releases the sender/receiver without that context current, which Spout tolerates at exit
but which has not been exercised here.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from ._listing import SourceInfo
from ._options import Options
from ._pacing import poll_for_frame
from .errors import BackendUnavailableError, ClosedError, SourceNotFoundError, TransportError
from .frame import Frame, FrameSink, FrameSource, Pixels, as_pixels
from .uri import SourceURI

__all__ = ["SpoutSink", "SpoutSource", "list_sources", "open_sink", "open_source"]

INSTALL_HINT = 'pip install "livediffusion[windows]"'
DEFAULT_SENDER_NAME = "livediffusion"
_POLL = 0.002
"""Sleep between receive attempts; well under a frame at any host frame rate."""


def _load() -> Any:
    """The ``SpoutGL`` module; raises unless this is Windows with SpoutGL installed."""
    if sys.platform != "win32":
        raise BackendUnavailableError(
            f"Spout needs Windows (this is {sys.platform}); on Windows: {INSTALL_HINT}"
        )
    try:
        import SpoutGL
        import SpoutGL.enums
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Spout needs the SpoutGL package: {INSTALL_HINT} ({exc})"
        ) from exc
    return SpoutGL


def _sender_names(spout: Any) -> list[str]:
    receiver = spout.SpoutReceiver()
    try:
        return [str(name) for name in receiver.getSenderList()]
    finally:
        receiver.releaseReceiver()


def list_sources(timeout: float) -> list[SourceInfo]:
    del timeout  # Spout's sender list is shared memory: it answers at once
    spout = _load()
    return [
        SourceInfo(uri=str(SourceURI("spout", name)), kind="spout", name=name)
        for name in _sender_names(spout)
    ]


# -- source --------------------------------------------------------------------------------


def open_source(uri: SourceURI) -> SpoutSource:
    options = Options(uri, role="source")
    wait = options.number("wait", 0.0, minimum=0.0, maximum=600.0)
    invert = options.flag("invert", False)
    fps = options.rate("fps", 60.0)
    options.finish()
    return SpoutSource(str(uri), target=uri.target.strip(), wait=wait, invert=invert, fps=fps)


class SpoutSource(FrameSource):
    """Receives from one Spout sender (``spout://NAME``) or the active one (``spout://``).

    Each delivered frame is the buffer Spout wrote into, handed over whole; the next frame
    goes into a fresh buffer. When the sender does not count frames, Spout cannot tell new
    frames from old, so delivery is capped at ``fps``.
    """

    def __init__(
        self, uri: str, *, target: str, wait: float = 0.0, invert: bool = False, fps: float = 60.0
    ) -> None:
        self.uri = uri
        self._target = target
        self._invert = invert
        self._period = 1.0 / fps
        self._spout = _load()
        self._format = int(self._spout.enums.GL_RGBA)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._buffer: Pixels | None = None
        self._fresh = False
        self._last = 0.0
        self._receiver: Any = self._spout.SpoutReceiver()
        try:
            if target:
                self._receiver.setReceiverName(target)
            deadline = time.monotonic() + wait
            while wait > 0 and not self._visible():
                if time.monotonic() >= deadline:
                    seen = _sender_names(self._spout)
                    raise SourceNotFoundError(
                        f"no Spout sender {target!r} within {wait:g} s; "
                        f"visible: {', '.join(seen) or 'none'}"
                    )
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise

    def _visible(self) -> bool:
        names = _sender_names(self._spout)
        return target_in(names, self._target)

    def read(self, timeout: float) -> Frame | None:
        if self._closed.is_set():
            raise ClosedError(f"{self.uri} is closed")
        return poll_for_frame(
            lambda _deadline: self._step(),
            timeout=timeout,
            lock=self._lock,
            closed=self._closed,
            pause=_POLL,
        )

    def _allocate(self) -> None:
        width = int(self._receiver.getSenderWidth())
        height = int(self._receiver.getSenderHeight())
        self._buffer = np.empty((height, width, 4), dtype=np.uint8) if width and height else None
        self._fresh = True

    def _step(self) -> Frame | None:
        receiver = self._receiver
        if self._buffer is None:
            # A receive without a buffer is how Spout learns the sender and its size.
            if receiver.receiveImage(None, self._format, self._invert, 0) and receiver.isUpdated():
                self._allocate()
            return None
        if not receiver.receiveImage(self._buffer, self._format, self._invert, 0):
            return None  # no sender (yet, or any more): Spout reconnects by name itself
        if receiver.isUpdated():
            self._allocate()  # new sender or new size; this receive did not fill the buffer
            return None
        now = time.monotonic()
        if not receiver.isFrameNew():
            return None
        if not receiver.isFrameCountEnabled() and now - self._last < self._period:
            return None
        pixels = self._buffer
        if self._fresh:
            self._fresh = False
            if not pixels.any():
                return None  # Spout's first receive after a (re)connect comes back empty
        self._last = now
        self._buffer = np.empty_like(pixels)
        return Frame(pixels, time.monotonic())

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.releaseReceiver()


def target_in(names: list[str], target: str) -> bool:
    return bool(names) if not target else target in names


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> SpoutSink:
    options = Options(uri, role="sink")
    invert = options.flag("invert", False)
    options.finish()
    _load()
    return SpoutSink(str(uri), name=uri.target.strip() or DEFAULT_SENDER_NAME, invert=invert)


class SpoutSink(FrameSink):
    """A Spout sender called ``name``, created at the first frame.

    ``sendImage`` uploads synchronously, so the caller may reuse its buffer afterwards.
    Row 0 is the top of the picture; ``invert`` flips it for hosts that disagree.
    """

    def __init__(self, uri: str, *, name: str, invert: bool = False) -> None:
        self.uri = uri
        self.name = name
        self._invert = invert
        self._lock = threading.Lock()
        self._closed = False
        self._spout: Any = None
        self._sender: Any = None

    def publish(self, pixels: Pixels) -> None:
        pixels = as_pixels(pixels)
        height, width = pixels.shape[:2]
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self.uri} is closed")
            if self._sender is None:
                self._spout = _load()
                sender = self._spout.SpoutSender()
                sender.setSenderName(self.name)
                self._sender = sender
            # Width first, whatever the binding's parameter names say (see the module doc).
            sent = self._sender.sendImage(
                pixels, width, height, int(self._spout.enums.GL_RGBA), self._invert, 0
            )
            if not sent:
                raise TransportError(
                    f"Spout could not send a {width}x{height} frame as {self.name!r}"
                )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sender, self._sender = self._sender, None
        if sender is not None:
            sender.releaseSender()
