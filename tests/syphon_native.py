"""The native layer under syphon-python 0.2.0, stubbed as its Objective-C source behaves.

The Syphon tests run syphon-python's *own* Python, unpacked from its 0.2.0 wheel
(tests/syphon_wheel.py): ``syphon/__init__.py``, ``_native.py``, ``server.py``, ``client.py``,
``server_directory.py`` and ``utils/``. What cannot exist on Linux is replaced here, and
only that: the PyObjC modules the wheel imports (``objc``, ``Foundation``, ``Cocoa``,
``AppKit``, ``Metal``), the Syphon.framework classes it looks up (``SyphonServerDirectory``,
``SyphonMetalServer``, ``SyphonMetalClient``), and the rest of a Mac: other apps' servers and
clients, the main run loop, Syphon's messaging queue, the GPU and autorelease pools. The
OS checks on the way are bypassed: ``livediffusion_bridge._syphon._load`` by :func:`install`,
``sys.platform`` of the modules a test names by :func:`pretend_macos`.

Sources. The framework in the wheel (``syphon/libs/Syphon.framework``, bundle version 5,
macOS 12+) has headers identical to Syphon/Syphon-Framework at b834acd (2025-01-03); the
``.m`` files of that commit are cited by name at each behaviour. Apple: NSRunLoop
``runMode:beforeDate:`` ("exits immediately" with no input source attached; returns "after
the first input source is processed"), Notification Programming Topics ("Distributed
notification centers deliver notifications on the main thread"; a local center delivers
synchronously on the posting thread), MTLTexture ``replaceRegion:`` (no synchronisation with
the GPU), MTLCommandBuffer ``commitAndWaitUntilSubmitted``, "Using Autorelease Pool Blocks"
(a secondary thread must make its own pool), Cocoa's memory rules (what a method not named
alloc/new/copy returns is autoreleased). PyObjC: ``objc.loadBundle``,
``objc.autorelease_pool``, ``objc.lookUpClass``.

Not modelled, because nothing here depends on it: the client's KVO update of its server
description, one connection manager shared by all clients of a server in a process, app
icons, the OpenGL classes. Other apps are :class:`ExternalServer`, :class:`ExternalClient`
and :class:`ExternalDirectory`; they talk to this process only as Syphon's messages and
notifications would.

What the tests can rely on, in short:

* Discovery is the only thing that needs the main thread: announcements, retirements and
  announce requests are distributed notifications, delivered one per ``runMode:beforeDate:``
  pass of the *main* run loop, ``notify_delay`` s after they were posted. A pass on any
  other thread returns at once (nothing is attached there).
* Frames, surface changes and a server's retirement reach a client as messages on Syphon's
  messaging queue (its own thread here, ``info.v002.syphon.messaging``), whatever the main
  thread does. ``hasNewFrame`` compares the client's last frame ID with the connection's,
  which moves with every new surface and every change of the surface's seed; every
  ``newFrameImage`` resets it. Client textures are BGRA8 over the server's IOSurface.
* A server publishes by encoding a blit (BGRA8, unflipped) or a render pass (anything else;
  ``flipped`` turns rows upside down) on the caller's command buffer; the copy happens when
  the GPU runs it, and the frame is announced to clients from its completed handler.
* Calls that return autoreleased objects count a leak on a thread that has no
  ``objc.autorelease_pool()`` open (dispatch-queue and Metal callback threads have their own).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import plistlib
import queue
import sys
import threading
import time
import types
import uuid as uuidlib
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

BGRA8 = 80  # MTLPixelFormatBGRA8Unorm (Metal's MTLPixelFormat enum)
RGBA8 = 70  # MTLPixelFormatRGBA8Unorm

# SyphonPrivate.m / SyphonServerDirectory.m: the keys and notification names
VERSION_KEY = "SyphonServerDescriptionDictionaryVersionKey"
UUID_KEY = "SyphonServerDescriptionUUIDKey"
NAME_KEY = "SyphonServerDescriptionNameKey"
APP_KEY = "SyphonServerDescriptionAppNameKey"
SURFACES_KEY = "SyphonServerDescriptionSurfacesKey"
SURFACE_TYPE = "SyphonSurfaceType"
SURFACE_IOSURFACE = "SyphonSurfaceTypeIOSurface"
OPTION_PRIVATE = "SyphonServerOptionIsPrivate"
ANNOUNCE = "info.v002.Syphon.ServerAnnounce"  # SyphonPrivate.h: the distributed names
RETIRE = "info.v002.Syphon.ServerRetire"
UPDATE = "info.v002.Syphon.ServerUpdate"
ANNOUNCE_REQUEST = "info.v002.Syphon.ServerAnnounceRequest"
LOCAL_NAMES = {  # SyphonServerDirectory.m: what it re-posts to the local center
    ANNOUNCE: "SyphonServerAnnounceNotification",
    RETIRE: "SyphonServerRetireNotification",
    UPDATE: "SyphonServerUpdateNotification",
}

_WORLD: World | None = None


class ContractError(AssertionError):
    """The code under test broke a rule of Metal or Syphon (see the cited source)."""


def _active() -> World:
    if _WORLD is None:
        raise RuntimeError("syphon_native is not installed (use the syphon_mac fixture)")
    return _WORLD


def _swap(pixels: np.ndarray) -> np.ndarray:
    """RGBA <-> BGRA, as a new array."""
    return np.ascontiguousarray(pixels[..., (2, 1, 0, 3)])


# -- IOSurface ---------------------------------------------------------------------------


@dataclass(eq=False)
class Surface:
    """An IOSurface: BGRA8 pixels (SyphonServerBase.m makes them 4 bytes per element);
    ``seed`` changes whenever it is drawn into (IOSurfaceGetSeed)."""

    id: int
    pixels: np.ndarray
    seed: int = 0


# -- message ports ---------------------------------------------------------------------------


class Port:
    """A client's message port as a server holds it (a SyphonMessageSender to the client's
    name): it does not keep the client alive, and messages to a client that is gone are lost."""

    def __init__(self, client: Any) -> None:
        self._client = weakref.ref(client)

    def send(self, method: str, *args: Any) -> None:
        client = self._client()
        if client is not None:
            getattr(client, method)(*args)


@dataclass(eq=False)
class ClientRecord:
    """What the tests may look at of one of this process's clients, even after it is gone."""

    state: ServerState | None
    created_on: str
    used_on: set[str] = field(default_factory=set)
    stopped: bool = False


