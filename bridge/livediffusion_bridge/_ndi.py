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

import atexit
import logging
import math
import os
import platform
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import LiveSink, LiveSource, SourceLost
from ._listing import SourceInfo
from ._options import Options
from .errors import BackendUnavailableError, SourceNotFoundError, TransportError
from .frame import Frame, Pixels
from .uri import SourceURI

__all__ = [
    "DEFAULT_SENDER_NAME",
    "NdiSink",
    "NdiSource",
    "Sender",
    "UnsupportedFormat",
    "frame_size",
    "list_sources",
    "open_sink",
    "open_source",
    "pick",
    "to_rgba",
]

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "livediffusion[ndi]"'
NDI_PYTHON_NEEDED = "6.3.2.1"
"""The first ndi-python with the calls this module makes (see :func:`binding_problem`)."""
UPGRADE_HINT = f'pip install --upgrade "ndi-python>={NDI_PYTHON_NEEDED}"'
DEFAULT_SENDER_NAME = "livediffusion"
RECEIVER_NAME = "livediffusion"
LOOPBACK = "127.0.0.1"
EXTRA_IPS_ENV = "LIVEDIFFUSION_NDI_EXTRA_IPS"

LOOPBACK_ALIASES: tuple[str, ...] = (
    ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
    if sys.platform.startswith("linux")
    else ("127.0.0.1",)
)
"""Where a probe finder asks for this machine's senders. On Linux all of 127.0.0.0/8 is
this machine, and each address is a separate connection, so a separate draw of which NDI
process answers (elsewhere only 127.0.0.1 is sure to exist; there mDNS normally works)."""

_CHUNK = 0.1
"""Longest single wait inside NDI, so ``close()`` from another thread is never held up long."""
_ANSWER_WAIT = 1.0
"""How long a sender that discovery listed may take to accept the connection."""
_ANSWER_POLL = 0.05
"""How long ``_connect`` waits for that inside one attempt (a local sender takes ~5 ms)."""
_FORGET_AFTER = 3.0
"""How long a listed sender that did not answer is passed over (discovery may lag)."""
_LOST_AFTER = 0.5
"""How long a connection may show no sender before the source counts it lost."""
_PROBE_ROUND = 0.25
"""Lifetime of one probe finder while listing: its answer arrives in milliseconds."""
_PROBE_MIN_AGE = 0.2
"""A probe younger than this is kept rather than replaced: it may not have answered yet."""
_FINDER_MIN_LIFE = 0.1
"""NDI 6.3.2 aborts the whole process ("terminate called after throwing an instance of
'std::system_error'", from a discovery thread) when a finder asking more than one extra IP
is destroyed within about a millisecond of being created (measured: within a few hundred
create/destroy cycles; never with 1 ms between). So no finder is destroyed younger than
this; the rule costs at most this long at ``close()``."""
_SETTLE = 0.75
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
        raise BackendUnavailableError(_load_failure(exc)) from exc
    problem = binding_problem(NDIlib)
    if problem is not None:
        raise BackendUnavailableError(problem)
    return NDIlib


def binding_problem(ndi: Any) -> str | None:
    """Why this ndi-python cannot run this module, in one line naming the fix; None if it can.

    This module calls ``recv_capture_v2(receiver, ms, want_video, want_audio,
    want_metadata)`` (asking for video only, so NDI never hands over audio or metadata to
    free) and ``RecvCreateV3(None, ...)`` (a receiver connected later). ndi-python binds
    both only from 6.3.2.1 (buresu/ndi-python ``src/main.cpp``, "Add new flags for
    recv_capture_v*"); 5.1.1.x binds ``recv_capture_v2(instance, timeout_in_ms)`` and a
    ``RecvCreateV3`` whose source must be a ``Source``, so every capture there raised a
    ``TypeError`` that no reconnect could cure. The installed distribution's version
    decides; a copy that pip did not install (no version recorded) is judged by the
    signature pybind11 writes into ``recv_capture_v2.__doc__``.
    """
    version = _installed_version()
    if version is not None:
        if _version_key(version) >= _version_key(NDI_PYTHON_NEEDED):
            return None
        found = f"ndi-python {version} is installed"
    else:
        signature = str(getattr(ndi.recv_capture_v2, "__doc__", None) or "")
        if "recv_capture_v2(" not in signature or "want_audio" in signature:
            return None  # the five-argument call, or nothing to judge by: try it
        found = "the installed ndi-python lacks recv_capture_v2's want_video/want_audio flags"
    return (
        f"{found}, but livediffusion needs ndi-python {NDI_PYTHON_NEEDED} or newer: "
        f"{UPGRADE_HINT}{_no_wheel_note()}"
    )


