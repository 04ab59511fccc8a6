"""A contract fake of syphon-python 0.2.0 (Metal), with the bits of Metal and pyobjc it uses.

Syphon exists only on macOS, so Linux cannot run the transport against it. This fake installs
the modules ``livediffusion_bridge._syphon`` imports (``syphon`` with ``server``, ``client``,
``server_directory``, ``utils.numpy``, ``utils.raw``; ``Metal``; ``objc``) and enforces what
the real ones demand, as read in syphon-python 0.2.0 (cansik/syphon-python at 136fe15) and
Syphon-Framework (``SyphonMetalServer.m``, ``SyphonMetalClient.m``, ``SyphonClientBase.m``,
``SyphonClientConnectionManager.m``, ``SyphonServerDirectory.m``, ``SyphonServerBase.m``,
``SyphonCFMessageReceiver.m``):

* Pixels: a server's shared surface is BGRA8 and a client's ``new_frame_image`` is a BGRA8
  texture over it. Publishing a BGRA8 texture unflipped is a byte copy (Syphon's blit);
  an RGBA8 texture or ``is_flipped`` is redrawn (colours kept, rows reversed when flipped).
  ``copy_mtl_texture_to_image`` gives a read-only array in the texture's channel order.
* Discovery is late: a new server appears in ``SyphonServerDirectory.servers`` only when the
  *main* thread's run loop runs ``announce_delay`` seconds or more after the server started,
  and each run-loop pass delivers at most one notification (``runMode:beforeDate:`` returns
  after one event). Run loops of other threads have nothing attached: they return at once.
  ``servers`` runs the run loop for ``run_loop_interval`` first, 1.0 s unless changed.
  The directory has no ``close()`` and is no context manager (0.2.0 has neither).
* Servers vanish and return: ``stop()`` retires a server; the retirement reaches the
  directory and its clients on the next main-thread pass. A client's ``is_valid`` then
  stays false for good (``has_new_frame`` false, ``new_frame_image`` None); a client made
  for a server that is already gone is invalid from the start. An app that comes back is a
  new server with a new UUID. A crashed app (``ExternalServer.crash``) retires nothing: its
  clients stay valid and the directory drops it later. Surface changes (the first frame, a
  new size) also travel through the main run loop: until they are delivered a client sees
  no (new) surface.
* GPU timing: ``publish_frame_texture`` commits with ``commitAndWaitUntilSubmitted``; the
  copy out of the texture happens when the command buffer completes: once ``gpu_depth``
  (default 1) newer buffers of the same queue are committed, ``gpu_latency`` seconds after
  its commit, or on ``waitUntilCompleted``. Writing a texture that a pending command buffer
  still reads raises :class:`ContractError` (the published frame would tear).
* Autorelease pools: calls that return autoreleased Objective-C objects (command buffers,
  blit and render encoders, render-pass and texture descriptors, the directory's server
  array, a server description) count as a leak on any thread but the main one unless an
  ``objc.autorelease_pool()`` is open there: such a thread's pool never drains.
  ``World.pools`` counts the pools each thread opened.

Other processes are simulated by :class:`ExternalServer` (another app's server) and
:class:`ExternalClient` (another app reading one of ours); they bypass the Python API.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
import types
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pytest

BGRA8 = 80  # MTLPixelFormatBGRA8Unorm
RGBA8 = 70  # MTLPixelFormatRGBA8Unorm
UUID_KEY = "SyphonServerDescriptionUUIDKey"
NAME_KEY = "SyphonServerDescriptionNameKey"
APP_KEY = "SyphonServerDescriptionAppNameKey"

_WORLD: World | None = None


class ContractError(AssertionError):
    """The code under test broke a rule of the real library, Metal or Syphon."""


def _active() -> World:
    if _WORLD is None:
        raise RuntimeError("syphon_fake is not installed (call syphon_fake.install)")
    return _WORLD


def _swap(pixels: np.ndarray) -> np.ndarray:
    """RGBA <-> BGRA, as a new array."""
    return np.ascontiguousarray(pixels[..., (2, 1, 0, 3)])


# -- the system: servers, run loop, GPU, pools ------------------------------------------------


@dataclass(eq=False)
class Surface:
    """An IOSurface: BGRA8 pixels; ``seed`` changes with every frame drawn into it."""

    id: int
    pixels: np.ndarray
    seed: int = 0


@dataclass(eq=False)
class ServerState:
    uuid: str
    name: str
    app: str
    external: bool
    created_on: str
    alive: bool = True
    drawing: Surface | None = None  # what the server draws into
    delivered: Surface | None = None  # what its clients know about (via the main run loop)
    push_pending: bool = False
    clients: list[Any] = field(default_factory=list)
    published: list[int] = field(default_factory=list)  # id() of each texture published
    copies: Counter[str] = field(default_factory=Counter)  # "blit" or "render", per publish

    @property
    def raw(self) -> dict[str, Any]:
        return {
            UUID_KEY: self.uuid,
            NAME_KEY: self.name,
            APP_KEY: self.app,
            "SyphonServerDescriptionDictionaryVersionKey": 0,
            "SyphonServerDescriptionSurfacesKey": [{"SyphonSurfaceType": "IOSurface"}],
        }


class World:
    """Every Syphon server on the fake machine, the main run loop, the GPU and the pools."""

    def __init__(
        self,
        *,
        announce_delay: float = 0.15,
        gpu_latency: float = 0.05,
        gpu_depth: int = 1,
        app_name: str = "Python",
    ) -> None:
        self.lock = threading.RLock()
        self.announce_delay = announce_delay
        self.gpu_latency = gpu_latency
        self.gpu_depth = gpu_depth
        """How many committed buffers of one queue the GPU may be behind."""
        self.app_name = app_name
        """What Syphon announces as this process's app name."""
        self.servers: dict[str, ServerState] = {}
        self.visible: dict[str, Any] = {}  # uuid -> description, in announcement order
        self.clients: list[SyphonMetalClient] = []
        self.passes = 0  # main run-loop passes
        self.delivered: Counter[str] = Counter()
        self.leaks: Counter[str] = Counter()
        self.leaked: list[tuple[str, str]] = []
        self.pools: Counter[str] = Counter()
        self._depth = threading.local()
        self._events: list[tuple[float, int, str, str, Any]] = []
        self._order = itertools.count()
        self._surface_ids = itertools.count(1)
        self._pending: list[FakeCommandBuffer] = []

    # -- run loop (NSRunLoop on the main thread; Syphon's sources are only there) ----------

    def run_loop(self, seconds: float) -> bool:
        """One ``runMode:beforeDate:``: True when it handled an event."""
        if threading.current_thread() is not threading.main_thread():
            return False  # nothing is attached to this thread's run loop: returns at once
        deadline = time.monotonic() + max(seconds, 0.0)
        while True:
            with self.lock:
                self._tick()
                now = time.monotonic()
                due = [event for event in self._events if event[0] <= now]
                if due:
                    event = min(due)
                    self._events.remove(event)
                    self.passes += 1
                    self._deliver(event[2], event[3], event[4])
                    return True
                next_due = min((event[0] for event in self._events), default=deadline)
            if now >= deadline:
                with self.lock:
                    self.passes += 1
                return False
            time.sleep(max(min(deadline, next_due) - now, 0.0005))

    def _post(self, kind: str, uuid: str, payload: Any = None, *, delay: float = 0.0) -> None:
        self._events.append((time.monotonic() + delay, next(self._order), kind, uuid, payload))

    def _deliver(self, kind: str, uuid: str, payload: Any) -> None:
        state = self.servers[uuid]
        self.delivered[kind] += 1
        if kind == "announce" and state.alive:
            self.visible[uuid] = SyphonServerDescription(
                uuid, state.name, state.app, None, state.raw
            )
        elif kind == "retire":
            self.visible.pop(uuid, None)
            for client in state.clients:
                client._retired = True
        elif kind == "prune":  # the directory only: nobody tells the clients
            self.visible.pop(uuid, None)
        elif kind == "surface" and state.alive:
            state.delivered = payload

    # -- servers ------------------------------------------------------------------------

    def add_server(self, name: str, app: str, *, external: bool) -> ServerState:
        with self.lock:
            uuid = str(uuidlib.uuid4())
            state = ServerState(uuid, name, app, external, threading.current_thread().name)
            self.servers[uuid] = state
            self._post("announce", uuid, delay=self.announce_delay)
            return state

    def stop_server(self, state: ServerState) -> None:
        with self.lock:
            if state.alive:
                state.alive = False
                self._post("retire", state.uuid)

    def draw(self, state: ServerState, bgra: np.ndarray) -> None:
        """Put a frame into the server's surface (a new surface when the size changed)."""
        with self.lock:
            if not state.alive:
                return  # work finishing after stop() draws into nothing
            surface = state.drawing
            if surface is None or surface.pixels.shape != bgra.shape:
                surface = Surface(next(self._surface_ids), np.zeros_like(bgra))
                state.drawing, state.push_pending = surface, True
            surface.pixels[...] = bgra

    def publish(self, state: ServerState) -> None:
        """What ``-[SyphonServerBase publish]`` does: push a new surface's ID, count a frame."""
        with self.lock:
            if not state.alive or state.drawing is None:
                return
            if state.push_pending:
                state.push_pending = False
                self._post("surface", state.uuid, state.drawing)
            state.drawing.seed += 1

    def server_named(self, name: str, *, app: str | None = None) -> ServerState:
        with self.lock:
            hits = [
                s
                for s in self.servers.values()
                if s.alive and s.name == name and (app is None or s.app == app)
            ]
        assert len(hits) == 1, f"{len(hits)} live servers named {name!r}"
        return hits[0]

    # -- GPU ----------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for buffer in list(self._pending):
            if now - buffer.committed_at >= self.gpu_latency:
                buffer._complete()

    def reading(self, texture: FakeTexture) -> bool:
        with self.lock:
            self._tick()
            return any(texture in buffer.reads for buffer in self._pending)

    # -- autorelease pools --------------------------------------------------------------

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
        if thread is threading.main_thread() or getattr(self._depth, "n", 0) > 0:
            return
        with self.lock:
            self.leaks[thread.name] += 1
            self.leaked.append((thread.name, what))

    def worker_leaks(self) -> dict[str, int]:
        with self.lock:
            return dict(self.leaks)