# -- servers (any app's) ----------------------------------------------------------------


@dataclass(eq=False)
class ServerState:
    """One Syphon server on the machine: SyphonServerBase + SyphonServerConnectionManager."""

    uuid: str
    name: str
    app: str
    external: bool
    broadcasts: bool
    created_on: str
    alive: bool = True  # its message port exists (SyphonServerConnectionManager start/stop)
    crashed: bool = False  # its app died: no retirement, no answer to announce requests
    surface: Surface | None = None  # what it draws into
    surface_id: int = 0  # what its connection manager told clients (setSurfaceID)
    push_pending: bool = False  # SyphonServerBase: a new surface not yet pushed
    info_clients: list[Port] = field(default_factory=list)
    frame_clients: list[Port] = field(default_factory=list)
    published: list[int] = field(default_factory=list)  # id() of each texture published
    copies: Counter[str] = field(default_factory=Counter)  # "blit" or "render", per publish

    @property
    def description(self) -> dict[str, Any]:
        """SyphonServerBase.m ``serverDescription``."""
        return {
            VERSION_KEY: 0,  # kSyphonDictionaryVersion
            NAME_KEY: self.name,
            UUID_KEY: self.uuid,
            APP_KEY: self.app,
            SURFACES_KEY: [{SURFACE_TYPE: SURFACE_IOSURFACE}],
        }


# -- the machine ---------------------------------------------------------------------------


