"""``test://pattern``: a moving test picture, so the whole pipeline can run with no host.

Colour bars (fixed) over a rainbow band that scrolls, a disc that drifts on a Lissajous
path, and the frame number in binary along the bottom. Something moves in every frame and
the counter makes any two consecutive frames differ, so frozen or repeated output, and the
effect of temporal smoothing, are visible at a glance after processing.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from ._options import Options
from ._pacing import Pacer
from .errors import ClosedError, InvalidURIError
from .frame import Frame, FrameSource, Pixels
from .uri import SourceURI

__all__ = ["DEFAULT_FPS", "DEFAULT_SIZE", "PatternSource", "open_source"]

DEFAULT_SIZE = (512, 512)
"""The models' native resolution, so the pattern needs no resize by default."""
DEFAULT_FPS = 30.0
MIN_SIDE = 16

# 75% SMPTE-style bars: white, yellow, cyan, green, magenta, red, blue.
_BARS = (
    (191, 191, 191),
    (191, 191, 0),
    (0, 191, 191),
    (0, 191, 0),
    (191, 0, 191),
    (191, 0, 0),
    (0, 0, 191),
)
_COUNTER_BITS = 16
_OPAQUE = 255


def open_source(uri: SourceURI) -> PatternSource:
    if uri.target not in ("", "pattern"):
        raise InvalidURIError(f"unknown test source {uri.target!r} in {uri}; use test://pattern")
    options = Options(uri, role="source")
    size = options.size("size", DEFAULT_SIZE)
    fps = options.rate("fps", DEFAULT_FPS)
    options.finish()
    if min(size) < MIN_SIDE:
        raise InvalidURIError(f"test://pattern needs at least {MIN_SIDE}x{MIN_SIDE}, got {size}")
    return PatternSource(str(uri), size=size, fps=fps)


class PatternSource(FrameSource):
    """Renders the pattern on demand, paced to ``fps`` like a live camera.

    Every frame is a new array (one allocation and copy of the pre-rendered background);
    the source never touches a frame again once returned, so consumers may keep it on any
    thread. All other drawing writes into that array in place.
    """

    def __init__(self, uri: str, *, size: tuple[int, int], fps: float) -> None:
        self.uri = uri
        self._stop = threading.Event()
        self._pacer = Pacer(fps, self._stop)
        self._renderer = _Renderer(*size)
        self._index = 0
        self._start: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` of every frame."""
        return self._renderer.width, self._renderer.height

    @property
    def fps(self) -> float:
        return 1.0 / self._pacer.period

    def read(self, timeout: float) -> Frame | None:
        if self._stop.is_set():
            raise ClosedError(f"{self.uri} is closed")
        if not self._pacer.wait(timeout):
            return None
        now = time.monotonic()
        if self._start is None:
            self._start = now
        pixels = self._renderer.render(self._index, now - self._start)
        self._index += 1
        return Frame(pixels, time.monotonic())

    def close(self) -> None:
        self._stop.set()


class _Renderer:
    """Everything that does not move is drawn once here; ``render`` only patches."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        background = np.empty((height, width, 4), dtype=np.uint8)
        background[..., 3] = _OPAQUE
        self._band_top = height * 2 // 3
        for i, colour in enumerate(_BARS):
            left, right = i * width // len(_BARS), (i + 1) * width // len(_BARS)
            background[: self._band_top, left:right, :3] = colour
        self._background = background

        # One period of a hue ramp, twice, so scrolling is a slice, not a roll.
        hue = np.arange(2 * width, dtype=np.float32) / width
        ramp = np.empty((2 * width, 4), dtype=np.uint8)
        ramp[:, :3] = _hue_to_rgb(hue)
        ramp[:, 3] = _OPAQUE
        self._ramp = ramp

        self._radius = radius = max(2, min(width, height) // 8)
        centre = np.arange(2 * radius, dtype=np.float32) - radius + 0.5
        distance = np.hypot(centre[:, None], centre[None, :])
        self._disc = distance <= radius
        self._ring = self._disc & (distance >= radius - max(1, radius // 5))

        self._cell = max(1, min(width, height) // 40)
        self._bits = min(_COUNTER_BITS, width // self._cell)

    def render(self, index: int, seconds: float) -> Pixels:
        out = self._background.copy()
        width, height = self.width, self.height

        shift = int(seconds * width / 4) % width  # a quarter of the width per second
        out[self._band_top :] = self._ramp[shift : shift + width]

        diameter = 2 * self._radius
        x = round((width - diameter) * (0.5 + 0.5 * math.sin(2 * math.pi * 0.23 * seconds)))
        y = round((height - diameter) * (0.5 + 0.5 * math.cos(2 * math.pi * 0.31 * seconds)))
        spot = out[y : y + diameter, x : x + diameter]
        level = int(160 + 95 * math.sin(2 * math.pi * 0.5 * seconds))
        spot[self._disc] = (255, level, 255 - level, _OPAQUE)
        spot[self._ring] = (0, 0, 0, _OPAQUE)

        cell = self._cell
        for bit in range(self._bits):
            value = 255 if (index >> bit) & 1 else 0
            out[height - cell :, bit * cell : (bit + 1) * cell, :3] = value
        return out


def _hue_to_rgb(hue: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Fully saturated colours around the hue circle (``hue`` in turns, any range)."""
    sector = (hue % 1.0) * 6.0
    channels = np.stack(
        [np.abs(sector - 3.0) - 1.0, 2.0 - np.abs(sector - 2.0), 2.0 - np.abs(sector - 4.0)],
        axis=-1,
    )
    rgb: npt.NDArray[np.uint8] = (np.clip(channels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgb
