"""A counting wrapper over the real NDIlib: every call goes to the real NDI runtime, and the
rules NDI sets on frame memory are checked on the way.

Install it with :func:`counting_ndi` (it takes the place of ``NDIlib`` in ``sys.modules``, so
the bridge's ``_load`` finds it; objects opened before keep the real module). It delegates
every function to the real module and wraps those that hand memory across:

**Received frames** (docs.ndi.video, SDK, *NDI-RECV*: ``NDIlib_recv_capture_v2`` takes
pointers to a video, an audio and a metadata frame, "any of which can be NULL", and "frames
returned to you by this function must be freed"; ``NDIlib_recv_free_video_v2``):

* ndi-python 6.3.2.1 ``src/main.cpp`` ``recv_capture_v2(instance, timeout_in_ms, want_video
  =True, want_audio=True, want_metadata=True)`` passes NULL for a kind whose ``want_*`` is
  False, and otherwise hands over whatever NDI queued. The defaults are True, so a capture
  must say ``False`` for audio and metadata: a capture asking for either is a violation
  (the bridge frees neither kind), and any audio or metadata frame that comes back is counted.
* The ``VideoFrameV2`` it returns points at NDI's own buffer (``vw.inner.p_data =
  video_frame.p_data``, no copy). ``recv_free_video_v2`` passes it to
  ``NDIlib_recv_free_video_v2`` with no guard: a second free frees NDI's buffer twice, and
  reading ``data`` afterwards reads freed memory. Here each captured frame is handed out
  inside a :class:`CapturedFrame` that raises :class:`UseAfterFree` once freed; a second free
  or a free on another receiver is recorded and *not* passed on (it would corrupt the heap of
  the process running the tests). ``recv_destroy`` of a receiver that still owes frees is
  recorded: those frames can never be freed.

**Sent frames** (docs.ndi.video, SDK, *NDI-SEND*, "Asynchronous Sending": the memory passed
to ``NDIlib_send_send_video_async_v2`` "will continue to be used until a synchronizing API
call is made": another async send, an async send of NULL, ``NDIlib_send_send_video_v2``, or
``NDIlib_send_destroy``; *Asynchronous Sending Completions*: "ownership of that buffer is held
by the SDK until the return of the next asynchronous sending call"):

* ndi-python's ``VideoFrameV2.data`` setter keeps a reference to the array (``data_array``)
  and points ``p_data`` at it; ``send_send_video_async_v2`` passes ``&inner`` and keeps no
  reference to the frame object. So the frame object and its array must stay alive and
  unchanged from the async send until the next synchronising call on that sender.
* ``VideoFrameV2`` here is a subclass of the real class that notes the array given to
  ``data``. At every async send the frame's array and its numbers (size, FourCC, stride) are
  fingerprinted; at the next synchronising call, *before* it reaches NDI, the fingerprint is
  compared: a buffer rewritten meanwhile is a violation. A frame object or array collected
  while NDI may read it (a weak reference's callback) is a violation, and so is giving the
  ``data`` of such a frame another array.

Violations are collected in :attr:`Counts.violations` (weak reference callbacks cannot raise)
and raised where they can be: :class:`UseAfterFree` at once. Tests assert on :class:`Counts`.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class UseAfterFree(AssertionError):
    """A captured frame was read or changed after ``recv_free_video_v2``."""


@dataclass
class Counts:
    """What passed through the wrapper, and every rule broken on the way."""

    captures: int = 0
    video_captured: int = 0
    video_freed: int = 0
    audio_captured: int = 0
    metadata_captured: int = 0
    async_sends: int = 0
    sync_sends: int = 0
    flushes: int = 0
    in_flight_checked: int = 0
    receivers_destroyed: int = 0
    senders_destroyed: int = 0
    violations: list[str] = field(default_factory=list)


class CapturedFrame:
    """A received ``VideoFrameV2`` that refuses to be touched once freed."""

    __slots__ = ("_frame", "_freed", "_receiver", "_wrapper")

    def __init__(self, wrapper: CountingNdi, receiver: object, frame: Any) -> None:
        object.__setattr__(self, "_wrapper", wrapper)
        object.__setattr__(self, "_receiver", receiver)
        object.__setattr__(self, "_frame", frame)
        object.__setattr__(self, "_freed", False)

    def _live(self, what: str) -> Any:
        if self._freed:
            message = f"{what} of a received video frame after recv_free_video_v2"
            self._wrapper.violate(message)
            raise UseAfterFree(message)
        return self._frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live(f"reading .{name}"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._live(f"setting .{name}"), name, value)


@dataclass(eq=False)
class _InFlight:
    """The frame of an async send that NDI may still read, as it was when it was sent."""

    fingerprint: tuple[object, ...]
    frame: weakref.ref[Any] | None = None
    array: weakref.ref[np.ndarray] | None = None


def _none() -> None:
    return None


class CountingNdi(types.ModuleType):
    """``NDIlib`` with the frame-memory rules checked; see the module docstring."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("NDIlib", real.__doc__)
        self._real = real
        self._lock = threading.RLock()
        self.counts = Counts()
        self._receivers: dict[int, tuple[object, set[int]]] = {}  # id -> (capsule, frames)
        self._frames: dict[int, CapturedFrame] = {}  # unfreed captured frames by id
        self._in_flight: dict[int, _InFlight] = {}  # sender id -> its async frame
        self._senders: dict[int, object] = {}
        self.VideoFrameV2 = self._frame_class(real.VideoFrameV2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def violate(self, message: str) -> None:
        with self._lock:
            self.counts.violations.append(message)

    # -- receiving --------------------------------------------------------------------------

    def recv_create_v3(self, *args: Any, **kwargs: Any) -> Any:
        receiver = self._real.recv_create_v3(*args, **kwargs)
        if receiver is not None:
            with self._lock:
                self._receivers[id(receiver)] = (receiver, set())
        return receiver

    def recv_capture_v2(
        self,
        receiver: Any,
        timeout_in_ms: int,
        want_video: bool = True,
        want_audio: bool = True,
        want_metadata: bool = True,
    ) -> tuple[Any, Any, Any, Any]:
        if want_audio or want_metadata:
            kinds = (("audio", want_audio), ("metadata", want_metadata))
            asked = [kind for kind, wanted in kinds if wanted]
            self.violate(f"recv_capture_v2 asks NDI for {' and '.join(asked)} frames")
        kind, video, audio, metadata = self._real.recv_capture_v2(
            receiver, timeout_in_ms, want_video, want_audio, want_metadata
        )
        with self._lock:
            self.counts.captures += 1
            self.counts.audio_captured += audio is not None
            self.counts.metadata_captured += metadata is not None
            if video is None:
                return kind, video, audio, metadata
            self.counts.video_captured += 1
            entry = self._receivers.get(id(receiver))
            if entry is None:
                self.violate("recv_capture_v2 on a receiver this wrapper did not create")
            captured = CapturedFrame(self, receiver, video)
            self._frames[id(captured)] = captured
            if entry is not None:
                entry[1].add(id(captured))
        return kind, captured, audio, metadata

    def recv_free_video_v2(self, receiver: Any, video: Any = None) -> None:
        with self._lock:
            if not isinstance(video, CapturedFrame):
                self.violate(f"recv_free_video_v2 of {type(video).__name__}, not a captured frame")
                return
            if object.__getattribute__(video, "_freed"):
                self.violate("recv_free_video_v2 of a frame already freed")
                return
            if object.__getattribute__(video, "_receiver") is not receiver:
                self.violate("recv_free_video_v2 on another receiver than the one that captured")
                return
            object.__setattr__(video, "_freed", True)
            del self._frames[id(video)]
            self._receivers[id(receiver)][1].discard(id(video))
            self.counts.video_freed += 1
        self._real.recv_free_video_v2(receiver, object.__getattribute__(video, "_frame"))

    def recv_destroy(self, receiver: Any) -> None:
        with self._lock:
            _, owed = self._receivers.pop(id(receiver), (None, set()))
            if owed:
                self.violate(f"recv_destroy with {len(owed)} captured frame(s) never freed")
            self.counts.receivers_destroyed += 1
        self._real.recv_destroy(receiver)

    def unfreed(self) -> int:
        """Captured frames not freed yet, on every receiver."""
        with self._lock:
            return len(self._frames)

    # -- sending ----------------------------------------------------------------------------

    def _frame_class(self, real_class: type) -> type:
        wrapper = self
        data = real_class.data  # type: ignore[attr-defined]

        class VideoFrameV2(real_class):  # type: ignore[valid-type, misc]
            """The real ``VideoFrameV2``; remembers the array its ``data`` points at."""

            @property
            def data(self) -> Any:
                return data.fget(self)

            @data.setter
            def data(self, array: Any) -> None:
                if wrapper._sending(self):
                    wrapper.violate("VideoFrameV2.data given a new array while NDI may read it")
                data.fset(self, array)
                self._array = weakref.ref(array) if isinstance(array, np.ndarray) else _none

        return VideoFrameV2

    def _sending(self, frame: object) -> bool:
        with self._lock:
            return any(flight.frame() is frame for flight in self._in_flight.values())

    def _fingerprint(self, frame: Any) -> tuple[object, ...]:
        array = frame._array() if hasattr(frame, "_array") else None
        digest = None
        if array is not None:
            digest = hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16).digest()
        numbers = (frame.xres, frame.yres, int(frame.FourCC), frame.line_stride_in_bytes)
        return (*numbers, digest)

    def _synchronise(self, sender: Any, event: str) -> None:
        """NDI is done with the previous async frame of ``sender``: check it was left alone."""
        flight = self._in_flight.pop(id(sender), None)
        if flight is None or flight.frame is None:
            return
        frame = flight.frame()
        if frame is None or (flight.array is not None and flight.array() is None):
            return  # already recorded by the weak reference's callback
        if self._fingerprint(frame) != flight.fingerprint:
            self.violate(f"a frame sent asynchronously was changed before {event}")
        self.counts.in_flight_checked += 1

    def _watch(self, sender: Any, frame: Any) -> None:
        """Note ``frame`` as the one NDI may read for ``sender`` until the next sync call."""
        key = id(sender)
        flight = _InFlight(self._fingerprint(frame))

        def dropped(what: str) -> Any:
            def callback(_: object) -> None:
                if self._in_flight.get(key) is flight:
                    self.violate(f"{what} of an async send collected while NDI may read it")

            return callback

        array = frame._array()
        flight.frame = weakref.ref(frame, dropped("the VideoFrameV2"))
        flight.array = None if array is None else weakref.ref(array, dropped("the buffer"))
        self._in_flight[key] = flight

    def send_create(self, *args: Any, **kwargs: Any) -> Any:
        sender = self._real.send_create(*args, **kwargs)
        if sender is not None:
            with self._lock:
                self._senders[id(sender)] = sender
        return sender

    def send_send_video_async_v2(self, sender: Any, video_data: Any) -> None:
        with self._lock:
            self._synchronise(sender, "the next send")
            if video_data is None:
                self.counts.flushes += 1
            else:
                self.counts.async_sends += 1
                if not isinstance(video_data, self.VideoFrameV2) or not hasattr(
                    video_data, "_array"
                ):
                    self.violate("async send of a frame whose buffer this wrapper cannot follow")
                else:
                    self._watch(sender, video_data)
        self._real.send_send_video_async_v2(sender, video_data)

    def send_send_video_v2(self, sender: Any, video_data: Any) -> None:
        with self._lock:
            self._synchronise(sender, "a synchronous send")
            self.counts.sync_sends += 1
        self._real.send_send_video_v2(sender, video_data)

    def send_destroy(self, sender: Any) -> None:
        with self._lock:
            self._synchronise(sender, "send_destroy")
            self._senders.pop(id(sender), None)
            self.counts.senders_destroyed += 1
        self._real.send_destroy(sender)

    def in_flight(self) -> int:
        """Async frames that no synchronising call has released yet."""
        with self._lock:
            return len(self._in_flight)


@contextmanager
def counting_ndi() -> Iterator[CountingNdi]:
    """Put a :class:`CountingNdi` over the real NDIlib in ``sys.modules`` for the block."""
    import NDIlib

    real = sys.modules["NDIlib"]
    wrapper = CountingNdi(NDIlib)
    sys.modules["NDIlib"] = wrapper
    try:
        yield wrapper
    finally:
        sys.modules["NDIlib"] = real