class World:
    """Every Syphon server on the fake Mac, this process's run loop, messaging queue, shared
    directory, GPU and autorelease pools."""

    def __init__(
        self,
        *,
        notify_delay: float = 0.15,
        announce_timeout: float = 6.0,
        gpu_latency: float = 0.05,
        gpu_depth: int = 1,
        app_name: str = "Python",
    ) -> None:
        self.lock = threading.RLock()
        self.notify_delay = notify_delay
        """Latency of a distributed notification (Apple: 'unbounded')."""
        self.announce_timeout = announce_timeout
        """kSyphonServerDirectoryAnnounceTimeout (6 s in SyphonServerDirectory.m)."""
        self.gpu_latency = gpu_latency
        self.gpu_depth = gpu_depth
        """How many committed buffers of one queue the GPU may be behind."""
        self.app_name = app_name
        """NSRunningApplication's localizedName for this process (SyphonServerBase.m)."""
        self.servers: dict[str, ServerState] = {}
        self.surfaces: dict[int, Surface] = {}  # what IOSurfaceLookup finds
        self.clients: list[ClientRecord] = []  # this process's SyphonMetalClients
        self.directory: NativeDirectory | None = None  # made by +load when the bundle loads
        self.other_directories: list[ExternalDirectory] = []  # other apps' (they pump)
        self.center = NotificationCenter()
        self.classes: dict[str, Any] = {"NSNotificationCenter": NotificationCenter}
        self.bundles: list[str] = []
        self.delivered: Counter[str] = Counter()  # distributed notifications, by name
        self.passes = 0  # main run-loop passes
        self.leaks: Counter[str] = Counter()
        self.leaked: list[tuple[str, str]] = []
        self.pools: Counter[str] = Counter()
        self.errors: list[BaseException] = []  # raised inside messages or callbacks
        self._depth = threading.local()
        self._notes: list[tuple[float, int, str, dict[str, Any] | None]] = []
        self._order = itertools.count()
        self._surface_ids = itertools.count(1)
        self._pending: list[CommandBuffer] = []
        self._messages: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._messaging: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._closed = False

    # -- Syphon's messaging queue (SyphonCFMessageReceiver.m: CFMessagePortSetDispatchQueue
    #    on the serial queue "info.v002.syphon.messaging"; senders never wait for it) ------

    def message(self, deliver: Callable[[], None]) -> None:
        with self.lock:
            if self._closed:
                return
            if self._messaging is None:
                self._messaging = threading.Thread(
                    target=self._run_messages, name="info.v002.syphon.messaging", daemon=True
                )
                self._messaging.start()
        self._messages.put(deliver)

    def _run_messages(self) -> None:
        while (deliver := self._messages.get()) is not None:
            try:
                deliver()
            except BaseException as exc:  # a bug in the stub or a callback: fail the test
                self.errors.append(exc)

    def settle(self, timeout: float = 2.0) -> None:
        """Wait until every message sent so far was handled (for assertions, not the code)."""
        done = threading.Event()
        self.message(done.set)
        assert done.wait(timeout), "Syphon's messaging queue is stuck"

    def shutdown(self) -> None:
        with self.lock:
            self._closed = True
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        if self._messaging is not None:
            self._messages.put(None)
            self._messaging.join(5)

    # -- distributed notifications and the main run loop -------------------------------

    def post(self, name: str, info: dict[str, Any] | None) -> None:
        """NSDistributedNotificationCenter ``postNotificationName:...deliverImmediately:``:
        every process gets it; this one through its main run loop, ``notify_delay`` later."""
        with self.lock:
            due = time.monotonic() + self.notify_delay
            self._notes.append((due, next(self._order), name, info))
            for directory in self.other_directories:
                directory.receive(name, info)
            if name == ANNOUNCE_REQUEST:  # other apps' servers answer from their own loops
                for state in self.servers.values():
                    if state.external and state.alive and not state.crashed:
                        self.post(ANNOUNCE, state.description)

    def run_loop(self, seconds: float) -> bool:
        """``[[NSRunLoop currentRunLoop] runMode:beforeDate:]``: True if it handled one event."""
        if threading.current_thread() is not threading.main_thread():
            return False  # no input source attached on this thread: it exits immediately
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            with self.lock:
                now = time.monotonic()
                due = [note for note in self._notes if note[0] <= now]
                if due:
                    note = min(due)
                    self._notes.remove(note)
                    self.passes += 1
                    self.delivered[note[2]] += 1
                    self._receive(note[2], note[3])
                    return True
                next_due = min((note[0] for note in self._notes), default=deadline)
                if now >= deadline:
                    self.passes += 1
                    return False
            time.sleep(max(min(deadline, next_due) - now, 0.0005))

    def _receive(self, name: str, info: dict[str, Any] | None) -> None:
        """A distributed notification reaches this process's observers (main thread)."""
        directory = self.directory
        if name == ANNOUNCE_REQUEST:
            if directory is not None:
                directory.handle_announce_request()
            for state in list(self.servers.values()):  # SyphonServerBase handleDiscoveryRequest
                if not state.external and state.alive and state.broadcasts:
                    self.post(ANNOUNCE, state.description)
        elif directory is not None and info is not None:
            directory.handle(name, info)

    # -- servers -----------------------------------------------------------------------

    def add_server(self, name: str, app: str, *, external: bool, broadcasts: bool) -> ServerState:
        with self.lock:
            # SyphonPrivate.m SyphonCreateUUIDString: "info.v002.Syphon.<UUID>"
            uuid = f"info.v002.Syphon.{str(uuidlib.uuid4()).upper()}"
            thread = threading.current_thread().name
            state = ServerState(uuid, name, app, external, broadcasts, thread)
            self.servers[uuid] = state
            if broadcasts:  # SyphonServerBase startBroadcasts -> broadcastServerAnnounce
                self.post(ANNOUNCE, state.description)
            return state

    def draw(self, state: ServerState, bgra: np.ndarray) -> None:
        """Frame pixels land in the server's surface (a new surface at a new size:
        SyphonServerBase ``newSurfaceForWidth:height:options:``)."""
        with self.lock:
            if not state.alive:
                return  # GPU work finishing after stop() draws into nothing
            surface = state.surface
            if surface is None or surface.pixels.shape != bgra.shape:
                if surface is not None:
                    self.surfaces.pop(surface.id, None)
                surface = Surface(next(self._surface_ids), np.zeros_like(bgra))
                self.surfaces[surface.id] = surface
                state.surface, state.push_pending = surface, True
            surface.pixels[...] = bgra
            surface.seed += 1

    def publish(self, state: ServerState) -> None:
        """SyphonServerBase ``publish``: push a new surface's ID to the info clients, then
        tell the frame clients (SyphonServerConnectionManager setSurfaceID, publishNewFrame)."""
        with self.lock:
            if not state.alive or state.surface is None:
                return
            if state.push_pending:
                state.push_pending = False
                state.surface_id = state.surface.id
                for port in state.info_clients:
                    self.message(lambda p=port, i=state.surface_id: p.send("receive_surface", i))
            for port in state.frame_clients:
                self.message(lambda p=port: p.send("receive_new_frame"))

    def stop_server(self, state: ServerState) -> None:
        """SyphonServerBase ``stop``: retire to every info client (messages), retire to
        every directory (a distributed notification), release the surface."""
        with self.lock:
            if not state.alive:
                return
            state.alive = False
            for port in state.info_clients:
                self.message(lambda p=port: p.send("receive_retire"))
            state.info_clients.clear()
            state.frame_clients.clear()
            if state.broadcasts:
                self.post(RETIRE, state.description)
            if state.surface is not None:
                self.surfaces.pop(state.surface.id, None)

    def connect(self, state: ServerState, port: Port, *, frames: bool) -> bool:
        """SyphonClientConnectionManager ``addInfoClient:isFrameClient:``: False when the
        server's port is gone (``SyphonMessageSender initForName:`` returns nil)."""
        with self.lock:
            if not state.alive or state.crashed:
                return False

        def register() -> None:  # SyphonServerConnectionManager addInfoClient/addFrameClient
            with self.lock:
                if not state.alive or state.crashed:
                    return
                state.info_clients.append(port)
                if frames:
                    state.frame_clients.append(port)
                surface_id = state.surface_id
            if surface_id:
                port.send("receive_surface", surface_id)
                if frames:
                    port.send("receive_new_frame")

        self.message(register)
        return True

    def disconnect(self, state: ServerState, port: Port) -> None:
        """SyphonClientConnectionManager ``removeInfoClient:``: the server forgets it."""

        def unregister() -> None:
            with self.lock:
                for ports in (state.info_clients, state.frame_clients):
                    if port in ports:
                        ports.remove(port)

        with self.lock:
            if state.alive and not state.crashed:
                self.message(unregister)

    def lookup(self, surface_id: int) -> Surface | None:
        """IOSurfaceLookup: a surface its owner still holds."""
        with self.lock:
            return self.surfaces.get(surface_id) if surface_id else None

    def server_named(self, name: str, *, app: str | None = None) -> ServerState:
        with self.lock:
            hits = [
                s
                for s in self.servers.values()
                if s.alive and s.name == name and (app is None or s.app == app)
            ]
        assert len(hits) == 1, f"{len(hits)} live servers named {name!r}"
        return hits[0]

    def listed(self) -> dict[str, dict[str, Any]]:
        """What this process's shared directory lists, by UUID."""
        directory = self.directory
        assert directory is not None, "the Syphon bundle is not loaded"
        with self.lock:
            return {d[UUID_KEY]: d for d in directory.entries}

    def request_announce(self) -> None:
        """Another app starts a directory (SyphonServerDirectory ``requestServerAnnounce``)."""
        self.post(ANNOUNCE_REQUEST, None)

    def later(self, seconds: float, work: Callable[[], None]) -> None:
        """``dispatch_after`` on a global queue."""
        timer = threading.Timer(seconds, work)
        timer.daemon = True
        with self.lock:
            if self._closed:
                return
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    # -- GPU -------------------------------------------------------------------------------

    def reading(self, texture: Texture) -> bool:
        with self.lock:
            return any(texture in buffer.reads for buffer in self._pending)

    # -- autorelease pools -------------------------------------------------------------

    @contextlib.contextmanager
    def autorelease_pool(self) -> Iterator[None]:
        name = threading.current_thread().name
        with self.lock:
            self.pools[name] += 1
        self._depth.n = getattr(self._depth, "n", 0) + 1
        try:
            yield
        finally:
            self._depth.n -= 1

    def autoreleased(self, what: str) -> None:
        """An Objective-C call returned an autoreleased object on this thread."""
        thread = threading.current_thread()
        if getattr(self._depth, "n", 0) > 0 or getattr(thread, "drains_own_pool", False):
            return
        with self.lock:
            self.leaks[thread.name] += 1
            self.leaked.append((thread.name, what))

    def leaks_on(self, *threads: str) -> dict[str, int]:
        """Objects autoreleased without a pool, on the named threads (all when none named).
        The main thread's land in the pool PyObjC made at import, which never drains."""
        with self.lock:
            return {n: c for n, c in self.leaks.items() if not threads or n in threads}


