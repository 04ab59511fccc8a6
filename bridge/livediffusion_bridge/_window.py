"""``window://TITLE``: the output on screen, optionally beside the input, with a status line.

For people with no host at all (camera in, window out), and for a look at what goes out
beside any other sink. Tk (the standard library's tkinter) draws it.

Tk must live on one thread, and on macOS that thread must be the main one. So a
:class:`PreviewWindow` belongs to the thread that opened it, which must also call
:func:`livediffusion_bridge.pump_events` (the server's main loop does). Every other thread
only hands pictures over through a one-picture slot per pane, newest wins: a window that
draws slower than frames arrive skips frames, it never queues them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ._options import Options
from .errors import BackendUnavailableError, ClosedError, InvalidURIError
from .frame import FrameSink, Pixels, as_pixels
from .uri import SourceURI

__all__ = [
    "DEFAULT_TITLE",
    "MAX_HEIGHT",
    "NoDisplayError",
    "PreviewWindow",
    "WindowSink",
    "open_sink",
    "pump",
]

log = logging.getLogger(__name__)

DEFAULT_TITLE = "livediffusion"
MAX_HEIGHT = 720
"""Pictures taller than this are shown scaled down (nearest pixel), so 4K fits a laptop."""

Pane = Literal["input", "output"]
_COLUMNS: dict[Pane, int] = {"input": 0, "output": 1}

_registry_lock = threading.Lock()
_windows: list[PreviewWindow] = []
_changed = threading.Condition()  # a picture, a status or a close request is waiting


def _fit(pixels: Pixels, height: int) -> np.ndarray:
    """RGB at ``height`` rows (nearest pixel, aspect kept), as one contiguous array."""
    rows, cols = pixels.shape[:2]
    if rows != height:
        width = max(1, round(cols * height / rows))
        pixels = pixels[
            (np.arange(height) * rows // height)[:, None], np.arange(width) * cols // width
        ]
    return np.ascontiguousarray(pixels[..., :3])


def _ppm(rgb: np.ndarray) -> bytes:
    """Binary PPM, which Tk's photo images read directly (no per-pixel Python)."""
    height, width = rgb.shape[:2]
    return b"P6 %d %d 255\n" % (width, height) + rgb.tobytes()


