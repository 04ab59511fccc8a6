"""Syphon sources and sinks (macOS) through syphon-python 0.2.0 (Metal), imported on first use.

Written against the library's released code: the 0.2.0 wheel (``syphon/`` and the
Syphon.framework it bundles, whose headers match Syphon/Syphon-Framework at b834acd). On
Linux the tests import that wheel's own Python and stub only what is native under it
(PyObjC, Metal, the framework's classes; ``tests/syphon_native.py``, each behaviour cited).

* ``server_directory.py``: ``SyphonServerDirectory()`` wraps the framework's process-wide
  ``sharedDirectory``; it has ``close()`` (drops the observers it added) and is a context
  manager, which is how this module uses it. Its ``servers`` property first runs the calling
  thread's run loop for ``run_loop_interval`` seconds, *1.0 by default*, so it is set to 0
  here. ``update_run_loop`` is one ``NSRunLoop.currentRunLoop().runMode:beforeDate:``, which
  returns after the first event it handles: pumping once sees at most one announcement.
* ``SyphonServerDirectory.m``: discovery is NSDistributedNotificationCenter traffic
  (announce, retire, announce requests that other apps answer later), and distributed
  notifications arrive only while the *main* thread runs its run loop. That is the one thing
  that needs the main thread (:func:`pump`, called by ``livediffusion_bridge.pump_events``):
  without it we see no servers, and apps that start after our server never learn of it.
* Frames do not need it. ``SyphonCFMessageReceiver.m`` puts every server <-> client
  message port on a dispatch queue, so new surfaces, new frames and a server's retirement
  reach a client on Syphon's own thread whatever the main thread does.
  ``SyphonClientBase.m``: ``hasNewFrame`` compares the frame ID of the last ``newFrameImage``
  with the connection's, which moves with each new surface and each change of the surface's
  seed (``SyphonClientConnectionManager.m``); every ``newFrameImage`` resets it. Reading
  only when it is set delivers each server frame once. ``is_valid`` turns false when the
  server retires and never turns true again; a server that comes back is a new server (new
  UUID) and needs a new client, which is what the reconnect loop makes.
* ``client.py`` + ``SyphonMetalClient.m``: ``new_frame_image`` is a ``MTLPixelFormatBGRA8Unorm``
  texture over the server's IOSurface (the same texture object until the surface changes),
  ``None`` before the first surface is known. The wheel's client and server raise
  ``RuntimeError`` when the framework returns nil.
* ``server.py``: ``SyphonMetalServer(name)`` makes its own device and command queue;
  ``publish_frame_texture`` encodes Syphon's copy on a command buffer and commits it with
  ``commitAndWaitUntilSubmitted``: *submitted*, not completed, so the GPU may still be
  reading our texture when it returns. We alternate two textures and, before writing one,
  wait for the command buffer that last read it (normally finished long before).
* ``SyphonMetalServer.m``: the shared surface is BGRA8Unorm. A BGRA8, unflipped texture is
  copied with a blit; anything else (RGBA8, ``is_flipped``) is redrawn by a render pass
  (``SyphonServerRendererMetal.m``, which flips vertically). We upload BGRA, swizzled (and
  flipped, for ``flip``) on the CPU in the one copy we make anyway, so the server blits.
* Autoreleased objects on every frame: ``publish_frame_texture`` asks the queue for a
  ``commandBuffer`` (autoreleased, says Metal's header) and the server makes a blit encoder;
  ``servers`` returns ``[NSArray arrayWithArray:]`` after an ``NSDate`` for the run loop;
  ``newFrameImage`` makes a texture descriptor per new surface. A worker thread's autorelease
  pool never drains (Apple: "if you spawn a secondary thread, you must create your own
  autorelease pool block"), so each step here runs in pyobjc's ``objc.autorelease_pool()``.
* ``utils/raw.py``, ``utils/numpy.py``: ``create_mtl_texture`` takes a pixel format (RGBA8 by
  default); ``copy_image_to_mtl_texture`` asserts ``(h, w, 4)`` and uploads
  ``image.tobytes()`` with ``replaceRegion``; ``copy_mtl_texture_to_image`` returns the bytes
  in the texture's own channel order as a read-only array over ``bytes``, so the source
  swaps into a fresh array of its own.

Never our own output: with the Mac defaults (``syphon://`` in, ``syphon://livediffusion``
out) a source that takes "any server" would take ours when the input app quits, and feed the
effect back into itself. Every server a :class:`SyphonSink` creates is recorded in a
process-wide registry (its UUID, kept after it stops, since the directory lists a stopped
server until its retirement has been pumped); sources skip those servers unless the URI says
``?own=1`` (loopback self-tests).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._base import LiveSink, LiveSource, SourceLost
from ._listing import SourceInfo
from ._options import Options
from .errors import BackendUnavailableError, SourceNotFoundError, TransportError
from .frame import Frame, Pixels
from .uri import SourceURI

__all__ = [
    "SyphonSink",
    "SyphonSource",
    "is_own_server",
    "list_sources",
    "open_sink",
    "open_source",
    "pick",
    "pump",
]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "livediffusion[mac]"'
DEFAULT_SERVER_NAME = "livediffusion"
_PUMP_SLICE = 0.05
"""Longest single run of the run loop while pumping: ``runMode:beforeDate:`` returns after
each handled event anyway, this only bounds how late a deadline can be noticed."""
_LISTED_CHECK = 1.0
"""How often a connected source checks that its server is still in the directory: an app that
crashed sends its clients no retirement, but the directory drops its server once it leaves
an announce request unanswered (SyphonServerDirectory.m: 6 s after any app asks)."""


# -- loading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Runtime:
    """The libraries this transport talks to, imported together on first use."""

    syphon: Any
    metal: Any
    objc: Any

    def pool(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh autorelease pool, drained on exit (pyobjc's ``objc.autorelease_pool``)."""
        pool: contextlib.AbstractContextManager[Any] = self.objc.autorelease_pool()
        return pool

    @property
    def bgra(self) -> int:
        return int(self.metal.MTLPixelFormatBGRA8Unorm)