# -- Metal ---------------------------------------------------------------------------------


class FakeTexture:
    def __init__(
        self, world: World, width: int, height: int, fmt: int, *, surface: Surface | None = None
    ) -> None:
        self._world = world
        self._format = fmt
        self._surface = surface  # a client's view of a server's IOSurface
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

    def _check_region(self, region: Any) -> None:
        if tuple(region) != ((0, 0, 0), (self.width(), self.height(), 1)):
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
        if self._world.reading(self):
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


class FakeTextureDescriptor:
    def __init__(self, fmt: int, width: int, height: int) -> None:
        self.pixelFormat, self.width, self.height = fmt, width, height

    @classmethod
    def texture2DDescriptorWithPixelFormat_width_height_mipmapped_(
        cls, fmt: int, width: int, height: int, mipmapped: bool
    ) -> FakeTextureDescriptor:
        _active().autoreleased("MTLTextureDescriptor")  # a convenience constructor
        return cls(int(fmt), int(width), int(height))


class FakeCommandBuffer:
    def __init__(self, queue: FakeCommandQueue) -> None:
        self.queue = queue
        self.state = "encoding"
        self.committed_at = 0.0
        self.reads: list[FakeTexture] = []
        self._work: list[Callable[[], None]] = []
        self._handlers: list[Callable[[Any], None]] = []

    def encode(self, texture: FakeTexture, work: Callable[[], None]) -> None:
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
                buffer._complete()  # a queue runs in order, at most gpu_depth buffers behind
            self.state, self.committed_at = "committed", time.monotonic()
            world._pending.append(self)

    def commitAndWaitUntilSubmitted(self) -> None:
        self.commit()

    def waitUntilCompleted(self) -> None:
        if self.state == "encoding":
            raise ContractError("waitUntilCompleted on an uncommitted buffer never returns")
        self._complete()

    def _complete(self) -> None:
        world = self.queue.world
        with world.lock:
            if self.state != "committed":
                return
            self.state = "completed"
            world._pending.remove(self)
            for work in self._work:
                work()
            for handler in self._handlers:
                handler(self)


class FakeCommandQueue:
    def __init__(self, world: World) -> None:
        self.world = world

    def commandBuffer(self) -> FakeCommandBuffer:
        self.world.autoreleased("MTLCommandBuffer")
        return FakeCommandBuffer(self)


class FakeDevice:
    def __init__(self, world: World) -> None:
        self.world = world

    def newTextureWithDescriptor_(self, descriptor: FakeTextureDescriptor) -> FakeTexture:
        if descriptor.pixelFormat not in (BGRA8, RGBA8):
            raise ContractError(f"the fake knows BGRA8/RGBA8 only, not {descriptor.pixelFormat}")
        return FakeTexture(self.world, descriptor.width, descriptor.height, descriptor.pixelFormat)

    def newCommandQueue(self) -> FakeCommandQueue:
        return FakeCommandQueue(self.world)


def MTLCreateSystemDefaultDevice() -> FakeDevice:
    return FakeDevice(_active())


def MTLRegionMake2D(x: int, y: int, width: int, height: int) -> Any:
    return ((x, y, 0), (width, height, 1))


def MTLRegion(origin: Any, size: Any) -> Any:
    return (tuple(origin), tuple(size))


# -- syphon.server -------------------------------------------------------------------------


class _ServerContext:
    """The Objective-C ``SyphonMetalServer`` (``server.context`` in syphon-python)."""

    def __init__(self, world: World, state: ServerState) -> None:
        self._world, self._state = world, state

    def serverDescription(self) -> dict[str, Any]:
        self._world.autoreleased("NSDictionary (serverDescription)")
        return dict(self._state.raw)

    def hasClients(self) -> bool:
        return bool(self._state.clients)

    def publish(self) -> None:
        self._world.publish(self._state)

    def stop(self) -> None:
        self._world.stop_server(self._state)

    def publishFrameTexture_onCommandBuffer_imageRegion_flipped_(
        self, texture: FakeTexture | None, buffer: FakeCommandBuffer, region: Any, flipped: bool
    ) -> None:
        world, state = self._world, self._state
        if texture is None:
            return  # SYPHONLOG and nothing else
        if not state.alive:
            raise ContractError("publish on a stopped server (its device and surface are gone)")
        if tuple(region) != (0, 0, texture.width(), texture.height()):
            raise ContractError(f"the fake publishes whole textures only, not {region}")
        fmt = texture.pixelFormat()
        blit = fmt == BGRA8 and not flipped
        if blit:
            world.autoreleased("MTLBlitCommandEncoder")
        else:
            world.autoreleased("MTLRenderPassDescriptor")
            world.autoreleased("MTLRenderCommandEncoder")

        def work() -> None:  # on the GPU, when the buffer completes: reads the texture now
            pixels = texture.pixels.copy()
            bgra = pixels if fmt == BGRA8 else _swap(pixels)
            world.draw(state, bgra[::-1] if flipped else bgra)

        buffer.encode(texture, work)
        buffer.addCompletedHandler_(lambda _buffer: self.publish())
        with world.lock:
            state.published.append(id(texture))
            state.copies["blit" if blit else "render"] += 1


