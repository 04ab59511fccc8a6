"""Spout sources and sinks (Windows) through SpoutGL 0.1.1, imported on first use.

Written against the library's source, not run on this project's Linux machines (there it is
tested through ``tests/spoutgl_fake.py``, a contract fake built from the same reading).
What was read: jlai/Python-SpoutGL at tag v0.1.1, its binding ``src/PySpoutGL.cpp`` and the
Spout SDK it vendors (``vendor/SpoutGL``, the same files as leadedge/Spout2 tag 2.007.014
``SPOUTSDK/SpoutGL``). What shaped this module:

* **The binding.** ``receiveImage(buffer, format, invert, fbo)`` raises ``BufferError`` when
  the buffer is smaller than ``GetSenderWidth() * GetSenderHeight()`` (the size known
  *before* the call) and passes ``None`` on as a null pointer. ``sendImage`` labels its
  integers ``height, width`` but hands the first to ``SendImage`` as the width (its own
  ``tests/test.py`` passes the width first, and so do we). ``getSenderName`` is bound to
  ``GetSenderWidth``: never used. ``createOpenGL``/``closeOpenGL`` are ``spoutGL::
  CreateOpenGL``/``CloseOpenGL``; ``getActiveSender`` returns ``None`` when there is none.
* **OpenGL context and Spout's start** (``SpoutGL.cpp``). ``OpenSpout``, run by the first
  receive or send of each object, fails when DirectX 11 cannot start, when no OpenGL
  context is current on the *calling* thread ("Cannot get GL device context") or when the
  OpenGL extensions Spout needs do not load. ``CreateOpenGL`` makes a hidden window and
  context current on the calling thread (or uses the one there) and returns false when the
  extensions do not load, keeping the context it made; ``CloseOpenGL`` must run on that
  thread (``wglDeleteContext`` refuses a context current in another thread, Win32's
  ``DestroyWindow`` another thread's window). ``CleanupGL``, run by ``ReleaseReceiver``,
  ``ReleaseSender`` and ``~spoutGL``, deletes OpenGL objects only with a context current.
* **Receiving** (``Spout.cpp``). ``ReceiveSenderData`` takes the *active* sender when no
  name is set, and ``SpoutSenderNames.cpp`` ``RegisterSenderName`` makes every newly
  registered sender the active one, so our own sink becomes "the active sender" as it
  starts. ``ReceiveImage`` returns true *without reading* on a new sender or size (it sets
  the update flag), and again on every call until ``IsUpdated()`` is called; it returns
  false both when the sender is gone and when ``OpenSpout`` fails.
* **The PBO ring** (``SpoutGL.cpp`` ``ReadGLDXpixels``/``UnloadTexturePixels``/
  ``CleanupGL``). Pixels come back through a ring of pixel buffer objects, one frame late.
  The first read of a new ring maps a buffer never filled ("glMapBuffer can return NULL ...
  skip the copy rather than return false") while ``ReceiveImage`` still returns true and
  ``IsFrameNew`` says new. ``ReleaseReceiver`` deletes the ring (2.007h left it), and so does
  every change of sender or size, which runs ``ReleaseReceiver`` inside ``ReceiveSenderData``.
* **Frame counting** (``SpoutFrameCount.cpp`` ``GetNewFrame``). With counting off in
  SpoutSettings every receive reads and ``IsFrameNew`` stays true. With it on, a sender that
  does not count frames (a 2.006 sender, an app that disables counting) leaves the receiver
  a count of 0, and ``GetNewFrame`` then reports "new" on every call.

How this module copes:

* **OpenGL context per thread.** Nothing Spout is made where the source or sink is built.
  The first read (the engine's capture thread) or first publish (its publish thread) makes a
  hidden context there with ``createOpenGL`` (on a helper ``SpoutReceiver``, so the context
  is independent of the objects that use it), then the receiver or sender, under that
  context. Everything made on a thread is released on that thread, then the context closed:
  at ``close()`` when ``close()`` runs there; otherwise (``close()`` from another thread,
  as the engine's owner does after joining its threads) at that thread's next call into
  this module, or when the thread ends (CPython clears a finished thread's
  ``threading.local`` on that thread). Another thread never touches the objects.
* **Spout that cannot start is said so.** A failed ``createOpenGL`` names the OpenGL
  context or extensions; a receive that fails while the sender is still listed names
  ``OpenSpout`` (DirectX 11, OpenGL extensions) instead of reporting the sender closed; a
  sender's first send that fails names it too.
* **No garbage frames.** Each receive goes into a fresh buffer in which a fixed pseudo-random
  pattern is written at 64 spread-out byte positions. Spout writes a frame whole or not at
  all, so a buffer whose pattern is intact was not written, whatever ``receiveImage`` and
  ``isFrameNew`` said: it is never delivered. That is also all a (re)connection needs: the
  ring that held the previous sender's pictures is gone, so nothing from before can come.
* **Frame rate of senders that do not count frames.** Whenever Spout cannot tell new frames
  from old (counting off, or the sender's count stays 0) delivery is capped at ``fps``.
* **Never our own output.** ``spout://`` takes the active sender, but this module picks it
  itself, skipping every sender name this process's sinks registered (and
  ``livediffusion``, the default sink name), then pins the receiver to that name, as Spout's
  own receivers stay with the sender they connected to until it closes. Named targets are
  taken as given (a loopback check names our own sender on purpose); ``?own=1`` lets
  ``spout://`` take ours too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from ._base import LiveSink, LiveSource, SourceLost
from ._listing import SourceInfo
from ._options import Options
from .errors import BackendUnavailableError, SourceNotFoundError, TransportError
from .frame import Frame, Pixels
from .uri import SourceURI

__all__ = [
    "DEFAULT_SENDER_NAME",
    "SpoutSink",
    "SpoutSource",
    "list_sources",
    "open_sink",
    "open_source",
    "own_senders",
    "pick_sender",
]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "livediffusion[windows]"'
DEFAULT_SENDER_NAME = "livediffusion"
_PROBES = 64
_PATTERN = np.random.default_rng(0x5B0D7).integers(1, 255, size=_PROBES, dtype=np.uint8)
"""What a buffer holds at its probe positions until Spout writes a frame into it."""


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


# -- our own senders -------------------------------------------------------------------------

_own_lock = threading.Lock()
_OWN_SENDERS: set[str] = {DEFAULT_SENDER_NAME}
"""Every sender name this process's sinks asked for or got, kept after they stop."""


