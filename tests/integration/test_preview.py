"""window:// and --preview on a virtual X screen: screenshots show the published frames, and
closing the window (Esc, or the close button's WM_DELETE_WINDOW) stops a real server.

Needs Xvfb, xwd and xdotool (Debian: apt-get install xvfb x11-apps xdotool); skipped without.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from livediffusion.config import ServeConfig
from livediffusion.run.server import run_server
from livediffusion_bridge import ClosedError, PreviewWindow, WindowSink, _window, memory, open_sink
from loopback import free_udp_port
from xdisplay import (
    SKIP_REASON,
    close_window,
    crop,
    find_window,
    press_key,
    screenshot,
    virtual_screen,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON or "-"),
]


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with virtual_screen() as name:
        yield name


@pytest.fixture
def screen(display: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISPLAY", display)
    return display


def _title() -> str:
    return f"ld-{uuid.uuid4().hex[:8]}"


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """Four coloured quadrants: any shift, flip or scaling shows in a pixel comparison."""
    rng = np.random.default_rng(seed)
    pixels = np.full((height, width, 4), 255, dtype=np.uint8)
    for rows in (slice(0, height // 2), slice(height // 2, None)):
        for cols in (slice(0, width // 2), slice(width // 2, None)):
            pixels[rows, cols, :3] = rng.integers(0, 256, 3)
    return pixels


def _pump_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    from livediffusion_bridge import pump_events

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out pumping the window"
        pump_events(0.05)


def _settle() -> None:
    """Let Tk flush its drawing to the X server before another client looks."""
    from livediffusion_bridge import pump_events

    pump_events(0.2)


def test_a_screenshot_shows_the_published_frame(screen: str) -> None:
    picture = _picture(96, 64, seed=1)
    with open_sink(f"window://{_title()}") as sink:
        assert isinstance(sink, WindowSink)
        sink.publish(picture)
        _pump_until(lambda: "output" in sink.window.boxes)
        _settle()
        shown = crop(screenshot(screen), sink.window.boxes["output"])
    np.testing.assert_array_equal(shown, picture[..., :3])


def test_publishing_faster_than_it_draws_keeps_only_the_newest(screen: str) -> None:
    pictures = [_picture(64, 64, seed=index) for index in range(30)]
    with open_sink(f"window://{_title()}") as sink:
        assert isinstance(sink, WindowSink)
        for picture in pictures:
            sink.publish(picture)
        _pump_until(lambda: sink.window.drawn >= 1)
        _settle()
        assert sink.window.drawn == 1
        assert sink.window.replaced == len(pictures) - 1
        shown = crop(screenshot(screen), sink.window.boxes["output"])
    np.testing.assert_array_equal(shown, pictures[-1][..., :3])


def test_tall_frames_are_shown_scaled_to_fit(screen: str) -> None:
    picture = _picture(400, 1440, seed=3)  # twice the window's height limit
    with open_sink(f"window://{_title()}") as sink:
        assert isinstance(sink, WindowSink)
        sink.publish(picture)
        _pump_until(lambda: "output" in sink.window.boxes)
        box = sink.window.boxes["output"]
        _settle()
        shown = crop(screenshot(screen), box)
    assert box[2:] == (200, _window.MAX_HEIGHT)
    np.testing.assert_array_equal(shown, picture[::2, ::2, :3])


def test_escape_closes_it_once_and_publishing_then_drops_frames(screen: str) -> None:
    title = _title()
    closed: list[str] = []
    sink = open_sink(f"window://{title}")
    assert isinstance(sink, WindowSink)
    sink.window.on_close.append(lambda: closed.append("closed"))
    sink.publish(_picture(32, 32, seed=4))
    _pump_until(lambda: sink.window.drawn >= 1)
    press_key(screen, find_window(screen, title), "Escape")
    _pump_until(lambda: sink.window.closed)
    assert sink.window.closed_by_user
    assert closed == ["closed"]
    sink.publish(_picture(32, 32, seed=5))  # the server is stopping: no error meanwhile
    sink.close()
    sink.close()
    assert closed == ["closed"]
    with pytest.raises(ClosedError):
        sink.publish(_picture(32, 32, seed=6))


def test_the_close_button_closes_it(screen: str) -> None:
    title = _title()
    with PreviewWindow(title) as window:
        window.set_status("in 30.0 fps | out 30.0 fps")
        _pump_until(lambda: window.drawn_status != "")
        assert window.drawn_status == "in 30.0 fps | out 30.0 fps"
        close_window(screen, find_window(screen, title))
        _pump_until(lambda: window.closed)
        assert window.closed_by_user


# -- a real server ----------------------------------------------------------------------------


def _serve(config: ServeConfig, backend: Any, stop: threading.Event) -> tuple[list[int], float]:
    """Run the server on this thread (the window's thread, as from the CLI)."""
    status = io.StringIO()
    started = time.monotonic()
    code = run_server(config, backend=backend, stop=stop, status_stream=status)
    return [code], time.monotonic() - started


def _window_of(title: str, timeout: float = 60.0) -> PreviewWindow:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for window in list(_window._windows):
            if window.title == title:
                return window
        time.sleep(0.05)
    raise TimeoutError(f"no preview window {title!r}")


def test_side_by_side_preview_shows_input_and_output_and_esc_stops_the_server(
    screen: str, make_tiny_backend: Callable[..., Any]
) -> None:
    memory.reset()
    title = "livediffusion"  # --preview's window
    picture = _picture(64, 64, seed=7)
    feeding = threading.Event()
    feeding.set()
    seen: dict[str, Any] = {}
    stop = threading.Event()

    def feed() -> None:
        link = memory.channel("preview-in")
        while feeding.is_set():
            link.push(picture)
            time.sleep(1 / 30)

    def watch() -> None:
        try:
            window = _window_of(title)
            deadline = time.monotonic() + 60
            out = memory.channel("preview-out")
            while out.published_count < 5 or "input" not in window.boxes:
                assert time.monotonic() < deadline, "no frames came out"
                time.sleep(0.05)
            feeding.clear()  # the output settles on the last frame (re-sent while lost)
            time.sleep(1.5)
            shot = screenshot(screen)
            seen["input"] = crop(shot, window.boxes["input"])
            seen["output"] = crop(shot, window.boxes["output"])
            seen["published"] = out.published[-1].pixels
            seen["status"] = window.drawn_status
            press_key(screen, find_window(screen, title), "Escape")
        except BaseException as exc:
            seen["error"] = exc
            stop.set()

    config = ServeConfig(
        source="memory://preview-in",
        sink="memory://preview-out",
        preview="side-by-side",
        osc_port=free_udp_port(),
        status_interval=0.2,
    )
    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=watch)]
    for thread in threads:
        thread.start()
    try:
        codes, _seconds = _serve(config, make_tiny_backend(), stop)
    finally:
        feeding.clear()
        for thread in threads:
            thread.join(10)
    assert "error" not in seen, seen.get("error")
    assert codes == [0]
    assert stop.is_set()  # Esc set the server's stop event
    np.testing.assert_array_equal(seen["input"], picture[..., :3])
    np.testing.assert_array_equal(seen["output"], seen["published"][..., :3])
    assert seen["status"].startswith("in ") and "fps" in seen["status"]


def test_camera_in_preview_out_stops_when_the_window_is_closed(
    screen: str, make_tiny_backend: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's command, with FFmpeg's lavfi test source standing in for the camera."""
    from lavfi import LAVFI
    from livediffusion_bridge import _camera

    monkeypatch.setitem(_camera.PLATFORMS, "linux", LAVFI)
    title = _title()
    stop = threading.Event()
    seen: dict[str, Any] = {}

    def watch() -> None:
        try:
            window = _window_of(title)
            deadline = time.monotonic() + 60
            while window.drawn < 5:
                assert time.monotonic() < deadline, "nothing was drawn"
                time.sleep(0.05)
            close_window(screen, find_window(screen, title))
            seen["closed at"] = time.monotonic()
        except BaseException as exc:
            seen["error"] = exc
            stop.set()

    config = ServeConfig(
        source="camera://testsrc2?size=64x64", sink=f"window://{title}", osc_port=free_udp_port()
    )
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        codes, _seconds = _serve(config, make_tiny_backend(), stop)
        returned = time.monotonic()
    finally:
        watcher.join(10)
    assert "error" not in seen, seen.get("error")
    assert codes == [0]
    assert stop.is_set()
    assert returned - seen["closed at"] < 3.0
