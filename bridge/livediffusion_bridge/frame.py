"""The one frame type that crosses the bridge, and the source/sink interfaces.

Frames are always RGBA, 8 bits per channel, C-contiguous ``(height, width, 4)`` arrays:
every transport converts at its edge (NDI can deliver RGBA itself, Syphon and Spout are
RGBA already), so nothing downstream has to track pixel orders.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

__all__ = ["Frame", "FrameSink", "FrameSource", "Pixels", "as_pixels"]

Pixels = npt.NDArray[np.uint8]
"""An ``(height, width, 4)`` RGBA uint8 array, C-contiguous."""


def as_pixels(array: npt.ArrayLike) -> Pixels:
    """Validate ``array`` as RGBA pixels, copying only when it is not contiguous uint8."""
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 4:
        raise ValueError(f"expected an (height, width, 4) RGBA array, got shape {pixels.shape}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"frame has no pixels: shape {pixels.shape}")
    return pixels


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured picture and when it was captured.

    ``timestamp`` is ``time.monotonic()`` at the moment the source handed the frame over;
    the engine measures latency from it.
    """

    pixels: Pixels
    timestamp: float

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


class FrameSource(abc.ABC):
    """Where frames come from. Read from one thread; ``close()`` may come from any."""

    uri: str
    reconnects: int = 0
    """How many times the sender came back after it was lost."""

    @property
    def waiting_for(self) -> str | None:
        """What the source is waiting for while its sender is away (the status line says it);
        None while frames can flow."""
        return None

    @abc.abstractmethod
    def read(self, timeout: float) -> Frame | None:
        """The next frame newer than the last one returned, or ``None`` after ``timeout`` s.

        A source that lost its sender returns ``None`` while it waits for it to come back;
        it never raises for a sender that merely went away.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the transport. Safe to call twice."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FrameSink(abc.ABC):
    """Where frames go. Opens lazily at the first frame's size."""

    uri: str

    @property
    def listen_address(self) -> str | None:
        """Where receivers can connect directly (``host:port``), when the transport has one."""
        return None

    @property
    def shown_as(self) -> str | None:
        """What a host lists for this output, to pick it there (``NDI source 'HOST (NAME)'``),
        once the sender exists; None before, or for sinks no host lists."""
        return None

    @abc.abstractmethod
    def publish(self, pixels: Pixels) -> None:
        """Send one RGBA frame. The sink is done with ``pixels`` when this returns."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop publishing. Safe to call twice."""

    def __enter__(self) -> FrameSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