def own_senders() -> frozenset[str]:
    """Sender names ``spout://`` never receives from: ours, and the default sink name."""
    with _own_lock:
        return frozenset(_OWN_SENDERS)


def _remember_own(name: str) -> None:
    with _own_lock:
        _OWN_SENDERS.add(name)


def pick_sender(
    names: Sequence[str], active: str | None, target: str, own: Collection[str] = ()
) -> str | None:
    """The sender to receive from: ``target`` if it is listed; for an empty target the
    active sender, or else the first listed, leaving out the names in ``own``."""
    if target:
        return target if target in names else None
    others = [name for name in names if name not in own]
    if active is not None and active in others:
        return active
    return others[0] if others else None


def _sender_state(spout: Any) -> tuple[list[str], str | None]:
    """The listed sender names and the active one. Shared memory only: no OpenGL needed."""
    receiver = spout.SpoutReceiver()
    names = [str(name) for name in receiver.getSenderList()]
    active = receiver.getActiveSender()
    return names, None if active is None else str(active)


def list_sources(timeout: float) -> list[SourceInfo]:
    del timeout  # Spout's sender list is shared memory: it answers at once
    spout = _load()
    names, _ = _sender_state(spout)
    return [
        SourceInfo(uri=str(SourceURI("spout", name)), kind="spout", name=name) for name in names
    ]


# -- one OpenGL context per thread ----------------------------------------------------------