class SyphonMetalServer:
    """syphon-python 0.2.0's ``syphon.server.SyphonMetalServer``."""

    def __init__(self, name: str, device: Any = None, command_queue: Any = None) -> None:
        world = _active()
        self.name = name
        self.device = device if device is not None else MTLCreateSystemDefaultDevice()
        if command_queue is None:
            command_queue = self.device.newCommandQueue()
        self.command_queue = command_queue
        self._state = world.add_server(name, world.app_name, external=False)
        world.autoreleased("NSDictionary (announce)")  # broadcastServerAnnounce
        self.context = _ServerContext(world, self._state)

    def publish_frame_texture(
        self,
        texture: Any,
        region: Any = None,
        size: Any = None,
        is_flipped: bool = False,
        command_buffer: Any = None,
        auto_commit: bool = True,
    ) -> None:
        if size is None:
            size = (texture.width(), texture.height())
        if region is None:
            region = (0, 0, *size)
        if command_buffer is None:
            command_buffer = self.command_queue.commandBuffer()
        self.context.publishFrameTexture_onCommandBuffer_imageRegion_flipped_(
            texture, command_buffer, region, is_flipped
        )
        if auto_commit:
            command_buffer.commitAndWaitUntilSubmitted()

    def publish(self) -> None:
        self.context.publish()

    def stop(self) -> None:
        self.context.stop()

    @property
    def has_clients(self) -> bool:
        return bool(self.context.hasClients())


# -- syphon.server_directory ---------------------------------------------------------------


@dataclass
class SyphonServerDescription:
    uuid: str
    name: str
    app_name: str
    icon: Any
    raw: Any


class SyphonServerNotification(Enum):
    Announce = "SyphonServerAnnounceNotification"
    Update = "SyphonServerUpdateNotification"
    Retire = "SyphonServerRetireNotification"


