"""Syphon sources and sinks (macOS) through syphon-python 0.2 (Metal), imported on first use.

Written against syphon-python 0.2.0's source; not run on this project's Linux machines.

A process without a UI has no running Cocoa event loop, and Syphon's discovery travels
through it: the main thread must call :func:`livediffusion_bridge.pump_events` regularly,
or other applications will not see our server (and we may not see theirs). The sink and
the listing also pump whenever they happen to run on the main thread.
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

__all__ = ["SyphonSink", "SyphonSource", "list_sources", "open_sink", "open_source", "pump"]

INSTALL_HINT = 'pip install "livediffusion[mac]"'
DEFAULT_SERVER_NAME = "livediffusion"
_POLL = 0.002
"""Sleep between checks for a new frame: Syphon signals frames on its own thread, so polling
a cheap flag keeps ``read`` simple; 2 ms is well under a frame at any host frame rate."""
_LOOKUP_INTERVAL = 0.25


def _load() -> Any:
    """The ``syphon`` package; raises unless this is macOS with syphon-python installed."""
    if sys.platform != "darwin":
        raise BackendUnavailableError(
            f"Syphon needs macOS (this is {sys.platform}); on macOS: {INSTALL_HINT}"
        )
    try:
        import syphon
        import syphon.utils.numpy
        import syphon.utils.raw
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Syphon needs the syphon-python package: {INSTALL_HINT} ({exc})"
        ) from exc
    return syphon


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def pump(seconds: float) -> None:
    """Run the calling thread's Cocoa run loop for up to ``seconds`` (main thread: discovery)."""
    syphon = _load()
    directory = syphon.SyphonServerDirectory()
    try:
        directory.run_loop_interval = max(seconds, 0.0)
        directory.update_run_loop()
    finally:
        directory.close()


def _describe(server: Any) -> str:
    """How a server is shown and addressed: ``App - Name``, or whichever part is set."""
    name, app = str(server.name or ""), str(server.app_name or "")
    if name and app:
        return f"{app} - {name}"
    return name or app


def pick(servers: list[Any], target: str) -> Any | None:
    """The server ``target`` names: by ``App - Name``, server name, app name, or UUID.

    Many apps publish a server with an empty name, so the app name alone must work too.
    An empty target takes the first server.
    """
    if not servers:
        return None
    if not target:
        return servers[0]
    for key in (_describe, lambda s: str(s.name or ""), lambda s: str(s.app_name or "")):
        for server in servers:
            if key(server) == target:
                return server
    for server in servers:
        if str(server.uuid or "") == target:
            return server
    return None


def list_sources(timeout: float) -> list[SourceInfo]:
    syphon = _load()
    with syphon.SyphonServerDirectory() as directory:
        # One pump is enough for servers already announced; the timeout caps it.
        directory.run_loop_interval = min(max(timeout, 0.0), 0.1)
        servers = directory.servers
    return [
        SourceInfo(uri=str(SourceURI("syphon", _describe(s))), kind="syphon", name=_describe(s))
        for s in servers
    ]


# -- source --------------------------------------------------------------------------------


def open_source(uri: SourceURI) -> SyphonSource:
    options = Options(uri, role="source")
    wait = options.number("wait", 0.0, minimum=0.0, maximum=600.0)
    options.finish()
    return SyphonSource(str(uri), target=uri.target.strip(), wait=wait)