def _installed_version() -> str | None:
    try:
        return metadata.version("ndi-python")
    except metadata.PackageNotFoundError:
        return None


def _version_key(version: str) -> tuple[int, ...]:
    """``"6.3.2.6"`` -> ``(6, 3, 2, 6)``; a suffix (``rc1``, ``.post1``) ends the numbers."""
    numbers: list[int] = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(part):
            break
    return tuple(numbers)


def _no_wheel_note() -> str:
    """Where pip has no new enough wheel: Intel Macs and macOS 12 or older only get 5.1.1.1."""
    if sys.platform != "darwin":
        return ""
    release = _version_key(platform.mac_ver()[0] or "0")
    if platform.machine() == "x86_64" or release < (13,):
        return (
            " (pip has no such wheel for Intel Macs or macOS 12 and older:"
            " use Syphon here, or NDI on another machine)"
        )
    return ""


def _load_failure(exc: BaseException) -> str:
    """The package is there but a system library it links is not (a bare Linux image lacks
    Avahi's client libraries): say which, not "install the package" again."""
    text = str(exc)
    missing = re.search(r"(lib[\w.+-]+\.so(?:\.\d+)*): cannot open shared object file", text)
    if missing is None:
        return f"NDI needs the ndi-python package: {INSTALL_HINT} ({text})"
    library = missing.group(1)
    hint = ""
    if library.startswith("libavahi"):
        hint = " (Debian/Ubuntu: apt install libavahi-client3; Fedora: dnf install avahi-libs)"
    elif library.startswith("libdbus"):
        hint = " (Debian/Ubuntu: apt install libdbus-1-3)"
    return f"ndi-python is installed, but the NDI runtime needs the system library {library}{hint}"


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


# -- names and addresses -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """One sender as discovery (or this process) knows it. The field names are NDIlib's."""

    ndi_name: str
    url_address: str


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


def describe_target(target: str) -> str:
    """What a source waits for, in words: the status line shows it."""
    address = parse_address(target)
    if address is not None:
        return f"NDI sender at {address}"
    if target:
        return f"NDI sender {target!r}"
    return "any NDI sender (not our own)"


def pick(sources: list[Any], target: str) -> Any | None:
    """The source ``target`` names: exact full name, then the part in parentheses, then
    the same ignoring case; earlier entries win a tie. An empty target takes the first."""
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


def merge_ips(*lists: str) -> str:
    """Comma-separated IP lists joined in order, without blanks or repeats."""
    seen: list[str] = []
    for ip in (part.strip() for text in lists for part in text.split(",")):
        if ip and ip not in seen:
            seen.append(ip)
    return ",".join(seen)


def _extra_ips(option: str) -> str:
    return merge_ips(LOOPBACK, os.environ.get(EXTRA_IPS_ENV, ""), option)


def normal_address(url: str) -> str:
    """A sender address found through a loopback alias, as ``127.0.0.1:PORT``."""
    host, sep, port = url.rpartition(":")
    if sep and host in LOOPBACK_ALIASES:
        return f"{LOOPBACK}:{port}"
    return url


def unique_senders(senders: list[Sender]) -> list[Sender]:
    """Each (name, address) once, addresses normalised, first occurrence first."""
    seen: set[Sender] = set()
    out: list[Sender] = []
    for listed in senders:
        sender = Sender(listed.ndi_name, normal_address(listed.url_address))
        if sender not in seen:
            seen.add(sender)
            out.append(sender)
    return out


# -- discovery -----------------------------------------------------------------------------


