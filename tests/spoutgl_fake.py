"""A contract fake of SpoutGL (Python-SpoutGL 0.1.x on Spout 2.007), for Linux tests.

Spout runs only on Windows, with a graphics driver, so Linux CI cannot run it. This fake
stands in for the ``SpoutGL`` module and enforces what the real one demands, read from
jlai/Python-SpoutGL ``src/PySpoutGL.cpp`` (the binding) and leadedge/Spout2
``SPOUTSDK/SpoutGL`` (``SpoutGL.cpp``, ``Spout.cpp``, ``SpoutSenderNames.cpp``,
``SpoutFrameCount.cpp``). Where Spout versions differ, it takes the stricter side.

OpenGL context (``SpoutGL.cpp``: ``OpenSpout``, ``CreateOpenGL``, ``CloseOpenGL``):

* ``receiveImage``, ``sendImage`` and the releases of an object that holds OpenGL objects
  need a context *current on the calling thread*. Without one the call fails as the real one
  does (``False``; a release leaks) and the misuse is recorded in :attr:`World.violations`,
  which the tests' fixtures turn into a failure.
* ``createOpenGL`` makes a context current on the calling thread and owned by that object,
  or does nothing when the thread has one already. ``closeOpenGL`` from another thread than
  the one that made the context fails and is recorded (``wglDeleteContext``/
  ``DestroyWindow`` refuse). Contexts never closed are listed by :meth:`World.open_contexts`.
* A destructor of an object that holds OpenGL objects needs a context too (``~spoutGL`` ->
  ``CleanupGL``): an object that still holds them, collected elsewhere, is recorded.

Receiving (``Spout.cpp`` ``ReceiveImage``/``ReceiveSenderData``/``IsUpdated``, 2.007.014):

* With no receiver name, the active sender is taken; a new sender, share handle or size sets
  the update flag and returns ``True`` without touching the buffer, and every call returns
  ``True`` without touching it until ``isUpdated()`` is called. A missing sender releases the
  receiver and returns ``False``.
* ``isFrameNew`` is a flag kept across releases (true by default); with frame counting on it
  turns false when the sender has not sent since the last read, and then nothing is read.
* Pixels come through a ring of ``pbo_buffers`` pixel buffer objects (``UnloadTexturePixels``):
  each read returns the picture of the read before it; the first ``pbo_buffers - 1`` reads
  after the ring is made write nothing, a size change deletes the ring and writes nothing,
  all while reporting a new frame. The ring survives ``releaseReceiver`` (2.007h left the
  OpenGL objects alone there), so after a reconnect at the same size the first written
  picture is from before.

Binding (``PySpoutGL.cpp``): a buffer smaller than the sender's known size raises
``BufferError``; ``sendImage(buffer, a, b, ...)`` reads the buffer as ``b`` rows of ``a``
pixels (the parameter names say height, width); ``getSenderName`` returns the *width*.

Senders (``SpoutSenderNames.cpp``): a sender registers at its first ``sendImage`` under its
name, or ``name_1``, ``name_2``... when that is taken, and becomes the active sender; when the
active sender goes, the first remaining name (sorted, a ``std::set``) becomes active. A new
size gets a new share handle. ``releaseSender`` forgets the name set with ``setSenderName``.

Tests drive the world outside the rules, as other processes would: :meth:`World.sender`
is an external sender (send, vanish, come back at another size), :meth:`World.latest` and
:meth:`World.sent` read what a sender published.
"""

from __future__ import annotations

import itertools
import threading
import types
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

GL_RGB = 0x1907
GL_RGBA = 0x1908
GL_BGR_EXT = 0x80E0
GL_BGRA_EXT = 0x80E1
_CHANNELS = {GL_RGBA: 4, GL_BGRA_EXT: 4, GL_RGB: 3, GL_BGR_EXT: 3}


def _bytes_per_pixel(gl_format: int) -> int:
    if gl_format not in _CHANNELS:  # PySpoutGL.cpp getBytesPerPixel: std::invalid_argument
        raise ValueError("Unknown GL format")
    return _CHANNELS[gl_format]