class _Owned:
    """A SpoutGL object made under one thread's context; ``obj`` is None once released."""

    __slots__ = ("gl", "obj", "release")

    def __init__(self, gl: _ThreadGL, obj: Any, release: str) -> None:
        self.gl = gl
        self.obj: Any = obj
        self.release = release


class _ThreadGL:
    """The hidden OpenGL context of one thread and the Spout objects made under it.

    Only this thread calls the objects. Another thread that is done with one hands it over
    (:meth:`give_up`); this thread releases it at its next call into the module, or as it
    ends. The context closes when nothing made under it is left.
    """

    _local = threading.local()

    def __init__(self, spout: Any) -> None:
        self.spout = spout
        self.ident = threading.get_ident()
        self.thread_name = threading.current_thread().name
        self.closed = False
        self._lock = threading.Lock()
        self._owned: list[_Owned] = []
        self._given_up: list[_Owned] = []
        holder = spout.SpoutReceiver()
        # spoutGL::CreateOpenGL: a hidden window and context, current on this thread (or
        # nothing, when the thread already has a context of its own), then the extensions.
        if not holder.createOpenGL():
            # It may have made the context before the extensions failed: release it here.
            with contextlib.suppress(Exception):
                holder.closeOpenGL()
            raise TransportError(
                f"Spout could not set up OpenGL on thread {self.thread_name!r}: SpoutGL "
                "createOpenGL failed (no OpenGL context could be made, or the OpenGL "
                "extensions Spout needs did not load: is the graphics driver installed, "
                "and is this a desktop session?)"
            )
        self._holder: Any = holder

    @classmethod
    def here(cls, spout: Any) -> _ThreadGL:
        """This thread's context, made now if it has none; runs releases left for it."""
        gl: _ThreadGL | None = getattr(cls._local, "gl", None)
        if gl is not None and not gl.closed:
            gl.sweep()
        if gl is None or gl.closed or gl.spout is not spout:  # (another module: tests)
            gl = cls(spout)
            cls._local.gl = gl
            cls._local.watch = _ThreadEnd(gl)  # only this thread's locals hold it
        return gl

    @classmethod
    def sweep_here(cls) -> None:
        gl: _ThreadGL | None = getattr(cls._local, "gl", None)
        if gl is not None and not gl.closed:
            gl.sweep()

    def is_here(self) -> bool:
        return not self.closed and threading.get_ident() == self.ident

    def make(self, factory: Callable[[], Any], release: str) -> _Owned:
        """Make a Spout object under this context; ``release`` names its release method."""
        owned = _Owned(self, factory(), release)
        with self._lock:
            self._owned.append(owned)
        return owned

    def give_up(self, owned: _Owned) -> None:
        """Release ``owned`` now on this thread, or leave it for this thread to release."""
        if self.is_here():
            self._release(owned)
            self._close_if_unused()
            return
        with self._lock:
            if not self.closed and owned in self._owned and owned not in self._given_up:
                self._given_up.append(owned)

    def sweep(self) -> None:
        """On this thread: release what other threads gave up."""
        with self._lock:
            given_up, self._given_up = self._given_up, []
        if given_up:
            for owned in given_up:
                self._release(owned)
            self._close_if_unused()

    def end(self) -> None:
        """On this thread, as it ends: release everything made here, then the context."""
        if self.closed:
            return
        with self._lock:
            owned, self._given_up = list(self._owned), []
        for item in owned:
            self._release(item)
        self._close()

    def _release(self, owned: _Owned) -> None:
        with self._lock:
            if owned not in self._owned:
                return
            self._owned.remove(owned)
        obj, owned.obj = owned.obj, None
        try:
            getattr(obj, owned.release)()
        except Exception:
            log.exception("Spout: %s failed", owned.release)
        # The last reference goes here, so the destructor (spoutGL::~spoutGL, CleanupGL)
        # runs on this thread with the context still current.
        del obj

    def _close_if_unused(self) -> None:
        with self._lock:
            unused = not self._owned
        if unused:
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        holder, self._holder = self._holder, None
        try:
            if not holder.closeOpenGL():
                log.warning("Spout: closing the OpenGL context of %r failed", self.thread_name)
        except Exception:
            log.exception("Spout: closing the OpenGL context of %r failed", self.thread_name)
        del holder


