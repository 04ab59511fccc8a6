"""A virtual X screen for window tests: Xvfb, a screenshot of it (xwd), and the events a user
(through a window manager) sends: a key press (xdotool) and WM_DELETE_WINDOW (Xlib)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

MISSING = [tool for tool in ("Xvfb", "xwd", "xdotool") if shutil.which(tool) is None]
SKIP_REASON = (
    f"needs {', '.join(MISSING)} (Debian: apt-get install xvfb x11-apps xdotool)" if MISSING else ""
)


@contextlib.contextmanager
def virtual_screen(width: int = 1024, height: int = 768) -> Iterator[str]:
    """Start Xvfb on a free display number; yields its name (":N")."""
    for number in range(90, 190):
        if (
            not Path(f"/tmp/.X11-unix/X{number}").exists()
            and not Path(f"/tmp/.X{number}-lock").exists()
        ):
            break
    else:
        raise RuntimeError("no free X display number")
    name = f":{number}"
    process = subprocess.Popen(
        ["Xvfb", name, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{number}").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Xvfb {name} did not start")
            time.sleep(0.05)
        yield name
    finally:
        process.terminate()
        process.wait(5)


def screenshot(display: str) -> npt.NDArray[np.uint8]:
    """The whole screen as an ``(height, width, 3)`` RGB array, read from ``xwd``'s format."""
    data = subprocess.run(
        ["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True
    ).stdout
    header = np.frombuffer(data[:100], dtype=">u4")
    size, width, height = int(header[0]), int(header[4]), int(header[5])
    byte_order, bits, line = int(header[7]), int(header[11]), int(header[12])
    masks = [int(header[14]), int(header[15]), int(header[16])]
    colours = int(header[19])
    assert bits == 32, f"expected a 32-bit screen, got {bits} bits per pixel"
    start = size + 12 * colours
    rows = np.frombuffer(
        data[start : start + line * height], dtype="<u4" if byte_order == 0 else ">u4"
    )
    pixels = rows.reshape(height, line // 4)[:, :width]
    shifts = [(mask & -mask).bit_length() - 1 for mask in masks]
    rgb = [
        ((pixels & mask) >> shift).astype(np.uint8)
        for mask, shift in zip(masks, shifts, strict=True)
    ]
    return np.stack(rgb, axis=-1)


def crop(screen: npt.NDArray[np.uint8], box: tuple[int, int, int, int]) -> npt.NDArray[np.uint8]:
    x, y, width, height = box
    return screen[y : y + height, x : x + width]


def find_window(display: str, title: str, timeout: float = 10.0) -> int:
    """The X id of the top-level window called ``title`` (as a window manager finds it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = subprocess.run(
            ["xdotool", "search", "--name", f"^{title}$"],
            check=False,  # no match exits 1
            capture_output=True,
            text=True,
            env={**os.environ, "DISPLAY": display},
        ).stdout.split()
        if found:
            return int(found[0])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no window called {title!r} on {display}")
        time.sleep(0.1)


def press_key(display: str, window: int, key: str) -> None:
    """A real key press through the X server (XTEST), with the window focused."""
    subprocess.run(
        ["xdotool", "windowfocus", "--sync", str(window), "key", key],
        check=True,
        env={**os.environ, "DISPLAY": display},
        timeout=10,
    )


class _ClientMessage(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("serial", ctypes.c_ulong),
        ("send_event", ctypes.c_int),
        ("display", ctypes.c_void_p),
        ("window", ctypes.c_ulong),
        ("message_type", ctypes.c_ulong),
        ("format", ctypes.c_int),
        ("data", ctypes.c_long * 5),
        ("pad", ctypes.c_long * 24),  # XEvent is a union of 24 longs; send the full size
    ]


def close_window(display: str, window: int) -> None:
    """Send WM_DELETE_WINDOW, exactly what a window manager sends for the close button."""
    xlib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XInternAtom.restype = ctypes.c_ulong
    xlib.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    xlib.XSendEvent.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_int,
        ctypes.c_long,
        ctypes.c_void_p,
    ]
    xlib.XFlush.argtypes = [ctypes.c_void_p]
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    connection = xlib.XOpenDisplay(display.encode())
    assert connection, f"cannot open X display {display}"
    try:
        event = _ClientMessage()
        event.type = 33  # ClientMessage
        event.send_event = 1
        event.display = connection
        event.window = window
        event.message_type = xlib.XInternAtom(connection, b"WM_PROTOCOLS", 0)
        event.format = 32
        event.data[0] = xlib.XInternAtom(connection, b"WM_DELETE_WINDOW", 0)
        event.data[1] = 0  # CurrentTime
        assert xlib.XSendEvent(connection, window, 0, 0, ctypes.byref(event))
        xlib.XFlush(connection)
    finally:
        xlib.XCloseDisplay(connection)
