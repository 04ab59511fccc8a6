"""A contract fake of SpoutGL 0.1.1 (Python-SpoutGL on Spout 2.007.014), for Linux tests.

Spout runs only on Windows, with a graphics driver, so Linux CI cannot run it. This fake
stands in for the ``SpoutGL`` module and does what the real one does, rule by rule, as read
in jlai/Python-SpoutGL at tag v0.1.1: the binding ``src/PySpoutGL.cpp`` and the Spout SDK it
vendors in ``vendor/SpoutGL`` (identical, file for file, to leadedge/Spout2 tag 2.007.014
``SPOUTSDK/SpoutGL``). Each rule names its file; where the fake is stricter than Spout it says
so. Misuse is recorded in :attr:`World.violations` (the tests' fixtures fail on it).

OpenGL context and Spout's start (``SpoutGL.cpp``):

* ``CreateOpenGL``: with no context current on the calling thread it makes a hidden window
  and a context, current there and owned by that object; with one, nothing. Either way it
  then loads the OpenGL extensions and returns false when they fail to load, *keeping* the
  context it made (``closeOpenGL`` must still release it). ``CloseOpenGL`` from another
  thread fails and is recorded: Win32's ``wglDeleteContext`` refuses a context current in
  another thread and ``DestroyWindow`` another thread's window (learn.microsoft.com).
  Contexts never closed are listed by :meth:`World.open_contexts`.
* ``OpenSpout``, called by ``ReceiveImage`` and by ``SendImage`` (``CheckSender``) of an
  object not yet initialised, returns true at once once the object has a DirectX 11 device;
  otherwise it fails when DirectX 11 cannot start (``World(directx=False)``: every call
  fails), when no OpenGL context is current, or when the OpenGL extensions do not load
  (``World(gl_extensions=False)``: that first call fails; the device it opened stays, so
  later calls return true). Stricter here: a receive or send with no context on the
  calling thread always fails and is recorded, also after the device exists.
* ``CleanupGL`` (from ``ReleaseReceiver``, ``ReleaseSender`` and ``~spoutGL``) deletes the
  object's OpenGL objects (FBO, textures, the PBO ring) when a context is current, and
  deletes nothing without one (logged; recorded here as a leak).

Receiving (``Spout.cpp`` ``ReceiveImage``, ``ReceiveSenderData``, ``ReleaseReceiver``,
``IsUpdated``; ``SpoutGL.cpp`` ``ReadGLDXpixels``, ``UnloadTexturePixels``):

* With no receiver name the active sender is taken. A new sender, share handle or size
  runs ``ReleaseReceiver`` (which deletes the PBO ring) and sets the update flag: that call
  returns true without touching the buffer, and so does every call until ``isUpdated()``.
  A missing sender releases the receiver and returns false. A texture of a format GL/DX
  interop cannot take fails that call; the handle is kept, so later calls find nothing new
  and return true without reading (``ReadGLDXpixels``: no interop object), or false for a
  null buffer.
* ``ReleaseReceiver`` (of an initialised receiver) deletes the PBO ring through
  ``CleanupGL``, restores the name given to ``setReceiverName``, zeroes the size and, in
  ``CleanupFrameCount``, the frame counts; ``m_bIsNewFrame`` is left as it was.
* Pixels come through a ring of ``pbo_buffers`` PBOs (``UnloadTexturePixels``): each read
  returns the picture of an earlier read, the first ``pbo_buffers - 1`` reads of a new ring
  write nothing ("glMapBuffer can return NULL ... skip the copy"), all returning true. A
  ring of another size (one that outlived a release without a context) is deleted and
  nothing is copied.

Frame counting (``SpoutFrameCount.cpp``): ``World(frame_counting=...)`` is SpoutSettings'
"Framecount" registry value, shared by every Spout program of the user. With it off,
``GetNewFrame`` returns true and every receive reads (``isFrameNew`` stays true). With it on,
the receiver reads the sender's frame-count semaphore (created with count 1; each frame a
counting sender sends adds one): a sender that does not count frames (``counts_frames=
False``: Spout 2.006 senders, apps that disable counting) leaves the receiver a count of 0,
and ``GetNewFrame`` then says "new" on every call; an unchanged count says "not new" and
nothing is read. ``getSenderFrame`` returns the count last read.

Binding (``PySpoutGL.cpp``): a receive buffer smaller than the sender's known size raises
``BufferError``; ``None`` (or an empty buffer) is passed on as a null pointer; an unknown GL
format raises ``ValueError``. ``sendImage(buffer, a, b, ...)`` calls ``OpenSpout`` itself
when the sender is not initialised, then ``SendImage(ptr, a, b, ...)``, whose parameters are
(pixels, width, height): the first integer is the width, whatever the binding's labels
(height, width) say. ``getSenderName`` is bound to ``GetSenderWidth``.

Senders (``SpoutSenderNames.cpp``): a sender registers at its first ``sendImage`` under its
name, or ``name_1``, ``name_2``... when that is taken, and becomes the active sender; when the
active sender goes, the first remaining name (sorted, a ``std::set``) becomes active. A new
size gets a new share handle. ``ReleaseSender`` (``Spout.cpp``) forgets the name set with
``setSenderName``; ``~spoutGL`` releases the name of a sender still registered.

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
DXGI_FORMAT_B8G8R8A8_UNORM = 87
DXGI_FORMAT_R8_UNORM = 61  # one of the many texture formats Spout cannot share
SHAREABLE_FORMATS = frozenset({21, 22, 88, 87, 31, 28, 24, 13, 11, 29, 10, 2})
"""Spout.cpp ReceiveSenderData: the DirectX texture formats GL/DX interop takes (D3DFMT 21, 22
and DXGI 88, 87, 31, 28, 24, 13, 11, 29, 10, 2); any other fails the receive."""


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
    frame: int = 0  # frames written
    count: int = 0  # its frame-count semaphore as receivers read it: 0 if it never counts
    dx_format: int = DXGI_FORMAT_B8G8R8A8_UNORM  # of the shared DirectX 11 texture


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

    def __init__(
        self,
        *,
        pbo_buffers: int = 2,
        frame_counting: bool = True,
        directx: bool = True,
        gl_extensions: bool = True,
    ) -> None:
        self.lock = threading.RLock()
        self.pbo_buffers = pbo_buffers  # SpoutSettings "Buffers" (m_nBuffers, 2 by default)
        self.frame_counting = frame_counting  # SpoutSettings "Framecount"
        self.directx = directx  # whether OpenDirectX can make a DirectX 11 device
        self.gl_extensions = gl_extensions  # whether LoadGLextensions succeeds
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

    def resize(
        self, texture: Texture, width: int, height: int, dx_format: int | None = None
    ) -> None:
        with self.lock:
            texture.width, texture.height = width, height
            texture.handle = next(self._handles)  # a new shared texture, a new handle
            texture.pixels = np.zeros((height, width, 4), np.uint8)
            if dx_format is not None:
                texture.dx_format = dx_format

    def unregister(self, name: str) -> None:
        with self.lock:
            if self.textures.pop(name, None) is not None and self.active == name:
                self.active = min(self.textures) if self.textures else None

    def write(self, texture: Texture, rgba: np.ndarray, *, counts_frames: bool) -> None:
        with self.lock:
            texture.pixels = rgba.copy()
            texture.frame += 1
            if counts_frames and self.frame_counting:  # SpoutFrameCount.cpp SetNewFrame
                texture.count += 1
            self._history.setdefault(texture.name, []).append(texture.pixels)

    # -- for tests: other processes -------------------------------------------------------

    def sender(self, name: str, *, counts_frames: bool = True) -> ExternalSender:
        """A sender in another process: no OpenGL rules apply to it. ``counts_frames=False``
        is one that never signals frames (a 2.006 sender, or counting disabled in the app)."""
        return ExternalSender(self, name, counts_frames=counts_frames)

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
    """Another process's sender: registers at its first frame, can vanish and come back, and
    can change its texture's size or DirectX format (``dx_format``) from one frame to the next."""

    def __init__(self, world: World, name: str, *, counts_frames: bool = True) -> None:
        self.world = world
        self.name = name
        self.counts_frames = counts_frames
        self.dx_format = DXGI_FORMAT_B8G8R8A8_UNORM
        self.texture: Texture | None = None

    def send(self, pixels: np.ndarray) -> None:
        height, width = pixels.shape[:2]
        with self.world.lock:
            if self.texture is None:
                self.texture = self.world.register(self.name, width, height)
                self.texture.dx_format = self.dx_format
            elif (self.texture.width, self.texture.height, self.texture.dx_format) != (
                width,
                height,
                self.dx_format,
            ):
                self.world.resize(self.texture, width, height, self.dx_format)
            self.world.write(self.texture, pixels, counts_frames=self.counts_frames)

    def close(self) -> None:
        if self.texture is not None:
            self.world.unregister(self.texture.name)
            self.texture = None