class SyphonServerDirectory:
    """syphon-python 0.2.0's wrapper over the shared directory: no close(), no ``with``."""

    def __init__(self) -> None:
        self._world = _active()
        self.run_loop_interval: float = 1.0

    @property
    def servers(self) -> list[SyphonServerDescription]:
        self.update_run_loop()
        world = self._world
        world.autoreleased("NSArray (sharedDirectory.servers)")
        with world.lock:
            return list(world.visible.values())

    def update_run_loop(self) -> None:
        self._world.run_loop(self.run_loop_interval)

    def servers_matching_name(
        self, name: str | None = None, app_name: str | None = None
    ) -> list[SyphonServerDescription]:
        return [
            s
            for s in self.servers
            if (name is not None and s.name == name)
            or (app_name is not None and s.app_name == app_name)
        ]


# -- syphon.client -------------------------------------------------------------------------


class SyphonMetalClient:
    """syphon-python 0.2.0's ``syphon.client.SyphonMetalClient``, with the framework's rules."""

    def __init__(self, description: SyphonServerDescription, device: Any = None) -> None:
        world = _active()
        if not isinstance(description, SyphonServerDescription):
            raise AttributeError(
                f"{type(description).__name__} has no 'raw': pass a directory entry"
            )
        self._world = world
        self.device = device if device is not None else MTLCreateSystemDefaultDevice()
        self.context = object()  # the Objective-C client (never nil here)
        self.created_on = threading.current_thread().name
        self.used_on: set[str] = set()
        self.stopped = False
        with world.lock:
            self.state = world.servers[description.uuid]
            # The framework messages the server at once; a server that is gone leaves the
            # client invalid from the start.
            self._retired = not self.state.alive
            self.state.clients.append(self)
            world.clients.append(self)
        self._surface: Surface | None = None
        self._seed = -1
        self._texture: FakeTexture | None = None

    def _use(self) -> None:
        if self.stopped:
            raise ContractError("client used after stop()")
        self.used_on.add(threading.current_thread().name)

    @property
    def is_valid(self) -> bool:
        return not self.stopped and not self._retired

    @property
    def has_new_frame(self) -> bool:
        self._use()
        with self._world.lock:
            surface = None if self._retired else self.state.delivered
            return surface is not None and (
                surface is not self._surface or surface.seed != self._seed
            )

    @property
    def new_frame_image(self) -> FakeTexture | None:
        self._use()
        world = self._world
        with world.lock:
            surface = None if self._retired else self.state.delivered
            if surface is None:
                return None
            if surface is not self._surface:  # a new IOSurface: a new texture over it
                world.autoreleased("MTLTextureDescriptor (newFrameImage)")
                self._texture = FakeTexture(
                    world, surface.pixels.shape[1], surface.pixels.shape[0], BGRA8, surface=surface
                )
                self._surface = surface
            self._seed = surface.seed
            return self._texture

    def stop(self) -> None:
        with self._world.lock:
            if not self.stopped:
                self.stopped = True
                self.state.clients.remove(self)


# -- syphon.utils (0.2.0's code paths, over the fake Metal) --------------------------------


def create_mtl_texture(device: Any, width: int, height: int, pixel_format: int = RGBA8) -> Any:
    descriptor = FakeTextureDescriptor.texture2DDescriptorWithPixelFormat_width_height_mipmapped_(
        pixel_format, width, height, False
    )
    return device.newTextureWithDescriptor_(descriptor)


def copy_bytes_to_mtl_texture(data: bytes, texture: Any) -> None:
    region = MTLRegion((0, 0, 0), (texture.width(), texture.height(), 1))
    texture.replaceRegion_mipmapLevel_withBytes_bytesPerRow_(region, 0, data, texture.width() * 4)


def copy_mtl_texture_to_bytes(texture: Any, buffer: Any = None) -> bytes:
    if texture.pixelFormat() not in (BGRA8, RGBA8):
        raise Exception("Not correct pixel format (expected BGRA8Unorm or RGBA8Unorm)")
    bytes_per_row = texture.width() * 4
    bytes_per_image = bytes_per_row * texture.height()
    if buffer is None:
        buffer = bytearray(bytes_per_image)
    texture.getBytes_bytesPerRow_bytesPerImage_fromRegion_mipmapLevel_slice_(
        buffer,
        bytes_per_row,
        bytes_per_image,
        MTLRegionMake2D(0, 0, texture.width(), texture.height()),
        0,
        0,
    )
    return bytes(buffer)


def copy_image_to_mtl_texture(image: np.ndarray, texture: Any) -> None:
    assert len(image.shape) == 3, "Image has to be of shape (m, n, 4)"
    assert image.shape[2] == 4, "Image has to be of shape (m, n, 4)"
    copy_bytes_to_mtl_texture(image.tobytes(), texture)


