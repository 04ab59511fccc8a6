"""``file://PATH``: a video file played as if it were a live feed, looping by default.

Useful for rehearsing a set, for demos, and for reproducible runs. Decoding uses PyAV
(FFmpeg), imported only when such a source is opened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._options import Options
from ._pacing import Pacer
from .errors import (
    BackendUnavailableError,
    ClosedError,
    InvalidURIError,
    SourceNotFoundError,
    TransportError,
)
from .frame import Frame, FrameSource, Pixels, as_pixels
from .uri import SourceURI

__all__ = ["FALLBACK_FPS", "FileSource", "open_source"]

FALLBACK_FPS = 30.0
"""Used when the file states no frame rate and the URI gives none."""


def open_source(uri: SourceURI) -> FileSource:
    if not uri.target:
        raise InvalidURIError(
            f"file:// needs a path, for example file:///Users/me/clip.mp4 "
            f"or file://clip.mp4 ({uri})"
        )
    options = Options(uri, role="source")
    fps = options.rate("fps", 0.0)  # 0: the file's own rate
    loop = options.flag("loop", True)
    options.finish()
    path = Path(uri.target).expanduser()
    if path.is_dir():
        raise SourceNotFoundError(
            f"{path} is a directory: file:// plays one video file, for example "
            f"file://{path / 'clip.mp4'}"
        )
    if not path.is_file():
        raise SourceNotFoundError(f"video file not found: {path} (from {uri})")
    return FileSource(str(uri), path, fps=fps or None, loop=loop)


def _load_av() -> Any:
    try:
        import av
    except ImportError as exc:  # av is a core dependency; this means a broken install
        raise BackendUnavailableError(
            f'file:// sources need PyAV: pip install "livediffusion" (or pip install av): {exc}'
        ) from exc
    return av


class FileSource(FrameSource):
    """Decodes one frame per ``read`` and paces to the file's frame rate (or ``fps``).

    Variable-frame-rate files play at their average rate. With ``loop=False`` the source
    returns ``None`` forever once the file has ended. Each returned frame is freshly
    allocated by the decoder and never touched again here.
    """

    def __init__(self, uri: str, path: Path, *, fps: float | None, loop: bool) -> None:
        self.uri = uri
        self.path = path
        self._av = _load_av()
        self._loop = loop
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._container: Any = None
        self._frames: Iterator[Any] = iter(())
        self._pending: Pixels | None = None
        self._ended = False
        self.loops = 0
        """How many times playback wrapped around to the start."""
        native = self._open()
        self.fps = fps or native or FALLBACK_FPS
        self._pacer = Pacer(self.fps, self._stop)

    def _open(self) -> float | None:
        """(Re)open the container; returns the stream's average frame rate when it states one."""
        self._close_container()
        try:
            container = self._av.open(str(self.path))
        except (self._av.FFmpegError, OSError) as exc:
            raise TransportError(f"cannot open video file {self.path}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise TransportError(f"no video stream in {self.path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        self._container = container
        self._frames = iter(container.decode(stream))
        rate = stream.average_rate or stream.guessed_rate
        return float(rate) if rate else None

    def _close_container(self) -> None:
        container, self._container = self._container, None
        self._frames = iter(())
        if container is not None:
            container.close()

    def _decode(self) -> Pixels | None:
        """The next picture, wrapping around at the end when looping."""
        for attempt in range(2):
            try:
                frame = next(self._frames)
            except StopIteration:
                if not self._loop or attempt:
                    return None  # the end, or a file with no decodable frames
                # Reopening is simpler and more dependable than seeking across containers.
                self._open()
                self.loops += 1
                continue
            except self._av.FFmpegError as exc:
                raise TransportError(f"decoding {self.path} failed: {exc}") from exc
            return as_pixels(frame.to_ndarray(format="rgba"))
        return None

    def read(self, timeout: float) -> Frame | None:
        start = time.monotonic()
        with self._lock:
            if self._stop.is_set():
                raise ClosedError(f"{self.uri} is closed")
            if self._pending is None and not self._ended:
                self._pending = self._decode()
                self._ended = self._pending is None
            if self._pending is None:
                self._stop.wait(max(timeout, 0.0))
                return None
            # Decoding time counts against the caller's timeout.
            if not self._pacer.wait(timeout - (time.monotonic() - start)):
                return None
            pixels, self._pending = self._pending, None
            return Frame(pixels, time.monotonic())

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._close_container()
