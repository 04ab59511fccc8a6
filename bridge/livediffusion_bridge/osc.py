"""An OSC-over-UDP server that never lets a bad datagram reach the frames, and answers back.

The receive loop is ours and so is the splitting of bundles; python-osc only decodes single
messages whose length we checked against their type tags first. So every datagram that is
too big, from a refused address, part of a flood, malformed, or rejected by the handler is
counted and logged at a bounded rate (a few lines per kind every 10 s, then one line saying
how many more), then dropped. The loop is supervised: should it ever fail it is restarted and
:attr:`OscCounters.restarts` says so. The handler runs on the server's thread: it should
validate and hand over, not do work.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from livediffusion_bridge.errors import TransportError

__all__ = [
    "LOG_INTERVAL",
    "LOG_LINES",
    "LogLimiter",
    "OscCounters",
    "OscMessage",
    "OscMessageHandler",
    "OscServer",
    "check_message_size",
    "parse_allow",
    "split_packet",
    "with_leading_slash",
]

log = logging.getLogger(__name__)

LOG_LINES = 5
"""Warnings logged per kind of drop (rejected, malformed, flooded ...) per interval."""
LOG_INTERVAL = 10.0
"""Seconds of that interval; what was not logged in it is summed up in one line after it."""
_MAX_BUNDLE_DEPTH = 4
_MAX_BUNDLE_ITEMS = 256


_FIXED_SIZES = {"i": 4, "f": 4, "c": 4, "r": 4, "m": 4, "d": 8, "h": 8, "t": 8}
_NO_DATA = frozenset("TFNI[]")


def _padded_string_end(data: bytes, start: int) -> int:
    """Index just past the 4-byte-padded, NUL-terminated string at ``start`` (or -1)."""
    end = data.find(b"\0", start)
    if end < 0:
        return -1
    return start + ((end - start) // 4 + 1) * 4


def check_message_size(dgram: bytes) -> str | None:
    """Why a message's length disagrees with its type tags, or None when it is exact.

    python-osc reads past the end of a short datagram as zeros (a ``,f`` message with no
    data arrives as 0.0), which would turn a truncated ``/strength`` into a jump to 0.
    Checking the length against the type tags rejects those instead.
    """
    offset = _padded_string_end(dgram, 0)
    if offset < 0 or offset >= len(dgram) or dgram[offset : offset + 1] != b",":
        return None if offset == len(dgram) else "no type tags"  # no tags, no data: fine
    tags_end = _padded_string_end(dgram, offset)
    if tags_end < 0:
        return "unterminated type tags"
    tags = dgram[offset + 1 : dgram.index(b"\0", offset)].decode("ascii", "replace")
    position = tags_end
    for tag in tags:
        if tag in _FIXED_SIZES:
            position += _FIXED_SIZES[tag]
        elif tag in "sS":
            position = _padded_string_end(dgram, position)
            if position < 0:
                return "unterminated string argument"
        elif tag == "b":
            if position + 4 > len(dgram):
                return "truncated blob"
            length = int.from_bytes(dgram[position : position + 4], "big")
            position += 4 + (length + 3) // 4 * 4
        elif tag not in _NO_DATA:
            return f"unknown type tag {tag!r}"
        if position > len(dgram):
            return f"truncated: {len(dgram)} bytes, type tags {tags!r} need more"
    if position != len(dgram):
        return f"{len(dgram) - position} stray bytes after the arguments"
    return None


def with_leading_slash(dgram: bytes) -> bytes:
    """``strength,f...`` -> ``/strength,f...``: some senders leave the slash off.

    OSC addresses start with ``/`` and python-osc rejects a message without one, but a
    controller that names a channel ``strength`` means ``/strength``. Bundles and anything
    that is not a NUL-terminated printable address are returned unchanged.
    """
    if dgram[:1] in (b"/", b"#", b""):
        return dgram
    end = dgram.find(b"\0")
    if end <= 0 or not dgram[:end].isascii() or not dgram[:end].decode("ascii").isprintable():
        return dgram
    old_end = _padded_string_end(dgram, 0)
    address = b"/" + dgram[:end]
    padding = 4 - len(address) % 4
    return address + b"\0" * padding + dgram[old_end:]


class MalformedPacket(ValueError):
    """A datagram (or a bundle element) that is not a well-formed OSC message."""


def split_packet(dgram: bytes, *, depth: int = 0) -> Iterator[bytes]:
    """Yield each message datagram of a packet, bundles unpacked (time tags are ignored:
    everything applies on arrival), each with its leading slash ensured and its length checked.

    Ours rather than python-osc's ``OscBundle``: that one logs to the root logger and drops
    elements whose address lacks the slash, which TouchDesigner channel names often do.
    """
    if dgram.startswith(b"#bundle\0"):
        if depth >= _MAX_BUNDLE_DEPTH:
            raise MalformedPacket(f"bundles nested deeper than {_MAX_BUNDLE_DEPTH}")
        position, items = 16, 0  # "#bundle\0" and the 8-byte time tag
        if len(dgram) < position:
            raise MalformedPacket("bundle shorter than its header")
        while position < len(dgram):
            if position + 4 > len(dgram):
                raise MalformedPacket("bundle element size truncated")
            size = int.from_bytes(dgram[position : position + 4], "big", signed=True)
            position += 4
            if size <= 0 or size % 4 or position + size > len(dgram):
                raise MalformedPacket(f"bundle element of {size} bytes does not fit")
            items += 1
            if items > _MAX_BUNDLE_ITEMS:
                raise MalformedPacket(f"bundle holds more than {_MAX_BUNDLE_ITEMS} elements")
            yield from split_packet(dgram[position : position + size], depth=depth + 1)
            position += size
        return
    message = with_leading_slash(dgram)
    if not message.startswith(b"/"):
        raise MalformedPacket("not an OSC message or bundle")
    problem = check_message_size(message)
    if problem is not None:
        raise MalformedPacket(problem)
    yield message


def parse_allow(
    entries: Sequence[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``["192.168.1.20", "10.0.0.0/8"]`` -> networks; a bad entry raises ``ValueError``."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"--osc-allow {entry!r} is not an address or network (like 192.168.1.20 "
                "or 192.168.1.0/24)"
            ) from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class OscMessage:
    """One decoded message and who sent it (replies go back to ``sender``)."""

    address: str
    args: tuple[Any, ...]
    sender: tuple[str, int]


OscMessageHandler = Callable[[OscMessage], None]
"""Called for each message; raise ``ValueError`` to reject it (counted, logged, dropped)."""


@dataclass(frozen=True, slots=True)
class OscCounters:
    received: int  # datagrams
    accepted: int  # messages the handler took
    malformed: int  # datagrams or elements that do not parse, or are too big
    rejected: int  # messages the handler refused (ValueError)
    refused: int  # datagrams from an address outside --osc-allow
    flooded: int  # datagrams over a sender's rate
    failed: int  # messages whose handler raised something else (a bug: logged with traceback)
    restarts: int  # times the receive loop failed and was restarted


class _Bucket:
    """A token bucket: ``rate`` datagrams a second, bursts up to ``rate``."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0


