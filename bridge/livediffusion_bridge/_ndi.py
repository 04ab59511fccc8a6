"""NDI sources and sinks through ndi-python (module ``NDIlib``), imported on first use.

Things about NDI that shaped this module (measured with ndi-python 6.3.2.6, NDI 6.3.2, Linux):

* Discovery without mDNS goes through TCP port 5960, "used for remote sources to query this
  machine and discover all the sources running on it" (NDI SDK, *Port Numbers*). Every NDI
  process on a machine listens on 5960 with the port shared (``SO_REUSEPORT``), and each
  answers with *its own* senders only. The kernel hands each incoming connection to one of
  those processes at random, and a finder keeps its connection: a finder sees the senders
  of one random NDI process on this machine, and keeps seeing only those. That is why a
  second NDI program on the machine made name lookups fail (often even of senders in this
  very process). So a named source asks three ways: this process's own senders directly
  (:class:`_OwnSenders`), a long-lived finder (mDNS, configured IPs), and a *probe* finder
  that is replaced on every failed attempt, each replacement a fresh draw, asking several
  loopback addresses at once on Linux (each address is another draw).
* A receiver reports source/status changes before the first video frame, and NDI keeps
  frames in its own buffers: each one is copied out and freed at once. A sender that goes
  away is seen as ``recv_get_no_connections() == 0``; NDI does not reconnect by itself
  when a sender returns (even on the same port), so the source connects again.
* Senders get ports 5961 and up, the lowest free one: a sender that restarts may come back
  on another port. By name is what survives restarts; ``ndi://HOST:PORT`` only while the
  port stays the same. The sender's own port is not in ``send_get_source_name`` (its
  ``url_address`` is empty): see :attr:`NdiSink.listen_address`.
* Asking the receiver for RGBX/RGBA makes the runtime convert every format it received
  (measured for UYVY, UYVA, NV12, I420, YV12, P216, PA16, BGRA, BGRX); other color
  formats hand over UYVY/UYVA (``FASTEST``) or P216/PA16 (``BEST``). Rows are padded to
  32 bytes whatever the sender used (a 18-pixel-wide RGBA frame arrives with a 96-byte
  stride, not 72), so strides that are no multiple of the width are normal.
* Widths must be even ("data is internally all considered in 4:2:2", NDI SDK, *Frame
  Types*): a frame of odd width is not delivered at all, an odd last row is dropped.
* NDI video is lossy: expect values a few percent off.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any

import numpy as np

from ._base import LiveSink, LiveSource, SourceLost
from ._ndi_discovery import (
    _ANSWER_POLL,
    _ANSWER_WAIT,
    _CHUNK,
    _FORGET_AFTER,
    _LOST_AFTER,
    _MESSAGING_PORT,
    _OWN,
    LOOPBACK,
    Sender,
    _Discovery,
    _extra_ips,
    describe_target,
    list_sources,
    parse_address,
    pick,
)
from ._ndi_formats import _frame_bytes, fourcc_text, frame_size, to_rgba
from ._ndi_runtime import _acquire, _create_lock, _load, _ms, _release
from ._options import Options
from .errors import SourceNotFoundError, TransportError
from .frame import Frame, Pixels
from .uri import SourceURI

# the transport interface transports.py calls: open_source, open_sink, list_sources, _load
__all__ = [
    "DEFAULT_SENDER_NAME",
    "NdiSink",
    "NdiSource",
    "_load",
    "list_sources",
    "open_sink",
    "open_source",
]

log = logging.getLogger(__name__)

DEFAULT_SENDER_NAME = "livediffusion"

RECEIVER_NAME = "livediffusion"


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


class NdiSource(LiveSource):
    """Receives from one NDI sender: by name (``ndi://NAME``, ``ndi://HOST (NAME)``), by
    address (``ndi://HOST:PORT``), or the first one that is not this process's own
    output (``ndi://``).

    The receiver is made on the reading thread. ``read`` returns the newest frame waiting
    and frees older ones (a live effect wants the present, not a backlog), converted to
    RGBA whatever pixel format and row stride arrived; a format it cannot convert is
    logged once and its frames skipped. A sender that goes away is waited for
    (:attr:`waiting_for` says which) and picked up again when it returns, at any size. With
    ``wait > 0`` the constructor waits that long for the sender and raises
    :class:`SourceNotFoundError` (listing what it saw) otherwise.
    """

    retry_interval = 0.25
    color_format = "RGBX_RGBA"
    """The ``RECV_COLOR_FORMAT_*`` asked for: NDI then converts everything to RGBX/RGBA."""

    def __init__(
        self,
        uri: str,
        *,
        target: str,
        extra_ips: str = LOOPBACK,
        bandwidth: str = "highest",
        wait: float = 0.0,
    ) -> None:
        super().__init__(uri, describe=describe_target(target))
        self._target = target
        self._address = parse_address(target)
        self._extra_ips = extra_ips
        self._bandwidth = bandwidth
        self._ndi: Any = _acquire()
        self._released = False
        self._discovery: _Discovery | None = None
        self._receiver: Any = None
        self._pending: Sender | None = None  # asked to connect, not yet answering
        self._pending_since = 0.0
        self._current: Sender | None = None
        self._passed_over: dict[Sender, float] = {}
        self._quiet_since: float | None = None
        self._skipped: set[str] = set()
        self._missing = (
            "no answer yet; waiting for it"
            if self._address is not None
            else "not found on this machine or the network yet; waiting for it"
        )
        try:
            if wait > 0:
                self._wait_until_visible(wait)
        except BaseException:
            self.close()
            raise

    @property
    def connected_to(self) -> str | None:
        """The full NDI name (or the address) of the sender frames come from now."""
        current = self._current if self.connected else None
        if current is None:
            return None
        return current.ndi_name or current.url_address

    # -- finding the sender -------------------------------------------------------------

    def _candidates(self) -> list[Sender]:
        """Senders that could be the target, best first: what discovery lists, then this
        process's own (last, so a same-named sender elsewhere wins a tie), minus those that
        recently did not answer."""
        if self._discovery is None:
            self._discovery = _Discovery(self._ndi, self._extra_ips)
        now = time.monotonic()
        self._passed_over = {s: t for s, t in self._passed_over.items() if t > now}
        own = _OWN.senders()
        names = {sender.ndi_name for sender in own}
        listed = [s for s in self._discovery.senders() if s.ndi_name not in names]
        if not self._target:
            own = []  # never our own output by accident: that feeds the effect back
        return [s for s in (*listed, *own) if s not in self._passed_over]

    def _find(self) -> Sender | None:
        if self._address is not None:
            return Sender("", self._address)
        found = pick(self._candidates(), self._target)
        return found if isinstance(found, Sender) else None

    def _wait_until_visible(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        if self._address is not None:
            if not self._answers(self._address, wait):
                raise SourceNotFoundError(
                    f"no NDI sender answers at {self._address} within {wait:g} s"
                )
            return
        seen: dict[str, None] = {}  # every name any probe saw, in order
        while True:
            candidates = self._candidates()
            if pick(candidates, self._target) is not None:
                return
            seen.update(dict.fromkeys(sender.ndi_name for sender in candidates))
            now = time.monotonic()
            if now >= deadline:
                raise SourceNotFoundError(
                    f"no NDI sender matching {self._target!r} within {wait:g} s; "
                    f"visible: {', '.join(seen) or 'none'}"
                )
            assert self._discovery is not None
            self._discovery.reprobe()
            self._discovery.wait(min(deadline - now, self.retry_interval))

    def _answers(self, address: str, wait: float) -> bool:
        """Whether a sender accepts a connection at ``address`` within ``wait`` s."""
        ndi = self._ndi
        receiver = self._new_receiver()
        try:
            ndi.recv_connect(receiver, ndi.Source(None, address))
            deadline = time.monotonic() + wait
            while ndi.recv_get_no_connections(receiver) == 0:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
            return True
        finally:
            ndi.recv_destroy(receiver)

    def _new_receiver(self) -> Any:
        ndi = self._ndi
        lowest = self._bandwidth == "lowest"
        settings = ndi.RecvCreateV3(
            None,
            getattr(ndi, f"RECV_COLOR_FORMAT_{self.color_format}"),
            ndi.RECV_BANDWIDTH_LOWEST if lowest else ndi.RECV_BANDWIDTH_HIGHEST,
            False,  # no separate fields: progressive frames only
            RECEIVER_NAME,
        )
        receiver = ndi.recv_create_v3(settings)
        if receiver is None:
            raise TransportError(f"NDI could not create a receiver for {self.uri}")
        return receiver

    # -- LiveSource -----------------------------------------------------------------------

    def _connect(self) -> bool:
        """One step: ask the sender found to connect, or see whether it answered. A sender
        counts as there only once NDI reports the connection, so a stale listing or an
        address nobody listens on keeps :attr:`waiting_for` set."""
        ndi = self._ndi
        if self._receiver is None:
            self._receiver = self._new_receiver()
        now = time.monotonic()
        if self._pending is not None and now - self._pending_since >= _ANSWER_WAIT:
            if self._address is None:
                self._passed_over[self._pending] = now + _FORGET_AFTER
            self._pending = None
        if self._pending is None:
            sender = self._find()
            if sender is None:
                if self._discovery is not None:
                    self._discovery.reprobe()  # read at the next attempt, a retry later
                raise TransportError(self._missing)
            # Disconnect first: connecting to an unchanged source is otherwise a no-op, and
            # NDI does not notice a sender that came back on the same address by itself.
            ndi.recv_connect(self._receiver, None)
            ndi.recv_connect(
                self._receiver, ndi.Source(sender.ndi_name or None, sender.url_address or None)
            )
            self._pending, self._pending_since = sender, now
        deadline = time.monotonic() + _ANSWER_POLL
        while ndi.recv_get_no_connections(self._receiver) == 0:
            if time.monotonic() >= deadline:
                if now - self._pending_since >= _ANSWER_WAIT / 2:
                    raise TransportError(self._missing)  # said once, however long it lasts
                return False
            time.sleep(0.005)
        sender, self._pending = self._pending, None
        self._current, self._quiet_since = sender, None
        log.info("%s: receiving from %s", self.describe, sender.url_address or sender.ndi_name)
        return True

    def _grab(self, deadline: float) -> Frame | None:
        ndi = self._ndi
        wait = min(max(deadline - time.monotonic(), 0.0), _CHUNK)
        kind, video, _audio, _metadata = ndi.recv_capture_v2(
            self._receiver, _ms(wait), True, False, False
        )
        if kind == ndi.FRAME_TYPE_VIDEO:
            self._quiet_since = None
            return self._newest(video)
        if kind == ndi.FRAME_TYPE_ERROR:
            raise SourceLost("NDI reported the connection broken")
        if ndi.recv_get_no_connections(self._receiver) > 0:
            self._quiet_since = None
            return None
        now = time.monotonic()
        if self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= _LOST_AFTER:
            raise SourceLost("the sender closed the connection")
        return None

    def _newest(self, video: Any) -> Frame | None:
        """The newest frame queued (older ones freed unread), converted; None if skipped."""
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
            pixels = self._convert(video)
        finally:
            ndi.recv_free_video_v2(self._receiver, video)
        return None if pixels is None else Frame(pixels, time.monotonic())

    def _convert(self, video: Any) -> Pixels | None:
        fourcc = fourcc_text(int(video.FourCC))
        width, height = int(video.xres), int(video.yres)
        stride = int(video.line_stride_in_bytes)
        try:
            size = frame_size(fourcc, width, height, stride)
            return to_rgba(fourcc, _frame_bytes(video, size), width, height, stride)
        except ValueError as exc:  # UnsupportedFormat included: skip, never end capture
            key = f"{fourcc} {type(exc).__name__}"
            if key not in self._skipped:
                self._skipped.add(key)
                log.warning(
                    "%s sent a frame this source cannot read (%s, %dx%d, stride %d): %s; "
                    "skipping such frames",
                    self.describe,
                    fourcc,
                    width,
                    height,
                    stride,
                    exc,
                )
            return None

    def _disconnect(self) -> None:
        receiver, self._receiver = self._receiver, None
        self._pending = self._current = None
        self._quiet_since = None
        if receiver is not None:
            self._ndi.recv_destroy(receiver)

    def _shutdown(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            self._disconnect()  # a connection still being made
            if self._discovery is not None:
                self._discovery.close()
                self._discovery = None
        finally:
            _release()


# -- sink ----------------------------------------------------------------------------------


def open_sink(uri: SourceURI) -> NdiSink:
    options = Options(uri, role="sink")
    fps = options.rate("fps", 30.0)
    alpha = options.flag("alpha", False)
    options.finish()
    _load()  # a missing library should fail here, not at the first frame
    return NdiSink(str(uri), name=uri.target.strip() or DEFAULT_SENDER_NAME, fps=fps, alpha=alpha)


class NdiSink(LiveSink):
    """An NDI sender called ``name``, created on the publishing thread at the first frame.

    ``publish`` copies the frame into one of two buffers of the sink's own and hands it to
    ``send_send_video_async_v2``, which returns at once: colour conversion, compression
    and sending run on NDI's threads (for 512x512 the call takes ~0.3 ms instead of ~1.5 ms
    for the synchronous send; 1080p ~4 ms instead of ~12 ms, measured). NDI owns the buffer
    until the next send call, the "synchronizing event" of the SDK's send header, which is
    why there are two. NDI's own clock is off (``clock_video=False``): with it on, each send
    would block to pace the stream at ``fps``; the engine paces. ``fps`` is only the rate
    receivers are told. The SDK warns that an unresponsive receiver may make an async send
    wait for it (docs.ndi.video, *Asynchronous Sending Completions*; the completion handler
    that avoids it is Advanced SDK only). Measured with NDI 6.3: a receiver that connects,
    disconnects, freezes (SIGSTOP) or vanishes (SIGKILL) never held ``publish`` up; NDI
    drops a frozen receiver after about a second.

    A new frame size keeps the sender (its name and port), so receivers stay connected;
    only the buffers change. An odd width loses its last column, because NDI drops frames
    of odd width. Frames are sent as RGBX (opaque, less to encode) unless ``alpha`` is set.
    """

    def __init__(self, uri: str, *, name: str, fps: float = 30.0, alpha: bool = False) -> None:
        super().__init__(uri)
        self.name = name
        self.fps = fps
        self._alpha = alpha
        self._ndi: Any = None
        self._sender: Any = None
        self._slots: list[tuple[Pixels, Any]] = []
        self._retired: list[tuple[Pixels, Any]] = []
        self._turn = 0
        self._source_name: str | None = None
        self._listen: str | None = None
        self._said_odd = False

    @property
    def source_name(self) -> str | None:
        """The full name receivers see, ``"HOST (NAME)"``; ``None`` before the first frame."""
        return self._source_name

    @property
    def shown_as(self) -> str | None:
        return None if self._source_name is None else f"NDI source {self._source_name!r}"

    @property
    def listen_address(self) -> str | None:
        """``127.0.0.1:PORT``: where this sender accepts receivers, once it is open.

        NDIlib does not report it (``send_get_source_name`` leaves ``url_address`` empty),
        so on Linux and macOS it is the one TCP port this process started listening on while
        the sender was created, read from the process's own sockets. Elsewhere, or when that
        is ambiguous, discovery on this machine is asked for the sender; ``None`` if both
        fail. The host is loopback because the port listens on every interface: other
        machines use this machine's address with the same port.
        """
        return self._listen

    @property
    def connections(self) -> int:
        """How many receivers are connected now."""
        with self._lock:
            if self._sender is None:
                return 0
            return int(self._ndi.send_get_no_connections(self._sender, 0))

    def _create(self, width: int, height: int) -> None:
        if self._sender is None:
            self._open_sender()
        even = width - width % 2 if width > 1 else width
        if even != width and not self._said_odd:
            self._said_odd = True
            log.warning(
                "%s: NDI cannot send frames of odd width (%d); sending %d columns",
                self.uri,
                width,
                even,
            )
        # The last frame sent may still be NDI's until the next send: keep its buffer.
        self._retired = self._slots
        self._slots = [self._slot(even, height) for _ in range(2)]
        self._turn = 0

    def _slot(self, width: int, height: int) -> tuple[Pixels, Any]:
        ndi = self._ndi
        buffer: Pixels = np.zeros((height, width, 4), dtype=np.uint8)
        frame = ndi.VideoFrameV2()
        frame.data = buffer  # sets xres, yres and the stride; points at buffer (no copy)
        frame.FourCC = ndi.FOURCC_VIDEO_TYPE_RGBA if self._alpha else ndi.FOURCC_VIDEO_TYPE_RGBX
        frame.frame_rate_N, frame.frame_rate_D = _rate(self.fps)
        frame.frame_format_type = ndi.FRAME_FORMAT_TYPE_PROGRESSIVE
        frame.picture_aspect_ratio = 0.0  # square pixels
        frame.timecode = ndi.SEND_TIMECODE_SYNTHESIZE
        return buffer, frame

    def _send(self, pixels: Pixels) -> None:
        buffer, frame = self._slots[self._turn]
        np.copyto(buffer, pixels[:, : buffer.shape[1]])
        self._ndi.send_send_video_async_v2(self._sender, frame)
        self._turn ^= 1
        self._retired = []  # that call synchronised the frame sent before it

    def _destroy(self) -> None:
        if not self.closed:
            return  # a size change: the sender stays, _create swaps the buffers
        ndi, sender = self._ndi, self._sender
        self._ndi = self._sender = None
        if self._source_name and self._listen:
            _OWN.remove(self._source_name, self._listen)
        if ndi is None:
            return
        try:
            if sender is not None:
                ndi.send_destroy(sender)  # also waits for the async frame still in flight
        finally:
            self._slots, self._retired = [], []
            _release()

    def _open_sender(self) -> None:
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
        source = ndi.send_get_source_name(sender)
        self._source_name = str(source.ndi_name) if source is not None else None
        url = str(source.url_address or "") if source is not None else ""
        self._listen = url or _address_from_ports(before, after) or self._ask_discovery()
        if self._source_name and self._listen:
            _OWN.add(self._source_name, self._listen)

    def _ask_discovery(self) -> str | None:
        if not self._source_name:
            return None
        discovery = _Discovery(self._ndi, LOOPBACK)
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for sender in discovery.senders():
                    if sender.ndi_name == self._source_name and sender.url_address:
                        return sender.url_address
                discovery.reprobe()
                discovery.wait(_CHUNK)
            return None
        finally:
            discovery.close()


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
        # open file) to non-blocking: give up and let discovery answer instead.
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