class SyphonSource(FrameSource):
    """Receives from one Syphon server through a Metal client.

    Textures are read back to the CPU once per new frame (syphon-python copies through
    ``bytes``) and swizzled to RGBA when the server's surface is BGRA.
    """

    def __init__(self, uri: str, *, target: str, wait: float = 0.0) -> None:
        self.uri = uri
        self._target = target
        self._syphon = _load()
        import Metal

        self._bgra = int(Metal.MTLPixelFormatBGRA8Unorm)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._client: Any = None
        self._next_lookup = 0.0
        self._directory: Any = self._syphon.SyphonServerDirectory()
        self._directory.run_loop_interval = 0.0
        try:
            deadline = time.monotonic() + wait
            while not self._connect() and time.monotonic() < deadline:
                time.sleep(0.05)
            if wait > 0 and self._client is None:
                seen = [_describe(s) for s in self._directory.servers]
                raise SourceNotFoundError(
                    f"no Syphon server matching {target!r} within {wait:g} s; "
                    f"visible: {', '.join(seen) or 'none'}"
                )
        except BaseException:
            self.close()
            raise

    def _connect(self) -> bool:
        server = pick(self._directory.servers, self._target)
        if server is None:
            return False
        try:
            self._client = self._syphon.SyphonMetalClient(server)
        except RuntimeError as exc:
            raise TransportError(
                f"Syphon could not connect to {_describe(server)!r}: {exc}"
            ) from exc
        return True

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

    def _step(self) -> Frame | None:
        client = self._client
        if client is not None and not client.is_valid:
            client.stop()  # the server went away; look for it again
            self._client = client = None
        if client is None:
            now = time.monotonic()
            if now < self._next_lookup:
                return None
            self._next_lookup = now + _LOOKUP_INTERVAL
            if not self._connect():
                return None
            client = self._client
        if not client.has_new_frame:
            return None
        texture = client.new_frame_image
        if texture is None:
            return None
        image = self._syphon.utils.numpy.copy_mtl_texture_to_image(texture)
        if int(texture.pixelFormat()) == self._bgra:
            pixels = np.ascontiguousarray(image[..., (2, 1, 0, 3)])
        else:
            pixels = np.array(image, copy=True)  # frombuffer over bytes is read-only
        return Frame(pixels, time.monotonic())

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            client, self._client = self._client, None
            directory, self._directory = self._directory, None
        if client is not None:
            client.stop()
        if directory is not None:
            directory.close()


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> SyphonSink:
    options = Options(uri, role="sink")
    flip = options.flag("flip", False)
    options.finish()
    _load()
    return SyphonSink(str(uri), name=uri.target.strip() or DEFAULT_SERVER_NAME, flip=flip)


class SyphonSink(FrameSink):
    """A Syphon Metal server called ``name``, created at the first frame.

    Each frame is uploaded into one RGBA8 texture (recreated when the size changes) and
    published; Syphon copies it, so the texture is reused. ``flip`` marks the picture as
    upside down for hosts that show it so (the default treats row 0 as the top).
    """

    def __init__(self, uri: str, *, name: str, flip: bool = False) -> None:
        self.uri = uri
        self.name = name
        self._flip = flip
        self._lock = threading.Lock()
        self._closed = False
        self._syphon: Any = None
        self._server: Any = None
        self._directory: Any = None
        self._texture: Any = None
        self._size: tuple[int, int] | None = None

    @property
    def has_clients(self) -> bool:
        with self._lock:
            return self._server is not None and bool(self._server.has_clients)

    def publish(self, pixels: Pixels) -> None:
        pixels = as_pixels(pixels)
        height, width = pixels.shape[:2]
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self.uri} is closed")
            syphon = self._syphon
            if self._server is None:
                syphon = self._syphon = _load()
                try:
                    self._server = syphon.SyphonMetalServer(self.name)
                except RuntimeError as exc:
                    raise TransportError(f"Syphon could not start server {self.name!r}") from exc
                self._directory = syphon.SyphonServerDirectory()
                self._directory.run_loop_interval = 0.0
            if self._size != (width, height):
                self._texture = syphon.utils.raw.create_mtl_texture(
                    self._server.device, width, height
                )
                if self._texture is None:
                    raise TransportError(f"Metal could not create a {width}x{height} texture")
                self._size = (width, height)
            # as_pixels guaranteed (height, width, 4) uint8, which the helper asserts.
            syphon.utils.numpy.copy_image_to_mtl_texture(pixels, self._texture)
            self._server.publish_frame_texture(self._texture, is_flipped=self._flip)
            if _on_main_thread():
                self._directory.update_run_loop()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
            directory, self._directory = self._directory, None
            self._texture = None
        if server is not None:
            server.stop()
        if directory is not None:
            directory.close()