class _OwnSenders:
    """This process's senders, by full NDI name: found without asking discovery."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._senders: dict[str, str] = {}

    def add(self, name: str, address: str) -> None:
        with self._lock:
            self._senders[name] = address

    def remove(self, name: str, address: str) -> None:
        """Forget ``name`` if it still means ``address`` (not a newer sender of that name)."""
        with self._lock:
            if self._senders.get(name) == address:
                del self._senders[name]

    def senders(self) -> list[Sender]:
        with self._lock:
            return [Sender(name, address) for name, address in self._senders.items()]


_OWN = _OwnSenders()


def _create_finder(ndi: Any, extra_ips: str) -> Any:
    # show_local_sources=True, no groups (NDI's default group "public" is what senders join).
    finder = ndi.find_create_v2(ndi.FindCreate(True, None, extra_ips or None))
    if finder is None:
        raise TransportError("NDI could not create a finder")
    return finder


class _Discovery:
    """A long-lived finder plus a probe finder that :meth:`reprobe` replaces.

    The long-lived one accumulates what mDNS and the configured IPs report (mDNS answers
    take a while on a real network, so it is never restarted). The probe asks the loopback
    aliases and the configured IPs anew each time it is replaced: a new connection to a
    shared port 5960 may reach another NDI process there (see the module notes).
    """

    def __init__(self, ndi: Any, extra_ips: str) -> None:
        self._ndi = ndi
        self._main_ips = extra_ips
        self._probe_ips = merge_ips(",".join(LOOPBACK_ALIASES), extra_ips)
        self._main: Any = None
        self._main_born = 0.0
        self._probe: Any = None
        self._probe_born = 0.0

    def _ensure(self) -> None:
        now = time.monotonic()
        if self._main is None:
            self._main, self._main_born = _create_finder(self._ndi, self._main_ips), now
        if self._probe is None:
            self._probe, self._probe_born = _create_finder(self._ndi, self._probe_ips), now

    def _destroy(self, finder: Any, born: float) -> None:
        young = born + _FINDER_MIN_LIFE - time.monotonic()
        if young > 0:
            time.sleep(young)  # see _FINDER_MIN_LIFE: destroying it now could abort
        self._ndi.find_destroy(finder)

    def senders(self) -> list[Sender]:
        """What the probe and the long-lived finder list now (probe first: it is fresh)."""
        self._ensure()
        found = [
            Sender(str(source.ndi_name or ""), str(source.url_address or ""))
            for finder in (self._probe, self._main)
            for source in self._ndi.find_get_current_sources(finder)
        ]
        return unique_senders(found)

    def reprobe(self) -> None:
        """Replace the probe, unless it is too young to have answered: the new one starts
        asking at once, and its answers arrive within milliseconds."""
        if self._probe is not None:
            if time.monotonic() - self._probe_born < _PROBE_MIN_AGE:
                return
            probe, self._probe = self._probe, None
            self._destroy(probe, self._probe_born)
        self._ensure()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the long-lived finder's list changes."""
        self._ensure()
        # find_wait_for_sources returns True as soon as the list changed since the last
        # call and False at the timeout (measured); either way the caller looks again.
        self._ndi.find_wait_for_sources(self._main, _ms(seconds))

    def close(self) -> None:
        probe, main = self._probe, self._main
        self._probe = self._main = None
        if probe is not None:
            self._destroy(probe, self._probe_born)
        if main is not None:
            self._destroy(main, self._main_born)


# -- listing -------------------------------------------------------------------------------


def list_sources(timeout: float) -> list[SourceInfo]:
    """NDI senders visible within ``timeout`` s (this process's own included); returns
    early once the list has not changed for a while."""
    ndi = _acquire()
    try:
        discovery = _Discovery(ndi, _extra_ips(""))
        try:
            senders = _survey(discovery, timeout)
        finally:
            discovery.close()
    finally:
        _release()
    return [
        SourceInfo(
            uri=str(SourceURI("ndi", sender.ndi_name)),
            kind="ndi",
            name=sender.ndi_name,
            address=sender.url_address or None,
        )
        for sender in senders
    ]