class LogLimiter:
    """At most ``lines`` warnings of each kind every ``interval`` seconds, then one line
    saying how many more were not logged.

    Bounded by time, not by count: a flood of junk costs a few lines per interval (not
    hundreds, and no work per datagram beyond a counter), while a bad message sent minutes
    later is still said, with what it was. :meth:`flush` writes the summaries of intervals
    that have ended; the receive loop calls it whenever it wakes.
    """

    def __init__(
        self,
        *,
        lines: int = LOG_LINES,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lines = lines
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def allow(self, kind: str) -> bool:
        """Whether to log this one; False counts it for the summary."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(kind)
            ended = None
            if window is None or now - window.started >= self.interval:
                ended = window
                window = self._windows[kind] = _Window(now)
            if window.logged < self.lines:
                window.logged += 1
                allowed = True
            else:
                window.suppressed += 1
                allowed = False
        if ended is not None:
            self._summarise(kind, ended)
        return allowed

    def flush(self, *, everything: bool = False) -> None:
        """Sum up every interval that has ended with lines not logged (``everything``: the
        ones still running too, when the server closes)."""
        now = self._clock()
        with self._lock:
            ended = [
                (kind, window)
                for kind, window in self._windows.items()
                if everything or now - window.started >= self.interval
            ]
            for kind, _ in ended:
                del self._windows[kind]
        for kind, window in ended:
            self._summarise(kind, window)

    def _summarise(self, kind: str, window: _Window) -> None:
        if window.suppressed:
            log.warning(
                "OSC: %d more %s not logged in %.1f s (at most %d lines per %g s)",
                window.suppressed,
                _KIND_TEXT.get(kind, kind),
                min(self.interval, self._clock() - window.started),
                self.lines,
                self.interval,
            )


_KIND_TEXT = {
    "malformed": "malformed datagrams",
    "rejected": "rejected messages",
    "refused": "datagrams from refused addresses",
    "flooded": "datagrams over the rate limit",
    "failed": "handler failures",
    "reply": "failed replies",
    "library": "python-osc messages",
}


class _LibraryLogFilter(logging.Filter):
    """python-osc logs with ``logging.warning`` on the root logger; send those to us instead.

    A logger-level filter on the root logger sees only records logged to the root directly,
    which is exactly python-osc's case (osc_message.py, osc_bundle.py in 1.10), so the rest of
    the application's logging is untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "pythonosc" not in record.pathname.replace("\\", "/"):
            return True
        _library_drop(record.getMessage())
        return False


_library_count = 0
_library_lock = threading.Lock()
_library_limiter = LogLimiter()


def _library_drop(text: str) -> None:
    global _library_count
    with _library_lock:
        _library_count += 1
        count = _library_count
    if _library_limiter.allow("library"):
        log.warning("python-osc: %s (library messages so far: %d)", text[:200], count)


_library_filter = _LibraryLogFilter()


def _describe_bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"cannot listen for OSC on {host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"{where}: {host!r} is not an address this machine can resolve"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use, by another livediffusion or another OSC app; "
            "pick another with --osc-port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"{where}: this machine has no address {host}; use 127.0.0.1 (this machine only), "
            "0.0.0.0 (every network) or one of its own addresses"
        )
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need privileges); use 1024..65535"
    return f"{where}: {exc.strerror or exc}"