def _load() -> _Runtime:
    """syphon-python, Metal and objc; raises unless this is macOS with syphon-python installed."""
    if sys.platform != "darwin":
        raise BackendUnavailableError(
            f"Syphon needs macOS (this is {sys.platform}); on macOS: {INSTALL_HINT}"
        )
    return _import_runtime()


def _import_runtime() -> _Runtime:
    """The imports themselves (the Linux tests call this over a stubbed native layer)."""
    try:
        import Metal
        import syphon
        import syphon.utils.numpy
        import syphon.utils.raw

        objc = importlib.import_module("objc")  # pyobjc-core, a dependency of syphon-python
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Syphon needs the syphon-python package: {INSTALL_HINT} ({exc})"
        ) from exc
    return _Runtime(syphon=syphon, metal=Metal, objc=objc)


# -- our own servers -----------------------------------------------------------------------


class _OwnServers:
    """The Syphon servers this process's sinks created, so that no source ever reads them.

    UUIDs identify a server exactly and are never reused, so they stay recorded after the
    server stops. When a server's description cannot be read, its app and server name stand
    in while it runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uuids: set[str] = set()
        self._names: list[tuple[str | None, str]] = []

    def add(self, uuid: str, app: str | None, name: str) -> tuple[str | None, str] | None:
        """Record a new server; returns the name entry to :meth:`remove` at stop, if any."""
        with self._lock:
            if uuid:
                self._uuids.add(uuid)
                return None
            entry = (app, name)
            self._names.append(entry)
            return entry

    def remove(self, entry: tuple[str | None, str] | None) -> None:
        if entry is not None:
            with self._lock, contextlib.suppress(ValueError):
                self._names.remove(entry)

    def owns(self, server: Any) -> bool:
        uuid, name, app = str(server.uuid or ""), str(server.name or ""), str(server.app_name or "")
        with self._lock:
            if uuid and uuid in self._uuids:
                return True
            return any(n == name and a in (None, app) for a, n in self._names)


_OWN = _OwnServers()


def is_own_server(server: Any) -> bool:
    """Whether a directory entry is one of the servers this process's Syphon sinks publish."""
    return _OWN.owns(server)


def _identity(server: Any, name: str) -> tuple[str, str | None]:
    """The UUID and app name Syphon announces for a server we created (the wheel's
    ``server_description``: ``SyphonServerBase``'s ``serverDescription``)."""
    try:
        description = server.server_description
        uuid, app = str(description.uuid or ""), str(description.app_name or "")
    except Exception:  # unreadable: fall back on the names
        log.debug("Syphon server %r: its description is unreadable", name, exc_info=True)
        return "", None
    return uuid, app or None


# -- discovery -----------------------------------------------------------------------------


