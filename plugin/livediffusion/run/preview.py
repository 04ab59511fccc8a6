"""``--preview`` and ``--sink window://``: a window of the output (and the input, side by side)
beside or as the sink, with the status line; closing it stops the server.

The window belongs to the thread that runs the server (the main thread, from the CLI), which
draws it while it waits between status lines; the engine's threads only hand pictures over.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from livediffusion_bridge import (
    BackendUnavailableError,
    Frame,
    FrameSink,
    FrameSource,
    NoDisplayError,
    Pixels,
    PreviewWindow,
    WindowSink,
)

__all__ = ["Preview", "attach_preview"]


class _TeeSource(FrameSource):
    """The source, with every frame read also shown in the window's input pane."""

    def __init__(self, source: FrameSource, window: PreviewWindow) -> None:
        self.inner = source
        self.uri = source.uri
        self._window = window

    @property
    def waiting_for(self) -> str | None:
        return self.inner.waiting_for

    @property
    def reconnects(self) -> int:  # type: ignore[override]  # the inner source's count
        return self.inner.reconnects

    def read(self, timeout: float) -> Frame | None:
        frame = self.inner.read(timeout)
        if frame is not None:
            self._window.show(frame.pixels, "input")
        return frame

    def close(self) -> None:
        self.inner.close()


class _TeeSink(FrameSink):
    """The sink, with every frame published also shown in the window's output pane."""

    def __init__(self, sink: FrameSink, window: PreviewWindow) -> None:
        self.inner = sink
        self.uri = sink.uri
        self._window = window

    @property
    def listen_address(self) -> str | None:
        return self.inner.listen_address

    @property
    def shown_as(self) -> str | None:
        return self.inner.shown_as

    def publish(self, pixels: Pixels) -> None:
        self.inner.publish(pixels)
        self._window.show(pixels, "output")

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True, slots=True)
class Preview:
    window: PreviewWindow
    source: FrameSource
    sink: FrameSink
    """What the engine should read and publish to: the originals, teed into the window."""


def attach_preview(
    mode: str,
    source: FrameSource,
    sink: FrameSink,
    *,
    stack: ExitStack,
    on_close: Callable[[], None],
    title: str = "livediffusion",
) -> Preview | None:
    """The preview ``mode`` (off, on, side-by-side) asks for, or the one a ``window://`` sink
    is; None when there is no window. The window is closed by ``stack``; ``on_close`` runs
    when the user closes it (Esc or the close button)."""
    window = sink.window if isinstance(sink, WindowSink) else None
    if window is None:
        if mode == "off":
            return None
        try:
            window = stack.enter_context(PreviewWindow(title))
        except NoDisplayError as exc:
            # The window's own message is written for window:// ("use another sink"); here
            # the option that asked for a window is --preview.
            raise BackendUnavailableError(
                f"--preview {mode} needs a display and there is none ({exc.detail}): set "
                "DISPLAY, or leave --preview out (--preview off) to run without the window"
            ) from None
        except BackendUnavailableError as exc:
            raise BackendUnavailableError(f"--preview {mode}: {exc}") from None
        sink = _TeeSink(sink, window)
    if mode == "side-by-side":
        source = _TeeSource(source, window)
    window.on_close.append(on_close)
    return Preview(window, source, sink)