class _SpoutGLObject:
    """What ``addCommonDefs`` binds on both classes, over one ``spoutGL`` object."""

    _world: World

    def __init__(self) -> None:
        self._context: Context | None = None
        self._dx_device = False  # spoutdx.GetDX11Device() != nullptr
        self._holds_gl = False  # OpenGL objects made under a context (interop, FBO, PBOs)

    def createOpenGL(self) -> bool:
        # SpoutGL.cpp CreateOpenGL
        world = self._world
        world.record("createOpenGL")
        with world.lock:
            if threading.get_ident() not in world.contexts:  # else "OpenGL context exists"
                thread = threading.current_thread()
                context = Context(type(self).__name__, thread, threading.get_ident())
                world.contexts[context.ident] = context
                self._context = context
        return world.gl_extensions  # LoadGLextensions; a context made stays made

    def closeOpenGL(self) -> bool:
        # SpoutGL.cpp CloseOpenGL: wglMakeCurrent(NULL, NULL), wglDeleteContext, DestroyWindow
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

    def _open_spout(self) -> bool:
        """SpoutGL.cpp OpenSpout (the context itself is checked by the caller, stricter)."""
        if self._dx_device:
            return True
        world = self._world
        if not world.directx:
            return False  # "Could not initialize DirectX 11"
        self._dx_device = True
        return world.gl_extensions  # "Could not load GL extensions" (the device stays)

    def _cleanup_gl(self, what: str) -> bool:
        """SpoutGL.cpp CleanupGL: True when the OpenGL objects were deleted."""
        if not self._holds_gl:
            return True
        if not self._world.has_context():
            self._world.violate(f"{what}: OpenGL objects released with no context (they leak)")
            return False
        self._holds_gl = False
        return True

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
        self._frame_count = 0  # m_FrameCount
        self._last_count = 0  # m_LastFrameCount
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

    def getSenderFrame(self) -> int:
        return self._frame_count

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
        self._release("releaseReceiver")

    def _release(self, what: str) -> None:
        """Spout::ReleaseReceiver."""
        if not self._initialized:
            return
        if self._cleanup_gl(what):
            self._ring, self._ring_size = None, None  # glDeleteBuffers: the PBO ring goes
        self._name = self._setup_name
        self._handle = 0
        self._width = self._height = 0
        self._frame_count = self._last_count = 0  # CleanupFrameCount
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
        if not self._open_spout():
            return False
        with world.lock:
            texture = self._sender_data()
            if texture is None:
                self._release("receiveImage of a closed sender")
                self._connected = False
                return False
            self._holds_gl = True  # CreateInterop, then the FBO and PBOs of a read
            if self._updated:
                return True  # new sender or size: the application must reallocate
            if view is None:
                return False  # "The receiving pixel buffer is created after the first update"
            self._connected = True
            if not self._initialized:
                return True  # ReadGLDXpixels: no interop object for this texture, no read
            if not self._new_frame_counted(texture):
                return True  # ReadGLDXpixels: "No new frame, do not block"
            picture = _from_rgba(texture.pixels[::-1] if invert else texture.pixels, gl_format)
        out = self._through_pbos(picture)
        if out is not None:
            target = np.frombuffer(view, dtype=np.uint8)
            target[: out.size] = out.reshape(-1)
        return True

    def _sender_data(self) -> Texture | None:
        """Spout::ReceiveSenderData: find the sender, notice a new one or a new size."""
        world = self._world
        self._updated = False
        name = self._name or world.active or ""
        texture = world.textures.get(name)
        if texture is None:
            return None
        if texture.handle != self._handle or name != self._name:
            self._release("ReceiveSenderData")  # "Release everything to start again"
            self._handle = texture.handle  # m_dxShareHandle, kept even if the format fails
            if texture.dx_format not in SHAREABLE_FORMATS:
                return None  # "incompatible texture format": this receive fails
            self._name = name
            self._width, self._height = texture.width, texture.height
            self._initialized = True  # InitReceiver
            self._updated = True
        return texture

    def _new_frame_counted(self, texture: Texture) -> bool:
        """SpoutFrameCount.cpp GetNewFrame."""
        if not self._world.frame_counting:
            return True  # "Return silently if disabled"
        self._frame_count = texture.count
        self._new_frame = True
        if texture.count == 0:
            return True  # "Count will still be zero for apps that do not set a frame count"
        if texture.count == self._last_count:
            self._new_frame = False
            return False
        self._last_count = texture.count
        return True

    def _through_pbos(self, picture: np.ndarray) -> np.ndarray | None:
        """UnloadTexturePixels: a ring of PBOs, read back late."""
        size = (self._height, self._width)
        if self._ring is not None and self._ring_size != size:
            self._ring, self._ring_size = None, None  # size check: delete, copy nothing
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
        if not world.need_context("SpoutSender.sendImage (OpenSpout fails)"):
            return False
        if self._texture is None:
            self._open_spout()  # the binding's own call for a sender not initialised
        if columns == 0 or rows == 0:
            return False  # Spout::SendImage
        if self._texture is None and not self._open_spout():
            return False  # CheckSender: "Make sure that Spout has been initialized"
        self._holds_gl = True
        raw = np.frombuffer(view, dtype=np.uint8)[: columns * rows * channels]
        rgba = _to_rgba(raw.reshape(rows, columns, channels), gl_format)
        with world.lock:
            if self._texture is None or self._texture.name not in world.textures:
                self._texture = world.register(self._name or "python", columns, rows)
            elif (self._texture.width, self._texture.height) != (columns, rows):
                world.resize(self._texture, columns, rows)
            world.write(self._texture, rgba[::-1] if invert else rgba, counts_frames=True)
        return True

    def releaseSender(self) -> None:
        # Spout.cpp ReleaseSender
        self._world.record("releaseSender")
        if self._texture is not None:  # m_bInitialized
            self._world.unregister(self._texture.name)
            self._texture = None
            self._name = ""  # m_SenderName[0] = 0
        self._cleanup_gl("releaseSender")

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