def _describe(server: Any) -> str:
    """How a server is shown and addressed: ``App - Name``, or whichever part is set."""
    name, app = str(server.name or ""), str(server.app_name or "")
    if name and app:
        return f"{app} - {name}"
    return name or app


def _matching(servers: list[Any], target: str) -> list[Any]:
    """The servers ``target`` names, best key first: ``App - Name``, server name, app name,
    UUID. Many apps publish a server with an empty name, so the app name alone must work."""
    if not target:
        return list(servers)
    keys: tuple[Callable[[Any], str], ...] = (
        _describe,
        lambda s: str(s.name or ""),
        lambda s: str(s.app_name or ""),
        lambda s: str(s.uuid or ""),
    )
    for key in keys:
        hits = [server for server in servers if key(server) == target]
        if hits:
            return hits
    return []


def pick(
    servers: Iterable[Any], target: str, *, own: bool = False, skip: Iterable[str] = ()
) -> Any | None:
    """The server ``target`` names (an empty target takes the first), never one of ours
    unless ``own``, never one whose UUID is in ``skip``."""
    skipped = set(skip)
    usable = [
        server
        for server in servers
        if str(server.uuid or "") not in skipped and (own or not is_own_server(server))
    ]
    hits = _matching(usable, target)
    return hits[0] if hits else None


def _directory(runtime: _Runtime) -> Any:
    """A directory wrapper; its owner closes it (``with``, or ``close()``)."""
    directory = runtime.syphon.SyphonServerDirectory()
    # `servers` runs this thread's run loop for run_loop_interval first: 1.0 s by default.
    directory.run_loop_interval = 0.0
    return directory


def _run_loop_for(runtime: _Runtime, directory: Any, seconds: float) -> None:
    """Run the calling thread's run loop until ``seconds`` have passed.

    One ``update_run_loop`` returns after the first event it handles, and at once on a
    thread whose run loop has nothing attached (every thread but the main one, for Syphon):
    so pump repeatedly, and never spin where there is nothing to pump.
    """
    deadline = time.monotonic() + max(seconds, 0.0)
    while True:
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            return
        directory.run_loop_interval = min(remaining, _PUMP_SLICE)
        with runtime.pool():
            directory.update_run_loop()
        if time.monotonic() - now < 0.001:
            time.sleep(min(0.002, max(deadline - time.monotonic(), 0.0)))


def pump(seconds: float) -> None:
    """Run the calling thread's Cocoa run loop for ``seconds``.

    Call it on the main thread (``livediffusion_bridge.pump_events`` does): Syphon's discovery
    (other apps' servers appearing and retiring, and our servers answering apps that start
    later) arrives there, and only while it runs. Frames do not need it.
    """
    runtime = _load()
    with _directory(runtime) as directory:
        _run_loop_for(runtime, directory, seconds)


def _servers(runtime: _Runtime, directory: Any) -> list[Any]:
    with runtime.pool():
        return list(directory.servers)


def list_sources(timeout: float) -> list[SourceInfo]:
    """Every Syphon server but ours, after pumping the run loop for ``timeout`` seconds:
    other apps answer a directory's announce request late, one notification per pump."""
    runtime = _load()
    with _directory(runtime) as directory:
        _run_loop_for(runtime, directory, timeout)
        directory.run_loop_interval = 0.0
        servers = _servers(runtime, directory)
    return [
        SourceInfo(uri=str(SourceURI("syphon", _describe(s))), kind="syphon", name=_describe(s))
        for s in servers
        if not is_own_server(s)
    ]


# -- pixels --------------------------------------------------------------------------------


def _swap_red_blue(source: Pixels, out: Pixels, *, flip: bool) -> Pixels:
    """RGBA -> BGRA or BGRA -> RGBA (the same swap) into ``out``, upside down if ``flip``."""
    view = source[::-1] if flip else source
    out[..., :3] = view[..., 2::-1]
    out[..., 3] = view[..., 3]
    return out


# -- source --------------------------------------------------------------------------------


def open_source(uri: SourceURI) -> SyphonSource:
    options = Options(uri, role="source")
    wait = options.number("wait", 0.0, minimum=0.0, maximum=600.0)
    flip = options.flag("flip", False)
    own = options.flag("own", False)
    options.finish()
    return SyphonSource(str(uri), target=uri.target.strip(), wait=wait, flip=flip, own=own)