# -- Foundation / Cocoa ----------------------------------------------------------------------


class NSPoint(NamedTuple):
    x: float
    y: float


class NSSize(NamedTuple):
    width: float
    height: float


class NSRect(NamedTuple):
    origin: NSPoint
    size: NSSize

    @classmethod
    def make(cls, origin: Any, size: Any) -> NSRect:
        return cls(NSPoint(*origin), NSSize(*size))


def _intersection(a: NSRect, b: NSRect) -> NSRect:
    """NSIntersectionRect."""
    x0, y0 = max(a.origin.x, b.origin.x), max(a.origin.y, b.origin.y)
    x1 = min(a.origin.x + a.size.width, b.origin.x + b.size.width)
    y1 = min(a.origin.y + a.size.height, b.origin.y + b.size.height)
    if x1 <= x0 or y1 <= y0:
        return NSRect.make((0, 0), (0, 0))
    return NSRect.make((x0, y0), (x1 - x0, y1 - y0))


class NSDate:
    def __init__(self, when: float) -> None:
        self.when = when

    @classmethod
    def dateWithTimeIntervalSinceNow_(cls, seconds: float) -> NSDate:
        _active().autoreleased("NSDate")  # a convenience constructor
        return cls(time.monotonic() + float(seconds))


class NSRunLoop:
    @classmethod
    def currentRunLoop(cls) -> NSRunLoop:
        return cls()

    def runMode_beforeDate_(self, mode: str, date: NSDate) -> bool:
        if mode != "kCFRunLoopDefaultMode":
            raise ContractError(f"Syphon's notifications arrive in the default mode, not {mode}")
        return _active().run_loop(date.when - time.monotonic())


class NSImage:
    pass


class NSBundle:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = plistlib.loads((path / "Resources" / "Info.plist").read_bytes())

    @classmethod
    def bundleWithPath_(cls, path: str) -> NSBundle | None:
        bundle = Path(path)
        return cls(bundle) if (bundle / "Resources" / "Info.plist").is_file() else None


class Notification:
    def __init__(self, name: str, obj: Any, info: dict[str, Any] | None) -> None:
        self._name, self._object, self._info = name, obj, info

    def name(self) -> str:
        return self._name

    def object(self) -> Any:
        return self._object

    def userInfo(self) -> dict[str, Any] | None:
        return self._info


