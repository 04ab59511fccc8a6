"""``camera://INDEX`` or ``camera://NAME``: a webcam, capture card or virtual camera via PyAV.

FFmpeg's platform input devices do the capture: AVFoundation on macOS (which is also how OBS
feeds us there, through its Virtual Camera), DirectShow on Windows, V4L2 on Linux. Each
platform names devices its own way; :data:`PLATFORMS` holds the differences, one entry per
OS, so the read path is the same everywhere (and a test can point it at FFmpeg's ``lavfi``
test source, which needs no device).

The device is opened lazily on the reading thread and decoded on a thread of its own that
keeps only the newest picture: a reader slower than the camera skips frames instead of
falling behind, and PyAV releases the GIL while it waits for and decodes the next one.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._base import LiveSource, SourceLost
from ._listing import SourceInfo
from ._options import Options
from .errors import BackendUnavailableError, TransportError
from .frame import Frame, as_pixels
from .uri import SourceURI

__all__ = [
    "DEFAULT_FPS",
    "PLATFORMS",
    "CameraSource",
    "DeviceFormat",
    "list_sources",
    "open_source",
    "parse_avfoundation_devices",
    "parse_dshow_devices",
]

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
"""Asked of the device when the URI gives no ``fps``: every webcam offers it, while
AVFoundation's own default (29.97) is refused by many cameras."""
OPEN_TIMEOUT = 10.0
READ_TIMEOUT = 5.0
"""A device that sends nothing for this long counts as gone (unplugged, taken by another
app); the source then waits for it to come back."""

Size = tuple[int, int]


@dataclass(frozen=True, slots=True)
class DeviceFormat:
    """How one OS's FFmpeg input device opens and lists cameras.

    ``address(target, fps, size)`` turns what follows ``camera://`` into ``av.open``'s file
    name and options; ``cameras()`` lists ``(target, name)`` pairs, ``target`` being what
    ``camera://`` takes to open that camera again.
    """

    format: str
    label: str
    address: Callable[[str, float, Size | None], tuple[str, dict[str, str]]]
    cameras: Callable[[], list[tuple[str, str]]]


def _load_av() -> Any:
    try:
        import av
    except ImportError as exc:  # av is a core dependency; this means a broken install
        raise BackendUnavailableError(
            f'camera:// sources need PyAV: pip install "livediffusion" (or pip install av): {exc}'
        ) from exc
    return av


def _device_settings(fps: float, size: Size | None) -> dict[str, str]:
    settings = {"framerate": f"{fps:g}"}
    if size is not None:
        settings["video_size"] = f"{size[0]}x{size[1]}"
    return settings


# -- what the libav log says: device listings ---------------------------------------------

# "[dshow @ 000001bd07e70b00] " or "[in#0 @ 0x7f...] ": present when the text comes from the
# ffmpeg command line, absent in PyAV's captured messages (it passes the name separately).
_LOG_PREFIX = re.compile(r"^\[[^\]]* @ [^\]]*\]\s?")
_AVF_ENTRY = re.compile(r"^\[(\d+)\]\s+(.+?)\s*$")
_DSHOW_ENTRY = re.compile(r'^\s*"(.+)"(?:\s+\(([^)]*)\))?\s*$')


def _log_lines(text: Iterable[str]) -> list[str]:
    return [_LOG_PREFIX.sub("", line) for chunk in text for line in chunk.splitlines()]


def parse_avfoundation_devices(text: Iterable[str]) -> list[tuple[int, str]]:
    """``(index, name)`` of each video device in AVFoundation's ``list_devices`` log."""
    found: list[tuple[int, str]] = []
    in_video = False
    for line in _log_lines(text):
        if line.rstrip().endswith("video devices:"):
            in_video = True
        elif line.rstrip().endswith("audio devices:"):
            in_video = False
        elif in_video and (match := _AVF_ENTRY.match(line)):
            found.append((int(match.group(1)), match.group(2)))
    return found


def parse_dshow_devices(text: Iterable[str]) -> list[str]:
    """The video device names in DirectShow's ``list_devices`` log.

    FFmpeg 4.4 and newer tag each device (``"OBS Virtual Camera" (video)``); older builds
    print a "DirectShow video devices" heading before the names instead.
    """
    found: list[str] = []
    in_video = False
    for line in _log_lines(text):
        if "DirectShow video devices" in line:
            in_video = True
            continue
        if "DirectShow audio devices" in line:
            in_video = False
            continue
        match = _DSHOW_ENTRY.match(line)
        if match is None or "Alternative name" in line:
            continue
        kinds = match.group(2)
        if (in_video if kinds is None else "video" in kinds) and match.group(1) not in found:
            found.append(match.group(1))
    return found


