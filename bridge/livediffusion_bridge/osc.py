"""An OSC-over-UDP server that never lets a bad datagram reach the frames.

Parsing is python-osc's; the receive loop is ours, so that every datagram that fails to parse,
and every message the handler rejects, is counted and logged, then dropped. The handler runs on
the server's thread: it should validate and hand over, not do work.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from livediffusion_bridge.errors import TransportError

__all__ = [
    "OscCounters",
    "OscMessageHandler",
    "OscServer",
    "check_message_size",
    "with_leading_slash",
]

log = logging.getLogger(__name__)

OscMessageHandler = Callable[[str, tuple[Any, ...]], None]
"""Called with ``(address, arguments)``; raise ``ValueError`` to reject a message."""

_MAX_DATAGRAM = 65_535
_LOG_EVERY = 100  # after the first few, log one rejected datagram in this many


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


@dataclass(frozen=True, slots=True)
class OscCounters:
    received: int
    accepted: int
    malformed: int
    rejected: int


class OscServer:
    """Receives OSC on ``host:port`` and calls ``handler`` for each message.

    ``port=0`` binds a free port (tests); :attr:`address` tells which.
    """

    def __init__(
        self,
        handler: OscMessageHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        poll_interval: float = 0.1,
    ) -> None:
        self._handler = handler
        self._poll_interval = poll_interval
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._socket = socket.socket(family, socket.SOCK_DGRAM)
            self._socket.bind((host, port))
        except OSError as exc:
            raise TransportError(
                f"cannot listen for OSC on {host}:{port}: {exc.strerror or exc}. "
                "Is another livediffusion (or another OSC app) already using that port? "
                "Pick another with --osc-port."
            ) from exc
        self._socket.settimeout(poll_interval)
        bound = self._socket.getsockname()
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._lock = threading.Lock()
        self._received = self._accepted = self._malformed = self._rejected = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="osc", daemon=True)
        self._closed = False

    def start(self) -> OscServer:
        self._thread.start()
        return self

    @property
    def counters(self) -> OscCounters:
        with self._lock:
            return OscCounters(self._received, self._accepted, self._malformed, self._rejected)

    def _serve(self) -> None:
        from pythonosc.osc_packet import OscPacket, ParseError

        while not self._stop.is_set():
            try:
                data, sender = self._socket.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("OSC socket error; still listening")
                continue
            with self._lock:
                self._received += 1
            data = with_leading_slash(data)
            try:
                messages = [timed.message for timed in OscPacket(data).messages]
            except (ParseError, UnicodeDecodeError) as exc:
                # python-osc decodes strings as UTF-8 and lets UnicodeDecodeError through
                # (osc_types.get_string): a Latin-1 "/prompt caf\xe9" must not end this thread
                self._drop("malformed", f"OSC datagram from {sender[0]}:{sender[1]} dropped: {exc}")
                continue
            for message in messages:
                problem = check_message_size(message.dgram)
                if problem is not None:
                    self._drop("malformed", f"OSC {message.address} dropped: {problem}")
                    continue
                try:
                    self._handler(message.address, tuple(message.params))
                except ValueError as exc:
                    self._drop("rejected", f"OSC {message.address} dropped: {exc}")
                except Exception:
                    self._drop("rejected", f"OSC {message.address} dropped: handler failed")
                    log.debug("handler failure", exc_info=True)
                else:
                    with self._lock:
                        self._accepted += 1

    def _drop(self, kind: str, text: str) -> None:
        with self._lock:
            if kind == "malformed":
                self._malformed += 1
                count = self._malformed
            else:
                self._rejected += 1
                count = self._rejected
        # A flood of junk must not flood the log (or slow this thread down).
        if count <= 10 or count % _LOG_EVERY == 0:
            log.warning("%s (%s so far: %d)", text, kind, count)

    def close(self) -> None:
        """Stop listening and join the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._poll_interval + 1.0)
        self._socket.close()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