class NotificationCenter:
    """NSNotificationCenter: blocks run synchronously on the posting thread (queue nil)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observers: dict[int, tuple[str | None, Callable[[Any], None]]] = {}
        self._tokens = itertools.count(1)

    @classmethod
    def defaultCenter(cls) -> NotificationCenter:
        return _active().center

    def addObserverForName_object_queue_usingBlock_(
        self, name: str | None, obj: Any, op_queue: Any, block: Callable[[Any], None]
    ) -> int:
        with self._lock:
            token = next(self._tokens)
            self._observers[token] = (name, block)
            return token

    def removeObserver_(self, token: int) -> None:
        with self._lock:
            self._observers.pop(token, None)

    def observers(self) -> int:
        with self._lock:
            return len(self._observers)

    def postNotificationName_object_userInfo_(self, name: str, obj: Any, info: Any) -> None:
        with self._lock:
            blocks = [b for n, b in self._observers.values() if n in (None, name)]
        for block in blocks:
            block(Notification(name, obj, info))


# -- objc ----------------------------------------------------------------------------------


class ObjCPointer:
    typestr = b""


class nosuchclass_error(Exception):  # PyObjC spells it so
    pass


def loadBundle(
    module_name: str, module_globals: dict[str, Any], bundle_path: str, scan_classes: bool = True
) -> NSBundle:
    """PyObjC ``objc.loadBundle``: load the framework. Its ``+load`` methods run:
    ``+[SyphonServerDirectory load]`` makes the shared directory, whose ``init`` observes the
    distributed notifications and posts an announce request (SyphonServerDirectory.m)."""
    world = _active()
    bundle = NSBundle.bundleWithPath_(bundle_path)
    if bundle is None:
        raise ImportError(f"No bundle at {bundle_path}")
    executable = bundle.info.get("CFBundleExecutable")
    if executable != "Syphon" or not (bundle.path / executable).exists():
        raise ImportError(f"{bundle_path} is not the Syphon framework ({executable!r})")
    with world.lock:
        world.bundles.append(str(bundle.path))
        world.classes.update(
            SyphonServerDirectory=NativeDirectory,
            SyphonMetalServer=NativeServer,
            SyphonMetalClient=NativeClient,
        )
        if world.directory is None:
            world.directory = NativeDirectory(world)
    world.request_announce()
    return bundle


def loadBundleVariables(
    bundle: NSBundle,
    module_globals: dict[str, Any],
    variable_info: list[tuple[str, bytes]],
    skip_undefined: bool = True,
) -> None:
    """The option constants: SyphonPrivate.m gives each its own name as its value."""
    known = {
        "SyphonServerOptionIsPrivate",
        "SyphonServerOptionAntialiasSampleCount",
        "SyphonServerOptionDepthBufferResolution",
        "SyphonServerOptionStencilBufferResolution",
    }
    for name, _type in variable_info:
        if name in known:
            module_globals[name] = name
        elif not skip_undefined:
            raise nosuchclass_error(f"no variable {name} in {bundle.path}")


def lookUpClass(name: str) -> Any:
    world = _active()
    with world.lock:
        found = world.classes.get(name)
    if found is None:
        raise nosuchclass_error(name)
    return found


def createOpaquePointerType(name: str, typestr: bytes, doc: str = "") -> type:
    return type(name, (ObjCPointer,), {"typestr": typestr, "__doc__": doc})


def registerMetaDataForSelector(class_name: bytes, selector: bytes, metadata: Any) -> None:
    pass  # how PyObjC turns a Python callable into a block: the stubs call it directly


def autorelease_pool() -> contextlib.AbstractContextManager[None]:
    return _active().autorelease_pool()


# -- Metal -----------------------------------------------------------------------------------


class Texture:
    """An MTLTexture: our own storage, or (for a client) a view of a server's IOSurface."""

    def __init__(
        self, world: World, width: int, height: int, fmt: int, *, surface: Surface | None = None
    ) -> None:
        self._world = world
        self._format = fmt
        self._surface = surface
        self._storage = np.zeros((height, width, 4), np.uint8) if surface is None else None

    @property
    def pixels(self) -> np.ndarray:
        if self._surface is not None:
            return self._surface.pixels
        assert self._storage is not None
        return self._storage

    def width(self) -> int:
        return int(self.pixels.shape[1])

    def height(self) -> int:
        return int(self.pixels.shape[0])

    def pixelFormat(self) -> int:
        return self._format

    def sampleCount(self) -> int:
        return 1

    def framebufferOnly(self) -> bool:
        return False

    def _check_region(self, region: Any) -> None:
        if tuple(map(tuple, region)) != ((0, 0, 0), (self.width(), self.height(), 1)):
            raise ContractError(f"region {region} is not the whole {self.width()}x{self.height()}")

    def replaceRegion_mipmapLevel_withBytes_bytesPerRow_(
        self, region: Any, level: int, data: Any, bytes_per_row: int
    ) -> None:
        self._check_region(region)
        if self._surface is not None:
            raise ContractError("a client's frame texture is another app's surface: never write")
        width, height = self.width(), self.height()
        view = memoryview(data).cast("B")
        if level != 0 or bytes_per_row != width * 4 or view.nbytes != height * bytes_per_row:
            raise ContractError(
                f"{view.nbytes} bytes at {bytes_per_row} per row for a {width}x{height} texture"
            )
        if self._world.reading(self):  # MTLTexture replaceRegion: no GPU synchronisation
            raise ContractError(
                "CPU write to a texture a committed command buffer still reads: "
                "publish_frame_texture returns at 'submitted', not 'completed'"
            )
        assert self._storage is not None
        self._storage[...] = np.frombuffer(view, np.uint8).reshape(height, width, 4)

    def getBytes_bytesPerRow_bytesPerImage_fromRegion_mipmapLevel_slice_(
        self, buffer: Any, bytes_per_row: int, bytes_per_image: int, region: Any, *rest: int
    ) -> None:
        self._check_region(region)
        if bytes_per_row != self.width() * 4 or bytes_per_image != bytes_per_row * self.height():
            raise ContractError("getBytes with a wrong layout")
        with self._world.lock:
            memoryview(buffer).cast("B")[:] = self.pixels.tobytes()


class TextureDescriptor:
    def __init__(self, fmt: int, width: int, height: int) -> None:
        self.pixelFormat, self.width, self.height = fmt, width, height

    @classmethod
    def texture2DDescriptorWithPixelFormat_width_height_mipmapped_(
        cls, fmt: int, width: int, height: int, mipmapped: bool
    ) -> TextureDescriptor:
        _active().autoreleased("MTLTextureDescriptor")  # a convenience constructor
        return cls(int(fmt), int(width), int(height))


class CommandBuffer:
    def __init__(self, queue: CommandQueue) -> None:
        self.queue = queue
        self.state = "encoding"
        self.committed_at = 0.0
        self.reads: list[Texture] = []
        self._work: list[Callable[[], None]] = []
        self._handlers: list[Callable[[Any], None]] = []

    def encode(self, texture: Texture, work: Callable[[], None]) -> None:
        if self.state != "encoding":
            raise ContractError(f"encoding on a {self.state} command buffer")
        self.reads.append(texture)
        self._work.append(work)

    def addCompletedHandler_(self, handler: Callable[[Any], None]) -> None:
        self._handlers.append(handler)

    def commit(self) -> None:
        world = self.queue.world
        with world.lock:
            if self.state != "encoding":
                raise ContractError("a command buffer can be committed once")
            earlier = [b for b in world._pending if b.queue is self.queue]
            for buffer in earlier[: max(len(earlier) - world.gpu_depth + 1, 0)]:
                buffer.complete()  # a queue runs in order, at most gpu_depth buffers behind
            self.state, self.committed_at = "committed", time.monotonic()
            world._pending.append(self)
        world.later(world.gpu_latency, self.complete)  # the GPU runs on its own clock

    def commitAndWaitUntilSubmitted(self) -> None:
        self.commit()  # submitted, not completed: the GPU may not have read the texture yet

    def waitUntilCompleted(self) -> None:
        if self.state == "encoding":
            raise ContractError("waitUntilCompleted on an uncommitted buffer never returns")
        self.complete()

    def complete(self) -> None:
        world = self.queue.world
        with world.lock:
            if self.state != "committed":
                return
            self.state = "completed"
            world._pending.remove(self)
            for work in self._work:
                work()
            for handler in self._handlers:  # on a Metal thread, which has its own pool
                handler(self)