def _to_rgba(raw: np.ndarray, gl_format: int) -> np.ndarray:
    height, width = raw.shape[:2]
    rgba = np.full((height, width, 4), 255, dtype=np.uint8)
    order = (2, 1, 0) if gl_format in (GL_BGRA_EXT, GL_BGR_EXT) else (0, 1, 2)
    rgba[..., :3] = raw[..., order]
    if raw.shape[2] == 4:
        rgba[..., 3] = raw[..., 3]
    return rgba


def _from_rgba(rgba: np.ndarray, gl_format: int) -> np.ndarray:
    order = [2, 1, 0] if gl_format in (GL_BGRA_EXT, GL_BGR_EXT) else [0, 1, 2]
    if _CHANNELS[gl_format] == 4:
        order.append(3)
    return np.ascontiguousarray(rgba[..., order])


def _view(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise BufferError("Buffer must be contiguous")
    return view


@dataclass
class Texture:
    """One sender as other processes see it: name, size, share handle, last frame."""

    name: str
    width: int
    height: int
    handle: int
    pixels: np.ndarray
    frame: int = 0


@dataclass(eq=False)
class Context:
    """One hidden OpenGL context, current on the thread that made it."""

    owner: str
    thread: threading.Thread
    ident: int

    def __str__(self) -> str:
        state = "running" if self.thread.is_alive() else "ended"
        return f"{self.owner} on thread {self.thread.name!r} ({state})"


class World:
    """Spout's shared memory (sender names, active sender, textures) and the OpenGL contexts
    of this process's threads."""

    def __init__(self, *, pbo_buffers: int = 2, frame_counting: bool = True) -> None:
        self.lock = threading.RLock()
        self.pbo_buffers = pbo_buffers
        self.frame_counting = frame_counting
        self.textures: dict[str, Texture] = {}
        self.active: str | None = None
        self.contexts: dict[int, Context] = {}  # thread ident -> its current context
        self.violations: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (method, thread name)
        self._handles = itertools.count(0x1000, 4)
        self._names: dict[int, str] = {}
        self._history: dict[str, list[np.ndarray]] = {}

    # -- rules ---------------------------------------------------------------------------

    def thread_name(self) -> str:
        """The calling thread's name, also while it ends (no longer listed by threading,
        whose ``current_thread()`` would then invent a "Dummy" thread)."""
        ident = threading.get_ident()
        with self.lock:
            for thread in threading.enumerate():
                if thread.ident == ident:
                    self._names[ident] = thread.name
                    break
            return self._names.get(ident, f"<thread {ident}>")

    def record(self, method: str) -> None:
        name = self.thread_name()
        with self.lock:
            self.calls.append((method, name))

    def violate(self, message: str) -> None:
        name = self.thread_name()
        with self.lock:
            self.violations.append(f"{message} [thread {name!r}]")

    def has_context(self) -> bool:
        with self.lock:
            return threading.get_ident() in self.contexts

    def need_context(self, what: str) -> bool:
        if self.has_context():
            return True
        self.violate(f"{what} with no OpenGL context current on this thread")
        return False

    def open_contexts(self) -> list[str]:
        with self.lock:
            return [str(context) for context in self.contexts.values()]

    def threads_of(self, *methods: str) -> set[str]:
        with self.lock:
            return {thread for method, thread in self.calls if method in methods}

    # -- shared memory -------------------------------------------------------------------

    def register(self, name: str, width: int, height: int) -> Texture:
        with self.lock:
            taken, number = name, 0
            while taken in self.textures:  # SpoutSenderNames: name, name_1, name_2 ...
                number += 1
                taken = f"{name}_{number}"
            texture = Texture(
                taken, width, height, next(self._handles), np.zeros((height, width, 4), np.uint8)
            )
            self.textures[taken] = texture
            self.active = taken  # RegisterSenderName: the newest sender is the active one
            return texture

    def resize(self, texture: Texture, width: int, height: int) -> None:
        with self.lock:
            texture.width, texture.height = width, height
            texture.handle = next(self._handles)  # a new shared texture, a new handle
            texture.pixels = np.zeros((height, width, 4), np.uint8)

    def unregister(self, name: str) -> None:
        with self.lock:
            if self.textures.pop(name, None) is not None and self.active == name:
                self.active = min(self.textures) if self.textures else None

    def write(self, texture: Texture, rgba: np.ndarray) -> None:
        with self.lock:
            texture.pixels = rgba.copy()
            texture.frame += 1
            self._history.setdefault(texture.name, []).append(texture.pixels)

    # -- for tests: other processes -------------------------------------------------------

    def sender(self, name: str) -> ExternalSender:
        """A sender in another process: no OpenGL rules apply to it."""
        return ExternalSender(self, name)

    def latest(self, name: str) -> np.ndarray | None:
        """The last frame a sender published (RGBA, row 0 at the top), or None."""
        with self.lock:
            texture = self.textures.get(name)
            return None if texture is None or texture.frame == 0 else texture.pixels.copy()

    def sent(self, name: str) -> list[np.ndarray]:
        """Every frame ever published under ``name``, by any sender, at any size."""
        with self.lock:
            return list(self._history.get(name, []))

    def problems(self) -> list[str]:
        """Misuse recorded so far, and contexts never closed: empty after clean use."""
        with self.lock:
            return [*self.violations, *(f"context never closed: {c}" for c in self.open_contexts())]


class ExternalSender:
    """Another process's sender: registers at its first frame, can vanish and come back."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.texture: Texture | None = None

    def send(self, pixels: np.ndarray) -> None:
        height, width = pixels.shape[:2]
        with self.world.lock:
            if self.texture is None:
                self.texture = self.world.register(self.name, width, height)
            elif (self.texture.width, self.texture.height) != (width, height):
                self.world.resize(self.texture, width, height)
            self.world.write(self.texture, pixels)

    def close(self) -> None:
        if self.texture is not None:
            self.world.unregister(self.texture.name)
            self.texture = None


class _SpoutGLObject:
    """What ``addCommonDefs`` binds on both classes (``spoutGL`` and ``spoutSenderNames``)."""

    _world: World

    def __init__(self) -> None:
        self._context: Context | None = None
        self._holds_gl = False  # OpenGL objects made under a context (interop, PBOs, fbo)

    def createOpenGL(self) -> bool:
        world = self._world
        world.record("createOpenGL")
        with world.lock:
            if threading.get_ident() in world.contexts:
                return True  # "OpenGL context exists": nothing made, nothing owned
            thread = threading.current_thread()
            context = Context(type(self).__name__, thread, threading.get_ident())
            world.contexts[context.ident] = context
            self._context = context
            return True

    def closeOpenGL(self) -> bool:
        world = self._world
        world.record("closeOpenGL")
        context = self._context
        if context is None:
            return True
        if context.ident != threading.get_ident():
            world.violate(
                f"closeOpenGL of a context made on thread {context.thread.name!r}: "
                "wglDeleteContext and DestroyWindow refuse another thread's context and window"
            )
            return False
        with world.lock:
            if world.contexts.get(context.ident) is context:
                del world.contexts[context.ident]
        self._context = None
        return True

    def getActiveSender(self) -> str | None:
        with self._world.lock:
            return self._world.active

    def setActiveSender(self, name: str) -> bool:
        with self._world.lock:
            if name not in self._world.textures:
                return False
            self._world.active = name
            return True

    def getSenderInfo(self, name: str) -> Any:
        with self._world.lock:
            texture = self._world.textures.get(name)
            if texture is None:
                return None
            return types.SimpleNamespace(name=name, width=texture.width, height=texture.height)

    def _release_gl(self, what: str) -> None:
        """CleanupInterop + CleanupGL: needs this thread's context when there is anything."""
        if self._holds_gl and not self._world.has_context():
            self._world.violate(f"{what}: OpenGL objects released with no context (they leak)")
        self._holds_gl = False

    def __del__(self) -> None:
        # ~spoutGL: CleanupGL wants the context the objects were made under.
        try:
            if self._holds_gl and not self._world.has_context():
                self._world.violate(f"{type(self).__name__} destroyed holding OpenGL objects")
        except Exception:  # at interpreter exit
            pass

    def __enter__(self) -> Any:
        return self


class SpoutReceiver(_SpoutGLObject):
    def __init__(self) -> None:
        super().__init__()
        self._setup_name = ""  # m_SenderNameSetup
        self._name = ""  # m_SenderName: the connected sender
        self._handle = 0
        self._width = 0
        self._height = 0
        self._initialized = False
        self._connected = False
        self._updated = False
        self._new_frame = True  # SpoutFrameCount: m_bIsNewFrame, true by default
        self._last_frame = 0
        self._ring: deque[np.ndarray | None] | None = None  # the PBOs
        self._ring_size: tuple[int, int] | None = None

    def __exit__(self, *exc: object) -> None:
        self.releaseReceiver()

    def setReceiverName(self, name: str) -> None:
        self._setup_name = self._name = name or ""

    def getSenderList(self) -> list[str]:
        with self._world.lock:
            return sorted(self._world.textures)

    def getSenderWidth(self) -> int:
        return self._width

    def getSenderHeight(self) -> int:
        return self._height

    def getSenderName(self) -> int:  # PySpoutGL.cpp binds it to GetSenderWidth
        return self._width

    def isConnected(self) -> bool:
        return self._connected

    def isUpdated(self) -> bool:
        updated, self._updated = self._updated, False
        return updated

    def isFrameNew(self) -> bool:
        return self._new_frame

    def isFrameCountEnabled(self) -> bool:
        return self._world.frame_counting

    def releaseReceiver(self) -> None:
        self._world.record("releaseReceiver")
        if not self._initialized:
            return
        self._release_gl("releaseReceiver")
        self._holds_gl = self._ring is not None  # the PBOs stay (see the module doc)
        self._reset()

    def _reset(self) -> None:
        # Spout::ReleaseReceiver; m_bIsNewFrame and the PBOs are left as they are.
        self._name = self._setup_name
        self._handle = 0
        self._width = self._height = 0
        self._initialized = False
        self._connected = False

    def receiveImage(self, buffer: Any, gl_format: int, invert: bool, host_fbo: int) -> bool:
        world = self._world
        world.record("receiveImage")
        view = None
        if buffer is not None:
            view = _view(buffer)
            if view.nbytes == 0:
                view = None  # "If empty buffer is passed in, wait for sender update"
            elif view.nbytes < self._width * self._height * _bytes_per_pixel(gl_format):
                raise BufferError("Buffer not large enough")
        if self._updated:
            return True  # "Return if flagged for update" until IsUpdated() is called
        if not world.need_context("SpoutReceiver.receiveImage (OpenSpout fails)"):
            return False
        if gl_format not in _CHANNELS:
            return False
        self._holds_gl = True
        with world.lock:
            texture = self._sender_data()
            if texture is None:
                if self._initialized:
                    self._reset()
                self._connected = False
                return False
            if self._updated:
                return True  # new sender or size: the application must reallocate
            if view is None:
                return False  # "The receiving pixel buffer is created after the first update"
            self._connected = True
            if world.frame_counting:
                if texture.frame == self._last_frame:
                    self._new_frame = False
                    return True  # ReadGLDXpixels: no new frame, nothing read
                self._last_frame = texture.frame
                self._new_frame = True
            picture = _from_rgba(texture.pixels[::-1] if invert else texture.pixels, gl_format)
        out = self._through_pbos(picture)
        if out is not None:
            target = np.frombuffer(view, dtype=np.uint8)
            target[: out.size] = out.reshape(-1)
        return True

    def _sender_data(self) -> Texture | None:
        """Spout::ReceiveSenderData: find the sender, notice a new one or a new size."""
        world = self._world
        name = self._name or world.active or ""
        texture = world.textures.get(name)
        if texture is None:
            return None
        if texture.handle != self._handle or name != self._name:
            if self._initialized:
                self._reset()
            self._name, self._handle = name, texture.handle
            self._width, self._height = texture.width, texture.height
            self._initialized = True
            self._updated = True
            self._last_frame = 0
        return texture

    def _through_pbos(self, picture: np.ndarray) -> np.ndarray | None:
        """UnloadTexturePixels: a ring of PBOs, read back one frame late."""
        size = (self._height, self._width)
        if self._ring is not None and self._ring_size != size:
            self._ring, self._ring_size = None, None  # PBO size check: delete, copy nothing
            return None
        if self._ring is None:
            self._ring = deque([None] * (self._world.pbo_buffers - 1))
            self._ring_size = size
        self._ring.append(picture)
        return self._ring.popleft()  # None: "glMapBuffer can return NULL ... skip the copy"


class SpoutSender(_SpoutGLObject):
    def __init__(self) -> None:
        super().__init__()
        self._name = ""
        self._texture: Texture | None = None

    def __exit__(self, *exc: object) -> None:
        self.releaseSender()

    def setSenderName(self, name: str) -> None:
        self._name = name

    def sendImage(
        self, buffer: Any, height: int, width: int, gl_format: int, invert: bool, host_fbo: int
    ) -> bool:
        # PySpoutGL.cpp: (…, int height, int width, …) -> SendImage(ptr, height, width, …),
        # whose parameters are (pixels, width, height, …): the first integer is the width.
        columns, rows = height, width
        world = self._world
        world.record("sendImage")
        channels = _bytes_per_pixel(gl_format)
        view = _view(buffer)
        if view.nbytes < columns * rows * channels:
            raise BufferError("Buffer not large enough")
        if columns == 0 or rows == 0:
            return False
        if not world.need_context("SpoutSender.sendImage (OpenSpout fails)"):
            return False
        self._holds_gl = True
        raw = np.frombuffer(view, dtype=np.uint8)[: columns * rows * channels]
        rgba = _to_rgba(raw.reshape(rows, columns, channels), gl_format)
        with world.lock:
            if self._texture is None or self._texture.name not in world.textures:
                self._texture = world.register(self._name or "python", columns, rows)
            elif (self._texture.width, self._texture.height) != (columns, rows):
                world.resize(self._texture, columns, rows)
            world.write(self._texture, rgba[::-1] if invert else rgba)
        return True

    def releaseSender(self) -> None:
        self._world.record("releaseSender")
        self._release_gl("releaseSender")
        if self._texture is not None:
            self._world.unregister(self._texture.name)
            self._texture = None
        self._name = ""  # Spout.cpp ReleaseSender clears m_SenderName

    def __del__(self) -> None:
        super().__del__()
        try:
            if self._texture is not None:  # ~spoutGL releases the sender name
                self._world.unregister(self._texture.name)
        except Exception:
            pass


def make(world: World | None = None) -> types.ModuleType:
    """A fresh ``SpoutGL`` module over ``world`` (a new one by default): ``module.world``."""
    world = world or World()
    module = types.ModuleType("SpoutGL")
    module.__dict__.update(
        world=world,
        __version__="0.1.1",
        SpoutReceiver=type("SpoutReceiver", (SpoutReceiver,), {"_world": world}),
        SpoutSender=type("SpoutSender", (SpoutSender,), {"_world": world}),
    )
    enums = types.ModuleType("SpoutGL.enums")
    enums.__dict__.update(
        GL_RGBA=GL_RGBA, GL_BGRA_EXT=GL_BGRA_EXT, GL_RGB=GL_RGB, GL_BGR_EXT=GL_BGR_EXT
    )
    helpers = types.ModuleType("SpoutGL.helpers")
    helpers.__dict__.update(
        getBytesPerPixel=_bytes_per_pixel,
        isBufferEmpty=lambda buffer: not np.frombuffer(_view(buffer), np.uint8).any(),
    )
    module.enums = enums  # type: ignore[attr-defined]
    module.helpers = helpers  # type: ignore[attr-defined]
    return module


def install(monkeypatch: Any, **world_options: Any) -> types.ModuleType:
    """Put a fresh fake behind ``livediffusion_bridge._spout`` (its ``_load`` stays strict for
    everyone else) with an empty record of our own senders; returns the fake module."""
    from livediffusion_bridge import _spout

    module = make(World(**world_options))
    monkeypatch.setattr(_spout, "_load", lambda: module)
    monkeypatch.setattr(_spout, "_OWN_SENDERS", {_spout.DEFAULT_SENDER_NAME})
    return module
