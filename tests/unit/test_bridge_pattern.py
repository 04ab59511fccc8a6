"""test://pattern: shape, motion, pacing, and the never-mutate-a-returned-frame contract."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from livediffusion_bridge import ClosedError, Frame, open_source

pytestmark = pytest.mark.timeout(30)


def read_frames(uri: str, count: int) -> list[Frame]:
    with open_source(uri) as source:
        frames = [source.read(timeout=2.0) for _ in range(count)]
    assert all(frame is not None for frame in frames)
    return [frame for frame in frames if frame is not None]


def test_default_shape_and_dtype() -> None:
    (frame,) = read_frames("test://pattern", 1)
    assert frame.pixels.shape == (512, 512, 4)
    assert frame.pixels.dtype == np.uint8
    assert frame.pixels.flags.c_contiguous
    assert (frame.pixels[..., 3] == 255).all()
    assert (frame.width, frame.height) == (512, 512)


def test_size_option() -> None:
    (frame,) = read_frames("test://pattern?size=320x180&fps=240", 1)
    assert frame.pixels.shape == (180, 320, 4)


def test_consecutive_frames_differ() -> None:
    frames = read_frames("test://pattern?size=128x96&fps=500", 20)
    for before, after in itertools.pairwise(frames):
        assert not np.array_equal(before.pixels, after.pixels)


def test_picture_moves_not_just_the_counter() -> None:
    """Over half a second, a large part of the picture (disc, band) must have changed."""
    with open_source("test://pattern?size=256x256&fps=50") as source:
        first = source.read(2.0)
        time.sleep(0.5)
        later = source.read(2.0)
    assert first is not None and later is not None
    above_counter = slice(0, 256 - 256 // 40)
    changed = np.any(first.pixels[above_counter] != later.pixels[above_counter], axis=-1)
    assert changed.mean() > 0.05
    # Something moves in the bars region too (the disc), not only the scrolling band.
    bars = slice(0, 256 * 2 // 3)
    assert np.any(first.pixels[bars] != later.pixels[bars])


def test_has_colour_and_contrast() -> None:
    (frame,) = read_frames("test://pattern?size=128x128&fps=240", 1)
    rgb = frame.pixels[..., :3].astype(np.int16)
    assert rgb.std() > 40
    assert (rgb.max(axis=-1) - rgb.min(axis=-1)).max() > 150  # saturated colours present


def test_pacing_matches_fps() -> None:
    fps, count = 50.0, 15
    with open_source(f"test://pattern?size=64x64&fps={fps:g}") as source:
        assert source.read(2.0) is not None  # the grid starts at the first frame
        start = time.monotonic()
        for _ in range(count):
            assert source.read(2.0) is not None
        elapsed = time.monotonic() - start
    expected = count / fps
    assert expected * 0.85 < elapsed < expected * 1.5 + 0.05


def test_timestamps_are_monotonic_clock() -> None:
    before = time.monotonic()
    frames = read_frames("test://pattern?size=64x64&fps=200", 3)
    after = time.monotonic()
    stamps = [frame.timestamp for frame in frames]
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after


def test_read_times_out_when_no_frame_is_due() -> None:
    with open_source("test://pattern?size=64x64&fps=2") as source:
        assert source.read(1.0) is not None
        start = time.monotonic()
        assert source.read(0.05) is None
        assert time.monotonic() - start < 0.3
        assert source.read(0.0) is None


def test_slow_reader_gets_no_burst() -> None:
    """A reader that stalls gets one frame at once, then the normal period again."""
    with open_source("test://pattern?size=64x64&fps=20") as source:
        assert source.read(1.0) is not None
        time.sleep(0.3)  # miss several frames
        assert source.read(0.0) is not None
        assert source.read(0.0) is None  # no backlog


def test_returned_frames_are_never_mutated() -> None:
    with open_source("test://pattern?size=64x64&fps=500") as source:
        first = source.read(1.0)
        assert first is not None
        snapshot = first.pixels.copy()
        for _ in range(10):
            assert source.read(1.0) is not None
    assert np.array_equal(first.pixels, snapshot)


def test_close_from_another_thread_stops_a_waiting_read() -> None:
    source = open_source("test://pattern?size=64x64&fps=0.5")
    assert source.read(1.0) is not None
    threading.Timer(0.1, source.close).start()
    start = time.monotonic()
    assert source.read(5.0) is None
    assert time.monotonic() - start < 1.0
    with pytest.raises(ClosedError):
        source.read(0.1)
    source.close()  # idempotent