class CommandQueue:
    def __init__(self, world: World) -> None:
        self.world = world

    def commandBuffer(self) -> CommandBuffer:
        self.world.autoreleased("MTLCommandBuffer")  # Metal's header: autoreleased
        return CommandBuffer(self)


class Device:
    def __init__(self, world: World) -> None:
        self.world = world

    def name(self) -> str:
        return "Stub GPU"

    def newTextureWithDescriptor_(self, descriptor: TextureDescriptor) -> Texture:
        if descriptor.pixelFormat not in (BGRA8, RGBA8):
            raise ContractError(f"the stub knows BGRA8/RGBA8 only, not {descriptor.pixelFormat}")
        return Texture(self.world, descriptor.width, descriptor.height, descriptor.pixelFormat)

    def newCommandQueue(self) -> CommandQueue:
        return CommandQueue(self.world)


def MTLCreateSystemDefaultDevice() -> Device:
    return Device(_active())


def MTLRegionMake2D(x: int, y: int, width: int, height: int) -> Any:
    return ((x, y, 0), (width, height, 1))


def MTLRegion(origin: Any, size: Any) -> Any:
    return (tuple(origin), tuple(size))


# -- Syphon.framework: SyphonServerDirectory -------------------------------------------------


class NativeDirectory:
    """``SyphonServerDirectory`` (SyphonServerDirectory.m), the process-wide instance."""

    def __init__(self, world: World) -> None:
        self._world = world
        self.entries: list[dict[str, Any]] = []
        self._pings: set[str] | None = None

    @classmethod
    def sharedDirectory(cls) -> NativeDirectory:
        directory = _active().directory
        assert directory is not None
        return directory

    def servers(self) -> list[dict[str, Any]]:
        self._world.autoreleased("NSArray (servers)")  # [NSArray arrayWithArray:]
        with self._world.lock:
            return list(self.entries)

    def serversMatchingName_appName_(self, name: str | None, app: str | None) -> list[Any]:
        self._world.autoreleased("NSArray (serversMatchingName)")
        with self._world.lock:
            return [
                d
                for d in self.entries
                if (not name or d.get(NAME_KEY) == name) and (not app or d.get(APP_KEY) == app)
            ]

    def _index(self, uuid: str | None) -> int | None:
        for index, entry in enumerate(self.entries):
            if uuid is not None and entry.get(UUID_KEY) == uuid:
                return index
        return None

    def handle(self, name: str, info: dict[str, Any]) -> None:
        """handleServerAnnounce / handleServerRetire / handleServerUpdate, then the local
        notification (posted on this, the main, thread)."""
        uuid = info.get(UUID_KEY)
        with self._world.lock:
            index = self._index(uuid)
            if name == ANNOUNCE and self._pings is not None and uuid:
                self._pings.add(uuid)
            changed = True
            if name == ANNOUNCE and index is None:
                self.entries.append(dict(info))
            elif name == RETIRE and index is not None:
                del self.entries[index]
            elif name == UPDATE and index is not None:
                self.entries[index] = dict(info)
            else:
                changed = False
        if changed:
            self._world.center.postNotificationName_object_userInfo_(
                LOCAL_NAMES[name], self, dict(info)
            )

    def handle_announce_request(self) -> None:
        """handleAccounceRequest: servers that send no announcement within the timeout
        are dropped (on a global queue) and their retirement posted locally."""
        with self._world.lock:
            if self._pings is not None:
                return
            self._pings = set()
        self._world.later(self._world.announce_timeout, self._prune)

    def _prune(self) -> None:
        with self._world.lock:
            pings, self._pings = self._pings or set(), None
            retired = [d for d in self.entries if d.get(UUID_KEY) not in pings]
            self.entries = [d for d in self.entries if d.get(UUID_KEY) in pings]
        for description in retired:
            self._world.center.postNotificationName_object_userInfo_(
                LOCAL_NAMES[RETIRE], self, description
            )


# -- Syphon.framework: SyphonMetalServer ------------------------------------------------------


class NativeServer:
    """``SyphonMetalServer`` (SyphonMetalServer.m over SyphonServerBase.m), in this process."""

    @classmethod
    def alloc(cls) -> NativeServer:
        return cls.__new__(cls)

    def initWithName_device_options_(
        self, name: str, device: Any, options: dict[str, Any] | None
    ) -> NativeServer | None:
        world = _active()
        if device is None:  # SyphonServerRendererMetal needs a device's library: nil
            return None
        self._world, self._device = world, device
        private = bool((options or {}).get(OPTION_PRIVATE, False))
        self.state = world.add_server(
            name or "", world.app_name, external=False, broadcasts=not private
        )
        if not private:
            world.autoreleased("NSDictionary (serverDescription, announce)")
        self._texture: Texture | None = None
        return self

    def __del__(self) -> None:  # dealloc: destroyResources + destroyBaseResources
        with contextlib.suppress(Exception):
            self._world.stop_server(self.state)

    def name(self) -> str:
        return self.state.name

    def setName_(self, name: str) -> None:
        with self._world.lock:
            self.state.name = name or ""
            if self.state.broadcasts and self.state.alive:
                self._world.post(UPDATE, self.state.description)

    def serverDescription(self) -> dict[str, Any]:
        self._world.autoreleased("NSDictionary (serverDescription)")
        return self.state.description

    def hasClients(self) -> bool:
        with self._world.lock:
            return bool(self.state.info_clients)

    def device(self) -> Any:
        return self._device

    def newFrameImage(self) -> Texture | None:
        return self._texture

    def stop(self) -> None:
        self._texture = None
        self._world.stop_server(self.state)

    def publish(self) -> None:
        self._world.publish(self.state)

    def publishFrameTexture_onCommandBuffer_imageRegion_flipped_(
        self, texture: Texture | None, buffer: CommandBuffer, region: NSRect, flipped: bool
    ) -> None:
        world, state = self._world, self.state
        if texture is None:
            return  # SYPHONLOG and nothing else
        if not state.alive:
            raise ContractError("publish on a stopped server (its device and surface are gone)")
        whole = NSRect.make((0, 0), (texture.width(), texture.height()))
        region = _intersection(NSRect.make(*region), whole)
        if region != whole:
            raise ContractError(f"the stub publishes whole textures only, not {region}")
        fmt = texture.pixelFormat()
        blit = (
            not flipped
            and fmt == BGRA8  # the surface texture's format
            and texture.sampleCount() == 1
            and not texture.framebufferOnly()
        )
        if blit:
            world.autoreleased("MTLBlitCommandEncoder")
        else:  # SyphonServerRendererMetal: a render pass, flipped vertically when asked
            world.autoreleased("MTLRenderPassDescriptor")
            world.autoreleased("MTLRenderCommandEncoder")

        def work() -> None:  # on the GPU, when the buffer runs: reads the texture now
            pixels = texture.pixels.copy()
            bgra = pixels if fmt == BGRA8 else _swap(pixels)
            world.draw(state, bgra[::-1] if flipped else bgra)

        buffer.encode(texture, work)
        buffer.addCompletedHandler_(lambda _buffer: self.publish())
        with world.lock:
            state.published.append(id(texture))
            state.copies["blit" if blit else "render"] += 1