def _device_log(format: str, file: str) -> list[str]:
    """Open ``format`` with ``list_devices`` and return what it logged (it lists, then fails).

    PyAV's libav logging is process-wide and off by default: it is switched to INFO only
    for this call, captured on this thread only, and put back.
    """
    av = _load_av()
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as captured, contextlib.suppress(av.FFmpegError, OSError):
            av.open(file, format=format, options={"list_devices": "true"}).close()
    finally:
        av.logging.set_level(previous)
    return [message for _level, _name, message in captured]


# -- the three platforms ------------------------------------------------------------------


def _avfoundation_address(target: str, fps: float, size: Size | None) -> tuple[str, dict[str, str]]:
    # "VIDEO:AUDIO": ":none" asks for no microphone. Digits are an index, anything else a name.
    return f"{target or 0}:none", _device_settings(fps, size)


def _avfoundation_cameras() -> list[tuple[str, str]]:  # pragma: no cover - needs macOS
    found = parse_avfoundation_devices(_device_log("avfoundation", ""))
    return [(name, name) for _index, name in found]


def _dshow_address(target: str, fps: float, size: Size | None) -> tuple[str, dict[str, str]]:
    name = target
    if not target or target.isdigit():  # DirectShow opens by name only
        names = [name for _target, name in _dshow_cameras()]
        index = int(target or 0)
        if index >= len(names):
            raise TransportError(f"no camera {index}; DirectShow lists {names or 'none'}")
        name = names[index]
    settings = _device_settings(fps, size)
    settings["rtbufsize"] = "64M"  # room for a few raw HD frames; we read the newest anyway
    return f"video={name}", settings


def _dshow_cameras() -> list[tuple[str, str]]:  # pragma: no cover - needs Windows
    return [(name, name) for name in parse_dshow_devices(_device_log("dshow", "dummy"))]


V4L2_DEVICES = Path("/dev")
V4L2_SYSFS = Path("/sys/class/video4linux")


def _v4l2_cameras() -> list[tuple[str, str]]:
    """``(index, name)`` of every /dev/videoN, named from sysfs (one camera often has two
    nodes, the second for metadata: both are listed, as the kernel shows them)."""
    nodes = []
    for folder in V4L2_SYSFS.glob("video*"):
        number = folder.name.removeprefix("video")
        if not number.isdigit() or not (V4L2_DEVICES / folder.name).exists():
            continue
        try:
            name = (folder / "name").read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            name = folder.name
        nodes.append((int(number), name or folder.name))
    return [(str(number), name) for number, name in sorted(nodes)]


def _v4l2_address(target: str, fps: float, size: Size | None) -> tuple[str, dict[str, str]]:
    if not target or target.isdigit():
        path = str(V4L2_DEVICES / f"video{int(target or 0)}")
    elif target.startswith("/"):
        path = target
    else:
        cameras = _v4l2_cameras()
        matches = [index for index, name in cameras if name.casefold() == target.casefold()]
        if not matches:
            names = ", ".join(f"{index}: {name}" for index, name in cameras) or "none"
            raise TransportError(f"no V4L2 camera named {target!r} (cameras: {names})")
        path = str(V4L2_DEVICES / f"video{matches[0]}")
    return path, _device_settings(fps, size)


PLATFORMS: dict[str, DeviceFormat] = {
    "darwin": DeviceFormat(
        "avfoundation", "AVFoundation", _avfoundation_address, _avfoundation_cameras
    ),
    "win32": DeviceFormat("dshow", "DirectShow", _dshow_address, _dshow_cameras),
    "linux": DeviceFormat("v4l2", "V4L2", _v4l2_address, _v4l2_cameras),
}
"""sys.platform -> its FFmpeg camera input."""


def _platform() -> DeviceFormat:
    key = "linux" if sys.platform.startswith("linux") else sys.platform
    device = PLATFORMS.get(key)
    if device is None:
        raise BackendUnavailableError(
            f"camera:// has no FFmpeg camera input for {sys.platform}; "
            "it works on macOS (AVFoundation), Windows (DirectShow) and Linux (V4L2)"
        )
    av = _load_av()
    try:
        av.format.ContainerFormat(device.format)
    except ValueError:
        raise BackendUnavailableError(
            f"this PyAV build has no {device.label} input ({device.format}); install one built "
            "with FFmpeg's devices: pip install --force-reinstall --no-binary av av"
        ) from None
    return device