class _ThreadEnd:
    """Lives only in one thread's ``threading.local``: CPython drops that on the thread as
    it finishes, so ``__del__`` releases the thread's Spout objects and context there."""

    def __init__(self, gl: _ThreadGL) -> None:
        self.gl = gl

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # may run at interpreter exit
            self.gl.end()


# -- the garbage-frame rule -----------------------------------------------------------------

_probe_cache: dict[int, np.ndarray] = {}


def _probes(size: int) -> np.ndarray:
    index = _probe_cache.get(size)
    if index is None:
        index = np.unique(np.linspace(0, size - 1, min(size, _PROBES)).astype(np.intp))
        _probe_cache[size] = index
    return index


def _arm(buffer: Pixels) -> Pixels:
    """Write the pattern at the probe positions: the marks of a buffer Spout did not write."""
    flat = buffer.reshape(-1)
    index = _probes(flat.size)
    flat[index] = _PATTERN[: index.size]
    return buffer


def _untouched(buffer: Pixels) -> bool:
    flat = buffer.reshape(-1)
    index = _probes(flat.size)
    return bool(np.array_equal(flat[index], _PATTERN[: index.size]))


def _fresh(height: int, width: int) -> Pixels:
    return _arm(np.empty((height, width, 4), dtype=np.uint8))


# -- source --------------------------------------------------------------------------------


def _cannot_read(name: str) -> str:
    """Why a receive fails while the sender is still listed: Spout's start, not the sender."""
    return (
        f"Spout cannot read sender {name!r} although it is there: OpenSpout failed "
        "(DirectX 11 could not start, or the OpenGL extensions Spout needs are missing), "
        "or the sender's texture format is one Spout cannot share"
    )


def open_source(uri: SourceURI) -> SpoutSource:
    options = Options(uri, role="source")
    wait = options.number("wait", 0.0, minimum=0.0, maximum=600.0)
    fps = options.rate("fps", 60.0)
    flip = options.flag("flip", False)
    invert = options.flag("invert", False)  # the earlier name of flip
    own = options.flag("own", False)
    options.finish()
    return SpoutSource(
        str(uri), target=uri.target.strip(), wait=wait, flip=flip or invert, fps=fps, own=own
    )


