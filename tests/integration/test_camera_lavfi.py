"""camera://'s real read path (PyAV opens, decodes on its own thread, converts to RGBA, paces
and rescales) with FFmpeg's lavfi test source standing in for the device (tests/lavfi.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

av = pytest.importorskip("av")
if "lavfi" not in av.formats_available:
    pytest.skip("this PyAV has no lavfi input", allow_module_level=True)

from lavfi import LAVFI, NATIVE  # noqa: E402
from livediffusion_bridge import (  # noqa: E402
    ClosedError,
    Frame,
    TransportError,
    _camera,
    open_source,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def lavfi_camera(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("linux", "darwin", "win32"):
        monkeypatch.setitem(_camera.PLATFORMS, key, LAVFI)
    yield


def _read(source: _camera.CameraSource, count: int, timeout: float = 10.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        assert time.monotonic() < deadline, f"{len(frames)} of {count} frames"
        frame = source.read(0.2)
        if frame is not None:
            frames.append(frame)
    return frames


def _source(uri: str) -> _camera.CameraSource:
    source = open_source(uri)
    assert isinstance(source, _camera.CameraSource)
    return source


def test_frames_are_rgba_at_the_devices_own_size_and_move() -> None:
    source = _source("camera://testsrc2?fps=30")
    with source:
        frames = _read(source, 5)
    width, height = NATIVE
    assert all(frame.pixels.shape == (height, width, 4) for frame in frames)
    assert all(int(frame.pixels[..., 3].min()) == 255 for frame in frames)
    assert not np.array_equal(frames[0].pixels, frames[-1].pixels)  # testsrc2 moves
    assert float(frames[0].pixels[..., :3].std()) > 20  # a picture, not a flat colour


def test_an_asked_size_the_device_ignores_is_rescaled_to() -> None:
    source = _source("camera://testsrc2?fps=30&size=64x48")
    with source:
        frames = _read(source, 3)
    assert all(frame.pixels.shape == (48, 64, 4) for frame in frames)


def test_the_asked_frame_rate_reaches_the_device() -> None:
    source = _source("camera://testsrc2?fps=10")  # the device's own default would be 25
    with source:
        _read(source, 1)  # connected and running
        start = time.monotonic()
        _read(source, 10)
        seconds = time.monotonic() - start
    assert 0.75 < seconds < 2.0, f"10 frames at fps=10 took {seconds:.2f} s"


def test_a_slow_reader_gets_the_newest_frame_not_a_backlog() -> None:
    source = _source("camera://testsrc2?fps=50")
    with source:
        _read(source, 1)
        time.sleep(1.0)  # 50 frames arrive meanwhile
        frame = _read(source, 1)[0]
        age = time.monotonic() - frame.timestamp
        dropped = source.dropped
    assert age < 0.1, f"the frame read was {age:.2f} s old: frames queued up"
    assert dropped >= 35


def test_a_vanished_device_is_waited_for_then_reconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugged = threading.Event()
    plugged.set()

    def address(
        target: str, fps: float, size: tuple[int, int] | None
    ) -> tuple[str, dict[str, str]]:
        if not plugged.is_set():
            raise TransportError("No such file or directory")  # as V4L2 says when unplugged
        return LAVFI.address(target, fps, size)

    unpluggable = dataclasses.replace(LAVFI, address=address)
    for key in ("linux", "darwin", "win32"):
        monkeypatch.setitem(_camera.PLATFORMS, key, unpluggable)
    source = _source("camera://testsrc2/0.5?fps=25")
    with source:
        _read(source, 3)
        assert source.waiting_for is None
        plugged.clear()  # the graph ends after 0.5 s: the device is gone, and stays away
        deadline = time.monotonic() + 10
        while source.waiting_for is None:
            assert time.monotonic() < deadline, "the loss was never noticed"
            assert source.read(0.05) is None or source.waiting_for is None
        assert source.waiting_for == "camera testsrc2/0.5 (lavfi)"  # the status line says it
        assert source.read(0.3) is None
        plugged.set()
        assert len(_read(source, 3)) == 3
        assert source.reconnects == 1
        assert source.waiting_for is None


def test_close_is_prompt_and_stops_the_decoding_thread() -> None:
    source = _source("camera://testsrc2?fps=30")
    _read(source, 2)
    started = time.monotonic()
    source.close()
    source.close()
    assert time.monotonic() - started < 1.5
    deadline = time.monotonic() + 2
    while any(thread.name == source.describe for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the decoding thread outlived close()"
        time.sleep(0.02)
    with pytest.raises(ClosedError):
        source.read(0.1)