# -- Syphon.framework: SyphonMetalClient -----------------------------------------------------


class NativeClient:
    """``SyphonMetalClient`` (SyphonMetalClient.m, SyphonClientBase.m and its
    SyphonClientConnectionManager.m), in this process."""

    @classmethod
    def alloc(cls) -> NativeClient:
        return cls.__new__(cls)

    def initWithServerDescription_device_options_newFrameHandler_(
        self,
        description: dict[str, Any],
        device: Any,
        options: Any,
        handler: Callable[[Any], None] | None,
    ) -> NativeClient | None:
        world = _active()
        self._world = world
        self._handler = handler
        self._lock = threading.Lock()
        self._connected = False
        self._description = description
        # SyphonClientConnectionManager: nil without an IOSurface surface description
        surfaces = description.get(SURFACES_KEY) or []
        if not any(s.get(SURFACE_TYPE) == SURFACE_IOSURFACE for s in surfaces):
            return None
        # SyphonClientBase: nil for a missing or newer dictionary version
        version = description.get(VERSION_KEY)
        if version is None or int(version) > 0:
            return None
        with world.lock:
            self.state = world.servers.get(description.get(UUID_KEY, ""))
            self.record = ClientRecord(self.state, threading.current_thread().name)
            world.clients.append(self.record)
        self._port = Port(self)
        self._device = device
        self._server_active = True
        self._connected = True  # the connection manager exists (until stop)
        self._surface_id = 0
        self._surface: Surface | None = None  # retained by IOSurfaceLookup
        self._last_seed = 0
        self._frame_id = 0
        self._last_frame_id = 0
        self._frame: Texture | None = None
        self._frame_valid = False
        frames = handler is not None
        if self.state is None or not world.connect(self.state, self._port, frames=frames):
            self._server_active = False  # invalidateServerNotHavingLock
        return self

    def __del__(self) -> None:  # dealloc -> stop
        with contextlib.suppress(Exception):
            self.stop()

    def _use(self) -> None:
        self.record.used_on.add(threading.current_thread().name)

    # messages from the server, on the messaging queue
    def receive_surface(self, surface_id: int) -> None:
        with self._lock:
            self._surface_id = surface_id
            self._frame_id += 1  # a new surface means a new frame
            self._surface = None
            self._frame_valid = False  # invalidateFrame

    def receive_new_frame(self) -> None:
        with self._lock:
            handler = self._handler if self._connected else None
        if handler is not None:  # receiveNewFrame on the frame queue
            handler(self)

    def receive_retire(self) -> None:
        with self._lock:
            self._server_active = False
            self._surface = None
            self._frame_valid = False

    # SyphonClientConnectionManager
    def _lookup_surface(self) -> Surface | None:
        if self._surface is None:
            self._surface = self._world.lookup(self._surface_id)
        return self._surface

    def _current_frame_id(self) -> int:
        if not self._connected:
            return 0  # a message to nil
        surface = self._lookup_surface()
        if surface is not None and surface.seed != self._last_seed:
            self._frame_id += 1
            self._last_seed = surface.seed
        return self._frame_id

    # the API
    def isValid(self) -> bool:
        self._use()
        with self._lock:
            return self._connected and self._server_active

    def hasNewFrame(self) -> bool:
        self._use()
        with self._lock:
            return self._last_frame_id != self._current_frame_id()

    def newFrameImage(self) -> Texture | None:
        self._use()
        with self._lock:
            self._last_frame_id = self._current_frame_id()  # updateFrameID
            if not self._frame_valid:
                self._frame = None
                surface = self._lookup_surface() if self._connected else None
                if surface is not None:
                    self._world.autoreleased("MTLTextureDescriptor (newFrameImage)")
                    height, width = surface.pixels.shape[:2]
                    self._frame = Texture(self._world, width, height, BGRA8, surface=surface)
                self._frame_valid = True
            return self._frame

    def serverDescription(self) -> dict[str, Any]:
        return self._description

    def stop(self) -> None:
        with self._lock:
            self._frame_valid, self._frame = False, None
            if not self._connected:
                return
            self._connected = False
            self.record.stopped = True
            active = self._server_active
        if self.state is not None and active:
            self._world.disconnect(self.state, self._port)


# -- other apps ----------------------------------------------------------------------------