def _survey(discovery: _Discovery, timeout: float) -> list[Sender]:
    """Everything seen over several probes, one entry per name (loopback address first)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    found: dict[str, str] = {}
    changed_at = time.monotonic()
    while True:
        for sender in [*_OWN.senders(), *discovery.senders()]:
            known = found.get(sender.ndi_name)
            if known is None or (
                not known.startswith(f"{LOOPBACK}:") and sender.url_address.startswith(LOOPBACK)
            ):
                found[sender.ndi_name] = sender.url_address
                changed_at = time.monotonic()
        now = time.monotonic()
        if now >= deadline or (found and now - changed_at >= _SETTLE):
            return [Sender(name, address) for name, address in found.items()]
        discovery.reprobe()  # then give the new probe a round to collect its answers
        discovery.wait(min(deadline - now, _PROBE_ROUND))


# -- pixel formats -------------------------------------------------------------------------


class UnsupportedFormat(ValueError):
    """A pixel format this module does not convert (16-bit P216/PA16, unknown codes)."""


_PACKED = {"RGBA": (0, 1, 2), "RGBX": (0, 1, 2), "BGRA": (2, 1, 0), "BGRX": (2, 1, 0)}
"""4-byte formats: where R, G and B sit in each pixel."""


def fourcc_text(code: int) -> str:
    """NDI FourCC codes are four ASCII characters, first one in the low byte."""
    return int(code).to_bytes(4, "little", signed=False).decode("ascii", "replace")


def _natural_stride(fourcc: str, width: int) -> int:
    if fourcc in _PACKED:
        return width * 4
    if fourcc in ("UYVY", "UYVA"):
        return (width + 1) // 2 * 4
    return width  # the 8-bit planar formats: one byte per luma sample


def frame_size(fourcc: str, width: int, height: int, stride: int) -> int:
    """Bytes a received frame occupies in NDI's buffer: the planes the NDI SDK describes
    (*Frame Types*), all sized from ``line_stride_in_bytes`` of the first plane.

    Raises :class:`UnsupportedFormat` for formats :func:`to_rgba` does not convert.
    """
    stride = stride or _natural_stride(fourcc, width)
    if fourcc in _PACKED or fourcc == "UYVY":
        return stride * height
    if fourcc == "UYVA":
        # The alpha plane follows the UYVY plane; its rows are stride/2 apart (measured:
        # a 50-wide frame had a 128-byte UYVY stride and alpha rows 64 bytes apart).
        return stride * height + stride // 2 * height
    if fourcc == "NV12":
        return stride * height + stride * (height // 2)
    if fourcc in ("I420", "YV12"):
        return stride * height + 2 * (stride // 2) * (height // 2)
    raise UnsupportedFormat(f"pixel format {fourcc!r} is not supported")


def to_rgba(
    fourcc: str, raw: npt.NDArray[np.uint8], width: int, height: int, stride: int
) -> Pixels:
    """Convert one received frame (its bytes in NDI's layout) to contiguous RGBA.

    ``raw`` holds at least :func:`frame_size` bytes; the result may share memory with it.
    YUV is read as BT.709 with limited (16-235) range: that is what this NDI runtime
    writes and reads at every size, measured, although the NDI SDK documents BT.601 for
    SD sizes. Raises :class:`UnsupportedFormat`, or ``ValueError`` for a frame whose
    numbers do not add up.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame has no pixels: {width}x{height}")
    stride = stride or _natural_stride(fourcc, width)
    if stride < _natural_stride(fourcc, width):
        raise ValueError(f"stride {stride} is too small for {width} pixels of {fourcc}")
    size = frame_size(fourcc, width, height, stride)
    flat = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if flat.size < size:
        raise ValueError(f"{fourcc} frame {width}x{height} needs {size} bytes, got {flat.size}")
    first = flat[: stride * height].reshape(height, stride)
    if fourcc in _PACKED:
        rows = first[:, : width * 4].reshape(height, width, 4)
        red, green, blue = _PACKED[fourcc]
        if (red, green, blue) == (0, 1, 2):
            pixels = np.ascontiguousarray(rows)
        else:
            pixels = np.ascontiguousarray(rows[..., (red, green, blue, 3)])
        if fourcc.endswith("X"):
            pixels[..., 3] = 255
        return pixels
    if fourcc in ("UYVY", "UYVA"):
        pairs = (width + 1) // 2
        macro = first[:, : pairs * 4].reshape(height, pairs, 4)
        luma = macro[..., 1::2].reshape(height, pairs * 2)[:, :width]
        columns = np.arange(width) // 2
        alpha = None
        if fourcc == "UYVA":
            half = stride // 2
            plane = flat[stride * height : stride * height + half * height]
            alpha = plane.reshape(height, half)[:, :width]
        return yuv_to_rgba(luma, macro[:, columns, 0], macro[:, columns, 2], alpha)
    luma = first[:, :width]
    chroma_rows = height // 2
    if chroma_rows < 1:
        raise ValueError(f"{fourcc} frame {width}x{height} has no chroma rows")
    rest = flat[stride * height :]
    half_width = (width + 1) // 2
    if fourcc == "NV12":
        interleaved = rest[: stride * chroma_rows].reshape(chroma_rows, stride)
        if stride < half_width * 2:
            raise ValueError(f"stride {stride} is too small for the chroma of {width} pixels")
        uv = interleaved[:, : half_width * 2].reshape(chroma_rows, half_width, 2)
        u_plane, v_plane = uv[..., 0], uv[..., 1]
    else:
        half = stride // 2
        if half < half_width:
            raise ValueError(f"stride {stride} is too small for the chroma of {width} pixels")
        first_plane = rest[: half * chroma_rows].reshape(chroma_rows, half)[:, :half_width]
        second = rest[half * chroma_rows : 2 * half * chroma_rows].reshape(chroma_rows, half)
        second_plane = second[:, :half_width]
        # I420 is Y, U, V; YV12 is Y, V, U (the SDK's code sample shows V first for both).
        u_plane, v_plane = (
            (first_plane, second_plane) if fourcc == "I420" else (second_plane, first_plane)
        )
    rows = np.minimum(np.arange(height) // 2, chroma_rows - 1)[:, None]
    columns = (np.arange(width) // 2)[None, :]
    return yuv_to_rgba(luma, u_plane[rows, columns], v_plane[rows, columns], None)


def yuv_to_rgba(
    y: npt.NDArray[np.uint8],
    u: npt.NDArray[np.uint8],
    v: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.uint8] | None,
) -> Pixels:
    """BT.709 limited-range Y'CbCr (one sample of each per pixel) to RGBA."""
    luma = (y.astype(np.float32) - 16.0) * np.float32(255 / 219)
    cb = (u.astype(np.float32) - 128.0) * np.float32(255 / 224)
    cr = (v.astype(np.float32) - 128.0) * np.float32(255 / 224)
    pixels: Pixels = np.empty((*y.shape, 4), dtype=np.uint8)
    for channel, value in enumerate(
        (luma + 1.5748 * cr, luma - 0.18732 * cb - 0.46812 * cr, luma + 1.8556 * cb)
    ):
        np.clip(value + 0.5, 0, 255, out=value)
        pixels[..., channel] = value
    pixels[..., 3] = 255 if alpha is None else alpha
    return pixels


def _frame_bytes(video: Any, size: int) -> npt.NDArray[np.uint8]:
    """``size`` bytes from the start of a received frame's buffer, copied out of NDI's.

    ndi-python's ``VideoFrameV2.data`` getter builds an array of shape
    ``(yres, xres, line_stride_in_bytes // xres)`` with row stride ``line_stride_in_bytes``
    and no base object, which pybind11 answers by copying just those elements. That shape
    loses bytes whenever the stride is no multiple of the width, and never reaches the
    planes after the first. So the frame's numbers are set, for this one read, to a
    ``size`` x 1 x 1 array of 1-byte rows (an exact copy of ``size`` bytes), then restored
    before the frame is freed.
    """
    saved = (video.xres, video.yres, video.line_stride_in_bytes)
    try:
        video.xres, video.yres, video.line_stride_in_bytes = 1, size, 1
        data = np.asarray(video.data, dtype=np.uint8)
    finally:
        video.xres, video.yres, video.line_stride_in_bytes = saved
    if data.size != size:
        raise ValueError(f"ndi-python returned {data.size} bytes, expected {size}")
    if not data.flags.owndata:  # a binding that hands out a view of NDI's buffer: copy it
        data = data.copy()
    return data.reshape(-1)


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