class OscServer:
    """Receives OSC on ``host:port``, calls ``handler`` for each message, and can reply.

    ``port=0`` binds a free port (tests); :attr:`address` tells which. Replies
    (:meth:`send`) leave from the same socket, so a host that answers to the source port of
    what it received (TouchDesigner's OSC In DAT does) gets them.

    Safety: datagrams over ``max_datagram`` bytes, senders outside ``allow`` (loopback is
    always allowed) and datagrams beyond ``rate`` per second from one sender are dropped and
    counted before anything is parsed.
    """

    def __init__(
        self,
        handler: OscMessageHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        allow: Sequence[str] = (),
        max_datagram: int = 16_384,
        rate: float = 2000.0,
        poll_interval: float = 0.1,
        log_limiter: LogLimiter | None = None,
    ) -> None:
        """``log_limiter``: how often drops are logged (tests pass a short interval)."""
        self._handler = handler
        self._poll_interval = poll_interval
        self._log = log_limiter or LogLimiter()
        self._allow = parse_allow(allow)
        self._max_datagram = max_datagram
        self._rate = rate
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.socket(family, socket.SOCK_DGRAM)
            try:
                self._socket.bind((host, port))
            except OSError:
                self._socket.close()
                raise
        except OSError as exc:
            raise TransportError(_describe_bind_error(host, port, exc)) from exc
        self._socket.settimeout(poll_interval)
        bound = self._socket.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self.exposed = not ipaddress.ip_address(self.address[0]).is_loopback
        if self.exposed and not self._allow:
            log.warning(
                "OSC IS OPEN TO EVERY MACHINE THAT CAN REACH %s:%d: anyone on the network can "
                "change the picture. Limit it with --osc-allow ADDRESS_OR_NETWORK.",
                *self.address,
            )
        self._lock = threading.Lock()
        self._counts = {field.name: 0 for field in dataclasses.fields(OscCounters)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="osc", daemon=True)
        self._closed = False
        root = logging.getLogger()
        if _library_filter not in root.filters:
            root.addFilter(_library_filter)

    def start(self) -> OscServer:
        self._thread.start()
        return self

    @property
    def counters(self) -> OscCounters:
        with self._lock:
            return OscCounters(**self._counts)

    def _count(self, kind: str) -> int:
        with self._lock:
            self._counts[kind] += 1
            return self._counts[kind]

    # -- receiving ------------------------------------------------------------------------

    def _serve(self) -> None:
        """Run the receive loop until closed; if it fails, log it, count it and run it again."""
        while not self._stop.is_set():
            try:
                self._receive()
            except Exception:
                restarts = self._count("restarts")
                log.exception("OSC receive loop failed; restarted (%d so far)", restarts)
                self._stop.wait(0.05)

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self._socket.recvfrom(self._max_datagram + 1)
            except TimeoutError:
                self._log.flush()  # a quiet moment: sum up what a flood left unsaid
                _library_limiter.flush()
                continue
            except ConnectionResetError:
                # Windows reports an ICMP "port unreachable" after a reply (an --osc-reply
                # target not listening yet) as WSAECONNRESET on the next recvfrom of this
                # unconnected socket; Python's ioctl cannot switch that off
                # (SIO_UDP_CONNRESET is not among the codes socket.ioctl accepts).
                continue
            except OSError:
                if self._stop.is_set():
                    return
                self._drop("malformed", "OSC socket error; still listening")
                continue
            self._count("received")
            peer = (str(sender[0]), int(sender[1]))
            if not self._allowed(peer[0]):
                self._drop("refused", f"OSC from {peer[0]} refused: not in --osc-allow")
                continue
            if not self._within_rate(peer):
                self._drop("flooded", f"OSC from {peer[0]} dropped: over {self._rate:g}/s")
                continue
            if len(data) > self._max_datagram:
                self._drop(
                    "malformed", f"OSC datagram from {peer[0]} over {self._max_datagram} bytes"
                )
                continue
            self._dispatch(data, peer)

    def _allowed(self, host: str) -> bool:
        if not self._allow:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
        except ValueError:
            return False
        if address.is_loopback:
            return True
        return any(address in network for network in self._allow)

    def _within_rate(self, peer: tuple[str, int]) -> bool:
        """One bucket per sending socket: a runaway patch is cut, the rest still get in."""
        now = time.monotonic()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) >= 1024:
                self._buckets.clear()  # bounded: forget every sender rather than grow
            bucket = self._buckets[peer] = _Bucket(self._rate, now)
        bucket.tokens = min(self._rate, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _dispatch(self, data: bytes, peer: tuple[str, int]) -> None:
        from pythonosc.osc_message import OscMessage as _Decoded
        from pythonosc.osc_message import ParseError

        where = f"{peer[0]}:{peer[1]}"
        try:
            dgrams = list(split_packet(data))
        except MalformedPacket as exc:
            self._drop("malformed", f"OSC datagram from {where} dropped: {exc}")
            return
        for dgram in dgrams:
            try:
                decoded = _Decoded(dgram)
                address, args = decoded.address, tuple(decoded.params)
            except (ParseError, UnicodeDecodeError, ValueError, IndexError) as exc:
                # python-osc decodes strings as UTF-8 and lets UnicodeDecodeError through
                # (osc_types.get_string): a Latin-1 "/prompt caf\xe9" must not end this thread
                self._drop("malformed", f"OSC message from {where} dropped: {exc}")
                continue
            try:
                self._handler(OscMessage(address, args, peer))
            except ValueError as exc:
                self._drop("rejected", f"OSC {address[:80]} dropped: {exc}")
            except Exception:
                count = self._count("failed")
                if self._log.allow("failed"):
                    log.exception("OSC %s: handler failed (a bug; %d so far)", address[:80], count)
            else:
                self._count("accepted")

    def _drop(self, kind: str, text: str) -> None:
        count = self._count(kind)
        # A flood of junk must not flood the log (or slow this thread down).
        if self._log.allow(kind):
            log.warning("%s (%s so far: %d)", text, kind, count)

    # -- sending --------------------------------------------------------------------------

    def send(self, address: str, args: Sequence[Any], to: tuple[str, int]) -> bool:
        """Send one message from the listening socket; False (logged) if it could not go."""
        from pythonosc.osc_message_builder import OscMessageBuilder

        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        try:
            self._socket.sendto(builder.build().dgram, to)
        except (OSError, ValueError) as exc:
            count = self._count("failed")
            if self._log.allow("reply"):
                log.warning(
                    "OSC reply %s to %s:%s failed: %s (%d so far)",
                    address,
                    to[0],
                    to[1],
                    exc,
                    count,
                )
            return False
        return True

    def close(self) -> None:
        """Stop listening and join the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._poll_interval + 1.0)
        self._socket.close()
        self._log.flush(everything=True)

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