class SyphonSource(LiveSource):
    """Receives from one Syphon server (``syphon://App - Name``, a server or app name, a
    UUID) or from the first one there is (``syphon://``), never from our own sinks' servers.

    The Metal client is made on the reading thread and needs nothing from the main thread:
    Syphon delivers its frames and the server's retirement on its own queue (only finding
    the server needs the main thread's run loop). A frame is read when ``has_new_frame``
    says the server drew one since the last read, so an unchanged frame is never delivered
    twice; it is read back from its BGRA texture and swapped to RGBA; ``flip`` turns it
    upside down, for senders (OpenGL ones) whose pictures arrive that way. A server that
    quits is waited for; when it comes back (as a new server, at any size) the source
    picks it up.
    """

    def __init__(
        self,
        uri: str,
        *,
        target: str,
        wait: float = 0.0,
        flip: bool = False,
        own: bool = False,
    ) -> None:
        self._rt = _load()
        if target:
            describe = f"Syphon server {target!r}"
        else:
            describe = "any Syphon server" if own else "any Syphon server (not our own)"
        super().__init__(uri, describe=describe)
        self._target = target
        self._flip = flip
        self._own = own
        self._directory: Any = None
        self._client: Any = None
        self._server_uuid = ""
        self._server_name = ""
        self._dead: set[str] = set()  # servers that retired: the directory may still list them
        self._next_listed_check = 0.0
        if wait > 0:
            self._wait_until_visible(wait)

    def _wait_until_visible(self, wait: float) -> None:
        """Fail at open when nothing matching appears within ``wait`` s (no client yet: that
        is made on the reading thread). Pumps while waiting when this is the main thread."""
        on_main = threading.current_thread() is threading.main_thread()
        deadline = time.monotonic() + wait
        with _directory(self._rt) as directory:
            while True:
                servers = _servers(self._rt, directory)
                if pick(servers, self._target, own=self._own) is not None:
                    return
                if time.monotonic() >= deadline:
                    seen = [_describe(s) for s in servers if self._own or not is_own_server(s)]
                    raise SourceNotFoundError(
                        f"no Syphon server matching {self._target!r} within {wait:g} s "
                        f"(our own outputs never count); visible: {', '.join(seen) or 'none'}"
                    )
                if on_main:
                    _run_loop_for(self._rt, directory, 0.05)
                else:
                    time.sleep(0.05)  # the main thread pumps (livediffusion serve does)

    def _connect(self) -> bool:
        runtime = self._rt
        if self._directory is None:
            self._directory = _directory(runtime)
        with runtime.pool():
            servers = list(self._directory.servers)
            listed = {str(s.uuid or "") for s in servers}
            self._dead &= listed  # forget retired servers once the directory did
            server = pick(servers, self._target, own=self._own, skip=self._dead)
            if server is None:
                if self._target and pick(servers, self._target, own=True, skip=self._dead):
                    raise TransportError(
                        f"the only Syphon server matching {self._target!r} is this process's "
                        "own output; reading it would feed the effect back into itself"
                    )
                return False
            try:  # the wheel raises RuntimeError when the framework returns nil
                client = runtime.syphon.SyphonMetalClient(server)
            except Exception as exc:
                raise TransportError(
                    f"Syphon could not connect to {_describe(server)!r}: {exc}"
                ) from exc
        self._client = client
        self._server_uuid = str(server.uuid or "")
        self._server_name = _describe(server)
        self._next_listed_check = time.monotonic() + _LISTED_CHECK
        log.info("Syphon: receiving %r", self._server_name)
        return True

    def _grab(self, deadline: float) -> Frame | None:
        del deadline  # one look at the client: it never blocks
        runtime, client = self._rt, self._client
        with runtime.pool():
            if not client.is_valid:  # the server retired; it never becomes valid again
                self._dead.add(self._server_uuid)
                raise SourceLost(f"Syphon server {self._server_name!r} stopped")
            self._check_listed()
            if not client.has_new_frame:  # nothing drawn since the last read: not again
                return None
            texture = client.new_frame_image  # resets has_new_frame
            if texture is None:  # no surface yet
                return None
            image = runtime.syphon.utils.numpy.copy_mtl_texture_to_image(texture)  # BGRA8
        pixels: Pixels = np.empty(image.shape, dtype=np.uint8)
        _swap_red_blue(image, pixels, flip=self._flip)
        return Frame(pixels, time.monotonic())

    def _check_listed(self) -> None:
        now = time.monotonic()
        if now < self._next_listed_check:
            return
        self._next_listed_check = now + _LISTED_CHECK
        if self._server_uuid not in {str(s.uuid or "") for s in self._directory.servers}:
            self._dead.add(self._server_uuid)
            raise SourceLost(f"Syphon server {self._server_name!r} left the directory")

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with self._rt.pool():
                client.stop()

    def _shutdown(self) -> None:
        directory, self._directory = self._directory, None
        if directory is not None:
            directory.close()


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> SyphonSink:
    options = Options(uri, role="sink")
    flip = options.flag("flip", False)
    options.finish()
    return SyphonSink(str(uri), name=uri.target.strip() or DEFAULT_SERVER_NAME, flip=flip)


