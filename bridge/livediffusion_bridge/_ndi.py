"""NDI sources and sinks through ndi-python (module ``NDIlib``), imported on first use.

Things about NDI that shaped this module (checked with ndi-python 6.3 on Linux):

* Discovery by multicast (mDNS) often finds nothing, so every finder also asks
  ``127.0.0.1`` (plus ``extra_ips`` and ``$LIVEDIFFUSION_NDI_EXTRA_IPS``). Loopback
  discovery answers for one process only (whichever holds TCP 5960), so senders in
  *another* process may be invisible; connect to them directly with ``ndi://HOST:PORT``.
* A receiver reports source/status changes before the first video frame, and NDI keeps
  frames in its own buffers: each one is copied out and freed at once.
* A sender that restarts usually comes back on a different port, and NDI does not follow
  it, so a named source looks the sender up again after losing it.
* The sender's own listening address is not in ``send_get_source_name`` (its
  ``url_address`` is empty): see :attr:`NdiSink.listen_address` for how it is found.
* NDI video is lossy: expect values a few percent off.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import socket
import threading
import time
from typing import Any

import numpy as np

from ._listing import SourceInfo
from ._options import Options
from ._pacing import poll_for_frame
from .errors import (
    BackendUnavailableError,
    ClosedError,
    SourceNotFoundError,
    TransportError,
)
from .frame import Frame, FrameSink, FrameSource, Pixels, as_pixels
from .uri import SourceURI

__all__ = [
    "DEFAULT_SENDER_NAME",
    "NdiSink",
    "NdiSource",
    "list_sources",
    "open_sink",
    "open_source",
]

INSTALL_HINT = 'pip install "livediffusion[ndi]"'
DEFAULT_SENDER_NAME = "livediffusion"
RECEIVER_NAME = "livediffusion"
LOOPBACK = "127.0.0.1"
EXTRA_IPS_ENV = "LIVEDIFFUSION_NDI_EXTRA_IPS"

_CHUNK = 0.1
"""Longest single wait inside NDI, so ``close()`` from another thread is never held up long."""
_REDISCOVER_AFTER = 1.0
"""How long a named source may have no connection before it looks its sender up again."""
_LOOKUP_INTERVAL = 0.25
_SETTLE = 0.5
"""``list_sources`` stops early once the list has not changed for this long."""
_MESSAGING_PORT = 5960
"""NDI's shared per-machine discovery port: never a sender's own port."""

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(\d{1,5})$")

# -- the runtime ---------------------------------------------------------------------------

_runtime_lock = threading.Lock()
_create_lock = threading.Lock()
_users = 0
_initialized = False


def _load() -> Any:
    try:
        import NDIlib
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(
            f"NDI needs the ndi-python package: {INSTALL_HINT} ({exc})"
        ) from exc
    return NDIlib


def _acquire() -> Any:
    """The NDIlib module, with the runtime initialised once for the whole process."""
    global _users, _initialized
    ndi = _load()
    with _runtime_lock:
        if not _initialized:
            if not ndi.initialize():
                why = "" if ndi.is_supported_CPU() else ": this CPU is not supported by NDI"
                raise BackendUnavailableError(f"the NDI runtime failed to start{why}")
            _initialized = True
            atexit.register(_shutdown, ndi)
        _users += 1
    return ndi


def _release() -> None:
    global _users
    with _runtime_lock:
        _users = max(0, _users - 1)


def _shutdown(ndi: Any) -> None:
    # Only at exit, and only when nothing is open: re-initialising NDI after destroy() in
    # one process is not something to rely on, and destroying under live objects crashes.
    global _initialized
    with _runtime_lock:
        if _initialized and _users == 0:
            ndi.destroy()
            _initialized = False


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))


def _extra_ips(option: str) -> str:
    ips = [LOOPBACK, *os.environ.get(EXTRA_IPS_ENV, "").split(","), *option.split(",")]
    seen: list[str] = []
    for ip in (part.strip() for part in ips):
        if ip and ip not in seen:
            seen.append(ip)
    return ",".join(seen)


def _create_finder(ndi: Any, extra_ips: str) -> Any:
    finder = ndi.find_create_v2(ndi.FindCreate(True, None, extra_ips))
    if finder is None:
        raise TransportError("NDI could not create a finder")
    return finder


# -- names ---------------------------------------------------------------------------------


def short_name(full: str) -> str:
    """``"HOST (NAME)"`` -> ``"NAME"``; other strings unchanged."""
    head, sep, tail = full.partition(" (")
    if sep and head and tail.endswith(")"):
        return tail[:-1]
    return full


def parse_address(target: str) -> str | None:
    """``"HOST:PORT"`` when ``target`` is a direct address rather than a sender name."""
    match = _ADDRESS.match(target)
    if match is None or not 0 < int(match.group(1)) < 65536:
        return None
    return target


def pick(sources: list[Any], target: str) -> Any | None:
    """The source ``target`` names: exact full name, then the part in parentheses, then
    the same ignoring case. An empty target takes the first source."""
    if not sources:
        return None
    if not target:
        return sources[0]
    folded = target.casefold()
    tests = (
        lambda full: full == target,
        lambda full: short_name(full) == target,
        lambda full: full.casefold() == folded,
        lambda full: short_name(full).casefold() == folded,
    )
    for test in tests:
        for source in sources:
            if test(str(source.ndi_name or "")):
                return source
    return None


# -- listing -------------------------------------------------------------------------------


def list_sources(timeout: float) -> list[SourceInfo]:
    """NDI senders visible within ``timeout`` s; returns early once the list has settled."""
    ndi = _acquire()
    try:
        finder = _create_finder(ndi, _extra_ips(""))
        try:
            sources = _discover(ndi, finder, timeout)
        finally:
            ndi.find_destroy(finder)
    finally:
        _release()
    return [
        SourceInfo(
            uri=str(SourceURI("ndi", str(source.ndi_name))),
            kind="ndi",
            name=str(source.ndi_name),
            address=str(source.url_address) or None,
        )
        for source in sources
    ]


def _discover(ndi: Any, finder: Any, timeout: float) -> list[Any]:
    deadline = time.monotonic() + max(timeout, 0.0)
    sources: list[Any] = list(ndi.find_get_current_sources(finder))
    changed_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= deadline or (sources and now - changed_at >= _SETTLE):
            return sources
        if ndi.find_wait_for_sources(finder, _ms(min(deadline - now, _CHUNK))):
            sources = list(ndi.find_get_current_sources(finder))
            changed_at = time.monotonic()


# -- source --------------------------------------------------------------------------------


def open_source(uri: SourceURI) -> NdiSource:
    options = Options(uri, role="source")
    extra_ips = options.text("extra_ips", "")
    bandwidth = options.choice("bandwidth", "highest", ("highest", "lowest"))
    wait = options.number("wait", 0.0, minimum=0.0, maximum=600.0)
    options.finish()
    return NdiSource(
        str(uri),
        target=uri.target.strip(),
        extra_ips=_extra_ips(extra_ips),
        bandwidth=bandwidth,
        wait=wait,
    )


class NdiSource(FrameSource):
    """Receives from one NDI sender, by name (``ndi://NAME``) or address (``ndi://HOST:PORT``).

    Frames arrive as RGBA straight from NDI (no swizzle here). ``read`` returns the newest
    frame waiting and frees any older ones, because a live effect wants the present, not a
    backlog. A named sender that disappears is looked up again until it returns;
    ``read`` yields ``None`` meanwhile. With ``wait > 0`` the constructor waits that long
    for the sender and raises :class:`SourceNotFoundError` (listing what it saw) otherwise;
    with the default ``0`` a missing sender is simply waited for in ``read``.
    """

    def __init__(
        self,
        uri: str,
        *,
        target: str,
        extra_ips: str = LOOPBACK,
        bandwidth: str = "highest",
        wait: float = 0.0,
    ) -> None:
        self.uri = uri
        self._target = target
        self._address = parse_address(target)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._finder: Any = None
        self._receiver: Any = None
        self._connected: tuple[str, str] | None = None
        self._lost_since: float | None = None
        self._next_lookup = 0.0
        self._ndi: Any = _acquire()
        try:
            self._open(extra_ips, bandwidth, wait)
        except BaseException:
            self.close()
            raise

    def _open(self, extra_ips: str, bandwidth: str, wait: float) -> None:
        ndi = self._ndi
        if self._address is None:
            self._finder = _create_finder(ndi, extra_ips)
        settings = ndi.RecvCreateV3(
            None,
            ndi.RECV_COLOR_FORMAT_RGBX_RGBA,
            ndi.RECV_BANDWIDTH_LOWEST if bandwidth == "lowest" else ndi.RECV_BANDWIDTH_HIGHEST,
            False,
            RECEIVER_NAME,
        )
        self._receiver = ndi.recv_create_v3(settings)
        if self._receiver is None:
            raise TransportError(f"NDI could not create a receiver for {self.uri}")
        if self._address is not None:
            self._connect(ndi.Source(None, self._address))
            self._connected = ("", self._address)
        elif not self._lookup(wait) and wait > 0:
            visible = [str(s.ndi_name) for s in ndi.find_get_current_sources(self._finder)]
            raise SourceNotFoundError(
                f"no NDI sender matching {self._target!r} within {wait:g} s; "
                f"visible: {', '.join(visible) or 'none'}"
            )

    @property
    def connected_to(self) -> str | None:
        """The full NDI name (or address) currently connected, if any."""
        if self._connected is None:
            return None
        return self._connected[0] or self._connected[1]

    def _lookup(self, wait: float, *, force: bool = False) -> bool:
        """Find the sender; connect when it changed name or address, or when ``force``d."""
        ndi = self._ndi
        deadline = time.monotonic() + wait
        while True:
            found = pick(list(ndi.find_get_current_sources(self._finder)), self._target)
            if found is not None:
                key = (str(found.ndi_name or ""), str(found.url_address or ""))
                if force or key != self._connected:
                    self._connect(found)
                    self._connected = key
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ndi.find_wait_for_sources(self._finder, _ms(min(remaining, _CHUNK)))

    def _connect(self, source: Any) -> None:
        # Disconnect first: NDI does not notice a sender that came back (even on the same
        # port), and re-connecting to an unchanged source is otherwise a no-op.
        self._ndi.recv_connect(self._receiver, None)
        self._ndi.recv_connect(self._receiver, source)
        self._lost_since = None

    def _lost(self, now: float) -> bool:
        if self._ndi.recv_get_no_connections(self._receiver) > 0:
            self._lost_since = None
            return False
        if self._lost_since is None:
            self._lost_since = now
        return now - self._lost_since >= _REDISCOVER_AFTER

    def read(self, timeout: float) -> Frame | None:
        if self._closed.is_set():
            raise ClosedError(f"{self.uri} is closed")
        return poll_for_frame(self._step, timeout=timeout, lock=self._lock, closed=self._closed)

    def _step(self, deadline: float) -> Frame | None:
        """At most one short wait: rediscover if needed, then one capture."""
        ndi = self._ndi
        now = time.monotonic()
        if self._connected is None:
            if now >= self._next_lookup:
                self._next_lookup = now + _LOOKUP_INTERVAL
                self._lookup(0.0)
        elif self._lost(now) and now >= self._next_lookup:
            # The sender went away: connect again (by name: to wherever it is now).
            self._next_lookup = now + _REDISCOVER_AFTER
            if self._finder is not None:
                self._lookup(0.0, force=True)
            else:
                self._connect(self._ndi.Source(None, self._address))
        wait = min(max(deadline - now, 0.0), _CHUNK)
        if self._connected is None:
            if wait > 0:
                ndi.find_wait_for_sources(self._finder, _ms(wait))
            return None
        kind, video, _audio, _metadata = ndi.recv_capture_v2(
            self._receiver, _ms(wait), True, False, False
        )
        if kind != ndi.FRAME_TYPE_VIDEO:
            return None
        return Frame(self._newest_pixels(video), time.monotonic())

    def _newest_pixels(self, video: Any) -> Pixels:
        ndi = self._ndi
        try:
            while True:
                kind, newer, _audio, _metadata = ndi.recv_capture_v2(
                    self._receiver, 0, True, False, False
                )
                if kind != ndi.FRAME_TYPE_VIDEO:
                    break
                ndi.recv_free_video_v2(self._receiver, video)
                video = newer
            return self._copy(video)
        finally:
            ndi.recv_free_video_v2(self._receiver, video)

    def _copy(self, video: Any) -> Pixels:
        ndi = self._ndi
        fourcc = video.FourCC
        if fourcc not in (ndi.FOURCC_VIDEO_TYPE_RGBA, ndi.FOURCC_VIDEO_TYPE_RGBX):
            raise TransportError(f"NDI delivered {fourcc} from {self.uri}, expected RGBA/RGBX")
        width, height = int(video.xres), int(video.yres)
        stride = int(video.line_stride_in_bytes) or width * 4
        data = np.asarray(video.data, dtype=np.uint8)
        if data.shape == (height, width, 4):
            pixels = data.copy()  # out of NDI's buffer, which is freed right after
        else:
            rows = data.reshape(-1)[: height * stride].reshape(height, stride)
            pixels = rows[:, : width * 4].reshape(height, width, 4).copy()
        if fourcc == ndi.FOURCC_VIDEO_TYPE_RGBX:
            pixels[..., 3] = 255
        return pixels

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            ndi, self._ndi = self._ndi, None
            if ndi is None:
                return
            try:
                if self._receiver is not None:
                    ndi.recv_destroy(self._receiver)
                if self._finder is not None:
                    ndi.find_destroy(self._finder)
            finally:
                self._receiver = self._finder = None
                _release()


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> NdiSink:
    options = Options(uri, role="sink")
    fps = options.rate("fps", 30.0)
    alpha = options.flag("alpha", False)
    options.finish()
    _load()  # a missing library should fail here, not at the first frame
    return NdiSink(str(uri), name=uri.target.strip() or DEFAULT_SENDER_NAME, fps=fps, alpha=alpha)


class NdiSink(FrameSink):
    """An NDI sender called ``name``, created at the first frame.

    Frames go out synchronously (``send_send_video_v2``), so the caller may reuse its buffer
    as soon as :meth:`publish` returns, and NDI's own clocking is off: the engine paces.
    ``fps`` is only the rate receivers are told. Frames are sent as RGBX (opaque, less to
    encode) unless ``alpha`` is set.
    """

    def __init__(self, uri: str, *, name: str, fps: float = 30.0, alpha: bool = False) -> None:
        self.uri = uri
        self.name = name
        self.fps = fps
        self._alpha = alpha
        self._lock = threading.Lock()
        self._closed = False
        self._ndi: Any = None
        self._sender: Any = None
        self._frame: Any = None
        self._source_name: str | None = None
        self._listen: str | None = None

    @property
    def source_name(self) -> str | None:
        """The full name receivers see, ``"HOST (NAME)"``; ``None`` before the first frame."""
        return self._source_name

    @property
    def listen_address(self) -> str | None:
        """``127.0.0.1:PORT``: where this sender accepts receivers, once it is open.

        NDIlib does not report it (``send_get_source_name`` leaves ``url_address`` empty),
        so on Linux and macOS it is the one TCP port this process started listening on while
        the sender was created, read from the process's own sockets. Elsewhere, or when that
        is ambiguous, a finder in this process is asked for the sender (which only works
        while this process answers NDI discovery on this machine); ``None`` if both fail.
        The host is loopback because the port listens on every interface: other machines
        use this machine's address with the same port.
        """
        return self._listen

    @property
    def connections(self) -> int:
        """How many receivers are connected now."""
        with self._lock:
            if self._sender is None:
                return 0
            return int(self._ndi.send_get_no_connections(self._sender, 0))

    def publish(self, pixels: Pixels) -> None:
        pixels = as_pixels(pixels)
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self.uri} is closed")
            if self._sender is None:
                self._open()
            ndi, frame = self._ndi, self._frame
            frame.data = pixels
            frame.FourCC = ndi.FOURCC_VIDEO_TYPE_RGBA if self._alpha else ndi.FOURCC_VIDEO_TYPE_RGBX
            ndi.send_send_video_v2(self._sender, frame)

    def _open(self) -> None:
        ndi = _acquire()
        try:
            with _create_lock:
                before = _listening_ports()
                sender = ndi.send_create(ndi.SendCreate(self.name, None, False, False))
                after = _listening_ports()
            if sender is None:
                raise TransportError(f"NDI could not create a sender named {self.name!r}")
        except BaseException:
            _release()
            raise
        self._ndi, self._sender = ndi, sender
        frame = ndi.VideoFrameV2()
        frame.frame_rate_N, frame.frame_rate_D = _rate(self.fps)
        frame.frame_format_type = ndi.FRAME_FORMAT_TYPE_PROGRESSIVE
        frame.picture_aspect_ratio = 0.0  # square pixels
        frame.timecode = ndi.SEND_TIMECODE_SYNTHESIZE
        self._frame = frame
        source = ndi.send_get_source_name(sender)
        self._source_name = str(source.ndi_name) if source is not None else None
        url = str(source.url_address or "") if source is not None else ""
        self._listen = url or _address_from_ports(before, after) or self._ask_finder()

    def _ask_finder(self) -> str | None:
        if not self._source_name:
            return None
        finder = _create_finder(self._ndi, LOOPBACK)
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for source in self._ndi.find_get_current_sources(finder):
                    if source.ndi_name == self._source_name and source.url_address:
                        return str(source.url_address)
                self._ndi.find_wait_for_sources(finder, _ms(_CHUNK))
            return None
        finally:
            self._ndi.find_destroy(finder)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            ndi, self._ndi = self._ndi, None
            sender, self._sender = self._sender, None
            self._frame = None
        if ndi is not None:
            try:
                if sender is not None:
                    ndi.send_destroy(sender)
            finally:
                _release()


def _rate(fps: float) -> tuple[int, int]:
    numerator, denominator = round(fps * 1000), 1000
    common = math.gcd(numerator, denominator)
    return numerator // common, denominator // common


def _address_from_ports(before: set[int] | None, after: set[int] | None) -> str | None:
    if before is None or after is None:
        return None
    new = after - before - {_MESSAGING_PORT}
    if len(new) != 1:
        return None
    return f"{LOOPBACK}:{new.pop()}"


def _listening_ports() -> set[int] | None:
    """TCP ports this process listens on, read from its own descriptors (Linux, macOS)."""
    if socket.getdefaulttimeout() is not None:
        # Wrapping a descriptor would then switch it (and NDI's socket, which shares the
        # open file) to non-blocking: give up and let the finder answer instead.
        return None
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        break
    else:
        return None
    ports: set[int] = set()
    for name in names:
        if not name.isdigit():
            continue
        try:
            duplicate = os.dup(int(name))
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=duplicate)
        except OSError:  # not a socket
            os.close(duplicate)
            continue
        with sock:
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                ):
                    ports.add(int(sock.getsockname()[1]))
            except OSError:
                pass
    return ports