class ExternalServer:
    """Another app's Syphon server (a camera, a VJ host): frames go straight to its surface."""

    def __init__(self, world: World, app: str, name: str) -> None:
        self.world = world
        self.state = world.add_server(name, app, external=True, broadcasts=True)

    @property
    def uuid(self) -> str:
        return self.state.uuid

    def publish(self, rgba: np.ndarray, *, upside_down: bool = False) -> None:
        """One frame, given as RGBA; ``upside_down``: as an OpenGL sender delivers it."""
        bgra = _swap(rgba)
        self.world.draw(self.state, bgra[::-1] if upside_down else bgra)
        self.world.publish(self.state)

    def stop(self) -> None:
        self.world.stop_server(self.state)

    def crash(self) -> None:
        """The app dies: no retirement reaches anyone, its port is gone, and it answers no
        announce request, so directories drop it ``announce_timeout`` after the next one."""
        with self.world.lock:
            self.state.crashed = True


class ExternalClient:
    """Another app reading one of our servers; it sees the surface as RGBA."""

    def __init__(self, world: World, state: ServerState) -> None:
        self.world, self.state = world, state
        self._surface_id = 0
        self.retired = False
        self._port = Port(self)
        self.connected = world.connect(state, self._port, frames=False)

    def receive_surface(self, surface_id: int) -> None:
        self._surface_id = surface_id

    def receive_new_frame(self) -> None:
        pass

    def receive_retire(self) -> None:
        self._surface_id = 0
        self.retired = True

    def _surface(self) -> Surface | None:
        return self.world.lookup(self._surface_id)

    @property
    def frames(self) -> int:
        surface = self._surface()
        return 0 if surface is None else surface.seed

    def frame(self) -> np.ndarray | None:
        with self.world.lock:
            surface = self._surface()
            return None if surface is None else _swap(surface.pixels)

    def stop(self) -> None:
        self.world.disconnect(self.state, self._port)


class ExternalDirectory:
    """Another app's server directory, started now: it asks every server to announce itself
    (SyphonServerDirectory.m ``init``) and, its app running its run loop, takes in every
    announcement and retirement as it is posted."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.entries: dict[str, dict[str, Any]] = {}
        with world.lock:
            world.other_directories.append(self)
        world.request_announce()

    def receive(self, name: str, info: dict[str, Any] | None) -> None:
        if info is None:
            return
        if name in (ANNOUNCE, UPDATE):
            self.entries[info[UUID_KEY]] = dict(info)
        elif name == RETIRE:
            self.entries.pop(info[UUID_KEY], None)

    def names(self) -> set[str]:
        with self.world.lock:
            return {f"{d[APP_KEY]} - {d[NAME_KEY]}" for d in self.entries.values()}


# -- installing -------------------------------------------------------------------------------


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def pyobjc_modules() -> dict[str, types.ModuleType]:
    """The PyObjC modules syphon-python imports, stubbed."""
    objc = _module(
        "objc",
        loadBundle=loadBundle,
        loadBundleVariables=loadBundleVariables,
        lookUpClass=lookUpClass,
        createOpaquePointerType=createOpaquePointerType,
        registerMetaDataForSelector=registerMetaDataForSelector,
        autorelease_pool=autorelease_pool,
        ObjCPointer=ObjCPointer,
        nosuchclass_error=nosuchclass_error,
    )
    cocoa = {
        "NSDate": NSDate,
        "NSDefaultRunLoopMode": "kCFRunLoopDefaultMode",
        "NSImage": NSImage,
        "NSRunLoop": NSRunLoop,
        "NSRect": NSRect.make,
        "NSSize": NSSize,
        "NSBundle": NSBundle,
        "NSNotificationCenter": NotificationCenter,
    }
    gl_context = types.SimpleNamespace(currentContext=lambda: None)
    appkit = _module("AppKit", **cocoa, NSOpenGLContext=gl_context)
    metal = _module(
        "Metal",
        MTLPixelFormatBGRA8Unorm=BGRA8,
        MTLPixelFormatRGBA8Unorm=RGBA8,
        MTLCreateSystemDefaultDevice=MTLCreateSystemDefaultDevice,
        MTLTextureDescriptor=TextureDescriptor,
        MTLRegion=MTLRegion,
        MTLRegionMake2D=MTLRegionMake2D,
    )
    return {
        "objc": objc,
        "Foundation": _module("Foundation", **cocoa),
        "Cocoa": _module("Cocoa", **cocoa),
        "AppKit": appkit,
        "Metal": metal,
    }


def _syphon_module_names() -> list[str]:
    return [n for n in sys.modules if n == "syphon" or n.startswith("syphon.")]


def pretend_macos(monkeypatch: pytest.MonkeyPatch, *modules: types.ModuleType) -> None:
    """The OS checks of ``modules`` (their ``sys.platform``) say macOS; nothing else does."""
    mac = types.ModuleType("sys")
    mac.__dict__.update(sys.__dict__)
    mac.platform = "darwin"
    for module in modules:
        monkeypatch.setattr(module, "sys", mac)


def install(monkeypatch: pytest.MonkeyPatch, wheel: Path, **options: Any) -> World:
    """Stub the native layer, import syphon-python's real package from ``wheel`` (an
    unpacked wheel) over it, and let ``_syphon`` load on this OS. Undone at test end."""
    from livediffusion_bridge import _syphon

    world = World(**options)
    monkeypatch.setattr(sys.modules[__name__], "_WORLD", world)
    for name, module in pyobjc_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in _syphon_module_names():  # a fresh import for a fresh world
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(wheel))
    importlib.invalidate_caches()
    syphon = importlib.import_module("syphon")
    importlib.import_module("syphon.utils.numpy")
    importlib.import_module("syphon.utils.raw")
    assert Path(syphon.__file__).is_relative_to(wheel), syphon.__file__
    for name in _syphon_module_names():  # recorded as new, so they are forgotten at test end
        monkeypatch.setitem(sys.modules, name, sys.modules.pop(name))
    monkeypatch.setattr(_syphon, "_load", _syphon._import_runtime)
    return world