class NoDisplayError(BackendUnavailableError):
    """Tk found no screen to open a window on; ``detail`` is Tk's own words."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"no display: set DISPLAY or use another sink ({detail})")
        self.detail = detail


class PreviewWindow:
    """One Tk window: an output pane, an input pane once input pictures are shown, and the
    status line under them.

    :meth:`show` and :meth:`set_status` may be called from any thread; drawing happens in
    :meth:`pump` on the thread that made the window. Esc or the window's close button
    closes it and calls every ``on_close`` callback (the server stops on it).
    """

    def __init__(self, title: str = DEFAULT_TITLE) -> None:
        if sys.platform == "darwin" and threading.current_thread() is not threading.main_thread():
            raise BackendUnavailableError(
                "on macOS a window can only be opened on the main thread; "
                "run the server from the main thread or use another sink"
            )
        try:
            import tkinter
        except ImportError as exc:  # pragma: no cover - Python built without Tk
            raise BackendUnavailableError(
                f"window:// needs tkinter (on Debian/Ubuntu: apt install python3-tk): {exc}"
            ) from exc
        try:
            root = tkinter.Tk(className="livediffusion")
        except tkinter.TclError as exc:
            raise NoDisplayError(str(exc)) from None
        self.title = title
        self._tk = tkinter
        self._root: Any = root
        self._owner = threading.get_ident()
        self._lock = threading.Lock()
        self._pending: dict[Pane, bytes] = {}
        self._status: str | None = None
        self._height: int | None = None  # the output's display height: the input matches it
        self._close_asked = False
        self._closed = threading.Event()
        self.closed_by_user = False
        self.on_close: list[Callable[[], None]] = []
        self.replaced = 0
        """Pictures handed over and replaced by a newer one before they were drawn."""
        self.drawn = 0
        """Pictures drawn (both panes)."""
        self.drawn_status = ""
        """The status line as last drawn."""
        self.boxes: dict[Pane, tuple[int, int, int, int]] = {}
        """Where each pane was last drawn on the screen: ``(x, y, width, height)``."""
        self._photos: dict[Pane, Any] = {}
        self._labels: dict[Pane, Any] = {}
        root.title(title)
        root.configure(background="black")
        self._status_label = tkinter.Label(
            root, text="starting ...", anchor="w", font="TkFixedFont", fg="white", bg="black"
        )
        self._status_label.grid(row=1, column=0, columnspan=2, sticky="we")
        root.bind("<Escape>", lambda _event: self._closed_by_user())
        root.protocol("WM_DELETE_WINDOW", self._closed_by_user)
        with _registry_lock:
            _windows.append(self)
        root.update()

    # -- any thread -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def show(self, pixels: Pixels, pane: Pane = "output") -> None:
        """Hand a picture to ``pane``; the pane keeps only the newest until it is drawn."""
        if pane not in _COLUMNS:
            raise ValueError(f"pane must be input or output, got {pane!r}")
        pixels = as_pixels(pixels)
        if self._closed.is_set():
            return
        rows = int(pixels.shape[0])
        if pane == "output":
            self._height = min(rows, MAX_HEIGHT)
        height = self._height or min(rows, MAX_HEIGHT)
        data = _ppm(_fit(pixels, height))
        with self._lock:
            if pane in self._pending:
                self.replaced += 1
            self._pending[pane] = data
        _wake()

    def set_status(self, text: str) -> None:
        with self._lock:
            self._status = text
        _wake()

    def close(self) -> None:
        """Close the window. Safe to call twice and from any thread (another thread's request
        is carried out by the owner's next :meth:`pump`)."""
        if self._closed.is_set():
            return
        if threading.get_ident() == self._owner:
            self._destroy()
        else:
            with self._lock:
                self._close_asked = True
            _wake()

    def __enter__(self) -> PreviewWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the owner's thread -----------------------------------------------------------------

    @property
    def owned_here(self) -> bool:
        return threading.get_ident() == self._owner

    def _service(self) -> None:
        """Draw what is waiting and let Tk handle its events. Owner's thread only."""
        if self._closed.is_set():
            return
        with self._lock:
            pending, self._pending = self._pending, {}
            status, self._status = self._status, None
            close = self._close_asked
        if close:
            self._destroy()
            return
        for pane, data in pending.items():
            self._draw(pane, data)
        if status is not None:
            self._status_label.configure(text=status)
            self.drawn_status = status
        try:
            self._root.update()
            if pending:
                self.boxes = {pane: self._box(pane) for pane in self._labels}
        except self._tk.TclError:  # destroyed under us (the application is going away)
            self._destroy()

    def _draw(self, pane: Pane, data: bytes) -> None:
        photo = self._photos.get(pane)
        if photo is None:
            photo = self._photos[pane] = self._tk.PhotoImage(master=self._root, data=data)
            label = self._labels[pane] = self._tk.Label(
                self._root, image=photo, borderwidth=0, background="black"
            )
            label.grid(row=0, column=_COLUMNS[pane])
        else:
            photo.configure(data=data)  # a new size resizes the label with it
        self.drawn += 1

    def _box(self, pane: Pane) -> tuple[int, int, int, int]:
        label, photo = self._labels[pane], self._photos[pane]
        return label.winfo_rootx(), label.winfo_rooty(), photo.width(), photo.height()

    def _closed_by_user(self) -> None:
        log.info("the preview window was closed")
        self.closed_by_user = True
        self._destroy()

    def _destroy(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with _registry_lock:
            if self in _windows:
                _windows.remove(self)
        with contextlib.suppress(self._tk.TclError):
            self._root.destroy()
        self._photos.clear()
        self._labels.clear()
        for callback in list(self.on_close):
            try:
                callback()
            except Exception:
                log.exception("a preview window close callback failed")


def _wake() -> None:
    with _changed:
        _changed.notify_all()


def pump(seconds: float) -> bool:
    """Run the windows this thread owns for ``seconds``, drawing pictures as they arrive.

    Returns ``False`` at once when this thread owns no open window (the caller then waits
    its own way).
    """
    end = time.monotonic() + max(seconds, 0.0)
    with _registry_lock:
        mine = [window for window in _windows if window.owned_here]
    if not mine:
        return False
    while True:
        for window in mine:
            window._service()
        mine = [window for window in mine if not window.closed]
        remaining = end - time.monotonic()
        if remaining <= 0 or not mine:
            return True
        with _changed:
            # Wake for the next picture, or within 10 ms for mouse and keyboard.
            _changed.wait(min(remaining, 0.01))


def open_sink(uri: SourceURI) -> WindowSink:
    if "/" in uri.target:
        raise InvalidURIError(f"window:// takes a title, not a path ({uri})")
    Options(uri, role="sink").finish()
    return WindowSink(str(uri), PreviewWindow(uri.target or DEFAULT_TITLE))


class WindowSink(FrameSink):
    """Publishes into a :class:`PreviewWindow`'s output pane.

    Once the user closed the window, frames are dropped (whoever watches ``window.closed``
    stops the show); after :meth:`close`, publishing raises :class:`ClosedError`.
    """

    def __init__(self, uri: str, window: PreviewWindow) -> None:
        self.uri = uri
        self.window = window
        self._closed = False

    def publish(self, pixels: Pixels) -> None:
        if self._closed:
            raise ClosedError(f"{self.uri} is closed")
        self.window.show(pixels, "output")

    def close(self) -> None:
        self._closed = True
        self.window.close()