class SpoutSource(LiveSource):
    """Receives from one Spout sender (``spout://NAME``) or the active one (``spout://``),
    never our own output in the latter case (unless ``own``).

    The receiver and its OpenGL context are made on the reading thread, at the first read.
    ``flip`` turns pictures upside down (OpenGL senders may send them that way). When Spout
    cannot tell new frames from old (frame counting off in SpoutSettings, or a sender that
    counts no frames: its count stays 0), delivery is capped at ``fps``. A sender that quits
    is waited for and picked up again when it returns, at any size. When Spout itself cannot
    start (no DirectX 11, no OpenGL extensions) the source keeps waiting and says why once.
    """

    def __init__(
        self,
        uri: str,
        *,
        target: str,
        wait: float = 0.0,
        flip: bool = False,
        fps: float = 60.0,
        own: bool = False,
    ) -> None:
        super().__init__(uri, describe=f"Spout sender {target!r}" if target else "any Spout sender")
        self._spout = _load()
        self._format = int(self._spout.enums.GL_RGBA)
        self._target = target
        self._flip = flip
        self._period = 1.0 / fps
        self._own = own
        self._receiver: _Owned | None = None
        self._sender: str | None = None
        self._buffer: Pixels | None = None
        self._last = 0.0
        if wait > 0:
            self._wait_until_visible(wait)

    @property
    def sender(self) -> str | None:
        """The sender being received from, while connected."""
        return self._sender

    def _skip(self) -> Collection[str]:
        return () if self._own else own_senders()

    def _wait_until_visible(self, wait: float) -> None:
        """Fail at open when no matching sender appears within ``wait`` s (no receiver yet:
        that is made on the reading thread; the sender list needs no OpenGL)."""
        deadline = time.monotonic() + wait
        while True:
            names, active = _sender_state(self._spout)
            if pick_sender(names, active, self._target, self._skip()) is not None:
                return
            if time.monotonic() >= deadline:
                ours = "" if self._target or self._own else " (our own outputs never count)"
                raise SourceNotFoundError(
                    f"no {self.describe} within {wait:g} s{ours}; "
                    f"visible: {', '.join(names) or 'none'}"
                )
            time.sleep(0.05)

    def read(self, timeout: float) -> Frame | None:
        if self._closed.is_set():
            _ThreadGL.sweep_here()  # release what close() left for this thread, then say so
        return super().read(timeout)

    def _connect(self) -> bool:
        gl = _ThreadGL.here(self._spout)
        owned = self._receiver
        if owned is None or owned.obj is None or not owned.gl.is_here():
            if owned is not None:
                owned.gl.give_up(owned)  # made by an earlier reading thread
            owned = self._receiver = gl.make(self._spout.SpoutReceiver, "releaseReceiver")
        receiver = owned.obj
        names = [str(name) for name in receiver.getSenderList()]
        active = receiver.getActiveSender()
        chosen = pick_sender(
            names, None if active is None else str(active), self._target, self._skip()
        )
        if chosen is None:
            return False
        # Pinned by name: Spout's own "active sender" choice could be our output.
        receiver.setReceiverName(chosen)
        # The first receive runs OpenSpout and finds the sender (it reads nothing yet).
        if not receiver.receiveImage(None, self._format, self._flip, 0):
            if self._listed(receiver, chosen):
                raise TransportError(_cannot_read(chosen))
            return False  # gone again since it was listed
        self._sender = chosen
        self._buffer = None
        log.info("Spout: receiving %r", chosen)
        return True

    def _grab(self, deadline: float) -> Frame | None:
        del deadline  # one receive: it never blocks
        owned = self._receiver
        if owned is None or owned.obj is None or not owned.gl.is_here():
            raise SourceLost("reading moved to another thread; connecting again on this one")
        receiver = owned.obj
        buffer = self._buffer
        if not receiver.receiveImage(buffer, self._format, self._flip, 0):
            name = str(self._sender)
            if self._listed(receiver, name):
                raise SourceLost(_cannot_read(name))
            raise SourceLost(f"Spout sender {name!r} closed")
        if receiver.isUpdated() or buffer is None:
            # A new sender or size: this receive read nothing (Spout.cpp ReceiveImage).
            width, height = int(receiver.getSenderWidth()), int(receiver.getSenderHeight())
            self._buffer = _fresh(height, width) if width > 0 and height > 0 else None
            return None
        if not receiver.isFrameNew():
            return None  # nothing read (ReadGLDXpixels returns before reading)
        if _untouched(buffer):
            return None  # "new" but not written: a new ring's empty PBO
        # Counting off, or a sender whose count stays 0: every receive says "new".
        uncounted = not receiver.isFrameCountEnabled() or int(receiver.getSenderFrame()) == 0
        now = time.monotonic()
        if uncounted and now - self._last < self._period:
            _arm(buffer)  # written, but not delivered: mark it unwritten again
            return None
        self._last = now
        self._buffer = _fresh(*buffer.shape[:2])
        return Frame(buffer, time.monotonic())

    @staticmethod
    def _listed(receiver: Any, name: str) -> bool:
        """Whether ``name`` is still in Spout's sender list (shared memory, no OpenGL)."""
        return name in {str(listed) for listed in receiver.getSenderList()}

    def _disconnect(self) -> None:
        self._sender = None
        self._buffer = None
        owned = self._receiver
        if owned is not None and owned.obj is not None and owned.gl.is_here():
            owned.obj.releaseReceiver()  # ready to connect again; keeps the context
        # From another thread (close()): _shutdown hands the receiver to its own thread.

    def _shutdown(self) -> None:
        owned, self._receiver = self._receiver, None
        if owned is not None:
            owned.gl.give_up(owned)


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> SpoutSink:
    options = Options(uri, role="sink")
    flip = options.flag("flip", False)
    invert = options.flag("invert", False)  # the earlier name of flip
    options.finish()
    _load()
    return SpoutSink(str(uri), name=uri.target.strip() or DEFAULT_SENDER_NAME, flip=flip or invert)