def copy_mtl_texture_to_image(texture: Any) -> np.ndarray:
    data = copy_mtl_texture_to_bytes(texture)
    return np.frombuffer(data, dtype=np.uint8).reshape((texture.height(), texture.width(), 4))


# -- other processes ------------------------------------------------------------------------


class ExternalServer:
    """Another app's Syphon server (a camera, a VJ host): frames go straight to its surface."""

    def __init__(self, world: World, app: str, name: str) -> None:
        self.world = world
        self.state = world.add_server(name, app, external=True)

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

    def crash(self, *, prune_after: float = 0.2) -> None:
        """The app dies without stopping its server: no retirement reaches its clients (they
        stay "valid" with no new frames); the directory drops the server once an announce
        request goes unanswered (6 s in SyphonServerDirectory.m, ``prune_after`` here)."""
        with self.world.lock:
            self.state.alive = False
            self.world._post("prune", self.state.uuid, delay=prune_after)


class ExternalClient:
    """Another app reading one of our servers, as RGBA (what it would show)."""

    def __init__(self, world: World, state: ServerState) -> None:
        self.world, self.state = world, state
        with world.lock:
            state.clients.append(self)

    @property
    def frames(self) -> int:
        with self.world.lock:
            surface = self.state.delivered
            return 0 if surface is None else surface.seed

    def frame(self) -> np.ndarray | None:
        with self.world.lock:
            surface = self.state.delivered
            return None if surface is None or surface.seed == 0 else _swap(surface.pixels)


# -- installing -----------------------------------------------------------------------------


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def modules() -> dict[str, types.ModuleType]:
    """Fresh fake modules: ``syphon`` and its submodules, ``Metal``, ``objc``."""
    metal = _module(
        "Metal",
        MTLPixelFormatBGRA8Unorm=BGRA8,
        MTLPixelFormatRGBA8Unorm=RGBA8,
        MTLCreateSystemDefaultDevice=MTLCreateSystemDefaultDevice,
        MTLTextureDescriptor=FakeTextureDescriptor,
        MTLRegion=MTLRegion,
        MTLRegionMake2D=MTLRegionMake2D,
    )
    objc = _module("objc", autorelease_pool=lambda: _active().autorelease_pool())
    server = _module("syphon.server", SyphonMetalServer=SyphonMetalServer)
    client = _module("syphon.client", SyphonMetalClient=SyphonMetalClient)
    directory = _module(
        "syphon.server_directory",
        SyphonServerDirectory=SyphonServerDirectory,
        SyphonServerDescription=SyphonServerDescription,
        SyphonServerNotification=SyphonServerNotification,
    )
    raw = _module(
        "syphon.utils.raw",
        create_mtl_texture=create_mtl_texture,
        copy_bytes_to_mtl_texture=copy_bytes_to_mtl_texture,
        copy_mtl_texture_to_bytes=copy_mtl_texture_to_bytes,
    )
    numpy_utils = _module(
        "syphon.utils.numpy",
        copy_image_to_mtl_texture=copy_image_to_mtl_texture,
        copy_mtl_texture_to_image=copy_mtl_texture_to_image,
    )
    utils = _module("syphon.utils", raw=raw, numpy=numpy_utils, __path__=[])
    syphon = _module(
        "syphon",
        __path__=[],
        server=server,
        client=client,
        server_directory=directory,
        utils=utils,
        SyphonMetalServer=SyphonMetalServer,
        SyphonMetalClient=SyphonMetalClient,
        SyphonServerDirectory=SyphonServerDirectory,
        SyphonServerNotification=SyphonServerNotification,
    )
    return {
        "Metal": metal,
        "objc": objc,
        "syphon": syphon,
        "syphon.server": server,
        "syphon.client": client,
        "syphon.server_directory": directory,
        "syphon.utils": utils,
        "syphon.utils.raw": raw,
        "syphon.utils.numpy": numpy_utils,
    }


def install(monkeypatch: pytest.MonkeyPatch, **options: Any) -> World:
    """Put the fakes in ``sys.modules`` and let ``_syphon`` load them on this OS.

    Only the platform check is bypassed: ``_syphon._load`` becomes ``_import_runtime``, the
    same imports it makes on macOS. Everything is undone when the test ends.
    """
    from livediffusion_bridge import _syphon

    world = World(**options)
    monkeypatch.setattr(sys.modules[__name__], "_WORLD", world)
    for name, module in modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(_syphon, "_load", _syphon._import_runtime)
    return world