# -- the bridge's entry points -------------------------------------------------------------


def open_source(uri: SourceURI) -> CameraSource:
    options = Options(uri, role="source")
    fps = options.rate("fps", DEFAULT_FPS)
    size = options.size("size", (0, 0))
    options.finish()
    return CameraSource(
        str(uri), uri.target, fps=fps, size=size if size != (0, 0) else None, device=_platform()
    )


def list_sources(timeout: float) -> list[SourceInfo]:
    """The cameras this OS's FFmpeg input can open (``timeout`` is not needed: listing is a
    local call)."""
    device = _platform()
    return [
        SourceInfo(str(SourceURI("camera", target)), "camera", name)
        for target, name in device.cameras()
    ]


class CameraSource(LiveSource):
    """Frames from one camera, RGBA, at ``size`` when one was asked (rescaled if the device
    could not give it), else at the device's own size.

    ``dropped`` counts pictures the camera delivered that were replaced by a newer one
    before anybody read them.
    """

    def __init__(
        self, uri: str, target: str, *, fps: float, size: Size | None, device: DeviceFormat
    ) -> None:
        super().__init__(uri, describe=f"camera {target or '0'} ({device.label})")
        self.target = target
        self.fps = fps
        self.size = size
        self.device = device
        self._av = _load_av()
        self._reader: _Reader | None = None
        self._dropped_before = 0

    @property
    def dropped(self) -> int:
        reader = self._reader
        return self._dropped_before + (reader.replaced if reader is not None else 0)

    def _connect(self) -> bool:
        file, settings = self.device.address(self.target, self.fps, self.size)
        av = self._av
        try:
            container = av.open(
                file,
                format=self.device.format,
                options=settings,
                timeout=(OPEN_TIMEOUT, READ_TIMEOUT),
            )
        except (av.FFmpegError, OSError) as exc:
            raise TransportError(f"cannot open {file!r} ({self.device.format}): {exc}") from exc
        if not container.streams.video:
            container.close()
            raise TransportError(f"{file!r} ({self.device.format}) has no video stream")
        self._reader = _Reader(container, self.size, av.FFmpegError, name=self.describe)
        return True

    def _grab(self, deadline: float) -> Frame | None:
        assert self._reader is not None
        return self._reader.take(deadline)

    def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            self._dropped_before += reader.replaced
            reader.stop(timeout=1.0)


class _Reader:
    """Decodes one open device on its own thread; holds only the newest picture.

    The thread owns the container from here on and closes it when it ends, so a device
    stuck in a read (up to :data:`READ_TIMEOUT`) never blocks whoever stops the reader.
    """

    def __init__(
        self, container: Any, size: Size | None, errors: type[Exception], *, name: str
    ) -> None:
        self._container = container
        self._size = size
        self._errors = errors
        self._ready = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._stopping = threading.Event()
        self.problem = ""
        self.replaced = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        container = self._container
        try:
            # No frame threading (FFmpeg's default here): it would hold frames back.
            for decoded in container.decode(container.streams.video[0]):
                if self._stopping.is_set():
                    break
                picture = decoded
                if self._size is not None and (picture.width, picture.height) != self._size:
                    picture = picture.reformat(width=self._size[0], height=self._size[1])
                frame = Frame(as_pixels(picture.to_ndarray(format="rgba")), time.monotonic())
                with self._ready:
                    if self._latest is not None:
                        self.replaced += 1
                    self._latest = frame
                    self._ready.notify_all()
            else:
                self.problem = "the device stopped sending"
        except (self._errors, OSError) as exc:
            self.problem = str(exc)
        except Exception as exc:
            log.exception("decoding the camera failed")
            self.problem = repr(exc)
        finally:
            with contextlib.suppress(Exception):
                container.close()
            with self._ready:
                self._ended = True
                self._ready.notify_all()

    def take(self, deadline: float) -> Frame | None:
        """The newest picture not yet taken, waiting until ``deadline`` for one; raises
        :class:`SourceLost` once the device stopped and nothing is left."""
        with self._ready:
            while self._latest is None and not self._ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._ready.wait(remaining)
            frame, self._latest = self._latest, None
        if frame is None:
            raise SourceLost(self.problem or "the device stopped sending")
        return frame

    def stop(self, timeout: float) -> None:
        self._stopping.set()
        self._thread.join(timeout)