class SyphonSink(LiveSink):
    """A Syphon Metal server called ``name``, created on the publishing thread at the first
    frame and kept until ``close()``: Syphon follows size changes itself, and hosts keep
    their connection (a new server would be a new UUID they must reselect).

    Frames go out as BGRA (Syphon's own format, so the server copies them with a blit)
    through two textures used in turn: publishing returns before the GPU has read the
    texture. Row 0 is the top of the picture; ``flip`` turns it upside down for hosts that
    disagree.
    """

    def __init__(self, uri: str, *, name: str, flip: bool = False) -> None:
        self._rt = _load()  # a missing library fails at open, not at the first frame
        super().__init__(uri)
        self.name = name
        self._flip = flip
        self._server: Any = None
        self._own_entry: tuple[str | None, str] | None = None
        self._textures: list[Any] = []
        self._readers: list[Any] = []  # per texture: the command buffer that last read it
        self._next = 0
        self._staging: Pixels | None = None
        self.uuid = ""
        """Our server's UUID once it exists (how the directory and other apps know it)."""
        self._shown: str | None = None

    @property
    def shown_as(self) -> str | None:
        return self._shown

    @property
    def has_clients(self) -> bool:
        with self._lock:
            return self._server is not None and bool(self._server.has_clients)

    def _create(self, width: int, height: int) -> None:
        runtime = self._rt
        with runtime.pool():
            if self._server is None:
                self._start_server()
            device = self._server.device
            textures = [
                runtime.syphon.utils.raw.create_mtl_texture(device, width, height, runtime.bgra)
                for _ in range(2)
            ]
        if any(texture is None for texture in textures):
            raise TransportError(f"Metal could not create a {width}x{height} texture")
        self._textures = textures
        self._readers = [None, None]
        self._next = 0
        self._staging = np.empty((height, width, 4), dtype=np.uint8)

    def _start_server(self) -> None:
        try:  # the wheel raises RuntimeError when the framework returns nil
            server = self._rt.syphon.SyphonMetalServer(self.name)
        except Exception as exc:
            raise TransportError(f"Syphon could not start server {self.name!r}: {exc}") from exc
        uuid, app = _identity(server, self.name)
        self._own_entry = _OWN.add(uuid, app, self.name)
        self._server, self.uuid = server, uuid
        # as hosts list it (``App - Name``, see _describe); the server logs it once
        listed = f"{app} - {self.name}" if app else self.name
        self._shown = f"Syphon server {listed!r}"

    def _send(self, pixels: Pixels) -> None:
        runtime, server = self._rt, self._server
        index = self._next
        self._next = 1 - index
        texture, staging = self._textures[index], self._staging
        assert staging is not None  # _create made it
        with runtime.pool():
            reader = self._readers[index]
            if reader is not None:  # normally done a frame ago; a stalled GPU waits here
                reader.waitUntilCompleted()
            runtime.syphon.utils.numpy.copy_image_to_mtl_texture(
                _swap_red_blue(pixels, staging, flip=self._flip), texture
            )
            command_buffer = server.command_queue.commandBuffer()
            server.publish_frame_texture(texture, command_buffer=command_buffer)
            self._readers[index] = command_buffer

    def _destroy(self) -> None:
        """Release the textures of this size; the server lives on until :meth:`close`."""
        readers, self._readers = self._readers, []
        self._textures, self._staging = [], None
        with self._rt.pool():
            for reader in readers:
                if reader is not None:
                    reader.waitUntilCompleted()

    def close(self) -> None:
        """Stop publishing and retire the server. Safe to call twice, from any thread."""
        super().close()
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            with self._rt.pool():
                server.stop()
            _OWN.remove(self._own_entry)