class SpoutSink(LiveSink):
    """A Spout sender called ``name``, made on the publishing thread at the first frame.

    ``sendImage`` uploads synchronously, so the caller may reuse its buffer afterwards.
    Row 0 is the top of the picture; ``flip`` turns it upside down for hosts that disagree.
    Spout registers a name that is taken as ``name_1``, ``name_2``...: :attr:`sender_name`
    says which it got. Every name is recorded so that ``spout://`` sources never read it.
    """

    def __init__(self, uri: str, *, name: str, flip: bool = False) -> None:
        super().__init__(uri)
        self.name = name
        self.sender_name: str | None = None
        self._flip = flip
        self._spout = _load()
        self._format = int(self._spout.enums.GL_RGBA)
        self._sender: _Owned | None = None
        self._listed_before: set[str] | None = None
        _remember_own(name)

    def publish(self, pixels: Pixels) -> None:
        if self.closed:
            _ThreadGL.sweep_here()  # release what close() left for this thread, then say so
        super().publish(pixels)

    def _create(self, width: int, height: int) -> None:
        gl = _ThreadGL.here(self._spout)
        owned = self._sender
        if owned is None or owned.obj is None or not owned.gl.is_here():
            if owned is not None:
                owned.gl.give_up(owned)  # made by an earlier publishing thread
            owned = self._sender = gl.make(self._spout.SpoutSender, "releaseSender")
        owned.obj.setSenderName(self.name)  # (again: Spout.cpp ReleaseSender clears it)
        self._listed_before = set(_sender_state(self._spout)[0])

    def _send(self, pixels: Pixels) -> None:
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        owned = self._sender
        if owned is None or owned.obj is None or not owned.gl.is_here():
            self._create(width, height)  # the publishing thread changed (or ended)
            owned = self._sender
            assert owned is not None
        # Width first, whatever the binding's parameter names say (see the module doc).
        if not owned.obj.sendImage(pixels, width, height, self._format, self._flip, 0):
            if self._listed_before is not None:  # the first send: Spout itself did not start
                raise TransportError(
                    f"Spout could not start sender {self.name!r}: OpenSpout or the shared "
                    "DirectX 11 texture failed (is DirectX 11 available, with the graphics "
                    "driver installed?)"
                )
            raise TransportError(f"Spout could not send a {width}x{height} frame as {self.name!r}")
        if self._listed_before is not None:
            self._note_registered_name(self._listed_before)
            self._listed_before = None

    @property
    def shown_as(self) -> str | None:
        name = self.sender_name
        return None if name is None else f"Spout sender {name!r}"

    def _note_registered_name(self, before: set[str]) -> None:
        """The name Spout registered: ours, or ours with ``_N`` when it was taken."""
        pattern = re.compile(re.escape(self.name) + r"(_\d+)?")
        names, _ = _sender_state(self._spout)
        new = [name for name in names if name not in before and pattern.fullmatch(name)]
        self.sender_name = new[0] if new else self.name
        _remember_own(self.sender_name)
        if self.sender_name != self.name:
            log.warning("Spout: %r was taken; sending as %r", self.name, self.sender_name)

    def _destroy(self) -> None:
        # A new size (or close() on this thread): release the sender; keep the object and
        # the context for the next size. close() gives the object up below.
        owned = self._sender
        if owned is not None and owned.obj is not None and owned.gl.is_here():
            owned.obj.releaseSender()
        self.sender_name = None

    def close(self) -> None:
        super().close()
        with self._lock:
            owned, self._sender = self._sender, None
        if owned is not None:
            owned.gl.give_up(owned)
