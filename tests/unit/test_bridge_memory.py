"""memory://: the in-process transport tests and embedders rely on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from livediffusion_bridge import ClosedError, InvalidURIError, memory, open_sink, open_source

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fresh_channels() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def picture(value: int, size: tuple[int, int] = (4, 6)) -> np.ndarray:
    pixels = np.full((*size, 4), value, dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def test_channel_is_get_or_create() -> None:
    assert memory.channel("a") is memory.channel("a")
    assert memory.channel("a") is not memory.channel("b")
    with pytest.raises(ValueError):
        memory.channel("")


def test_push_then_read() -> None:
    with open_source("memory://in") as source:
        memory.channel("in").push(picture(7), timestamp=123.5)
        frame = source.read(1.0)
    assert frame is not None
    assert frame.timestamp == 123.5
    assert np.array_equal(frame.pixels, picture(7))


def test_default_timestamp_is_now() -> None:
    before = time.monotonic()
    memory.channel("in").push(picture(1))
    with open_source("memory://in") as source:
        frame = source.read(1.0)
    assert frame is not None
    assert before <= frame.timestamp <= time.monotonic()


def test_latest_push_wins() -> None:
    link = memory.channel("in")
    for value in (1, 2, 3):
        link.push(picture(value))
    assert link.pending
    with open_source("memory://in") as source:
        frame = source.read(1.0)
        assert frame is not None
        assert frame.pixels[0, 0, 0] == 3
        assert source.read(0.05) is None  # the older two are gone, not queued
    assert (link.pushed_count, link.replaced_count, link.taken_count) == (3, 2, 1)
    assert not link.pending


def test_push_copies() -> None:
    buffer = picture(5)
    memory.channel("in").push(buffer)
    buffer[:] = 99  # the pusher recycles its buffer
    with open_source("memory://in") as source:
        frame = source.read(1.0)
    assert frame is not None and frame.pixels[0, 0, 0] == 5


def test_push_validates() -> None:
    with pytest.raises(ValueError):
        memory.channel("in").push(np.zeros((4, 4, 3), dtype=np.uint8))


def test_read_times_out() -> None:
    with open_source("memory://in") as source:
        start = time.monotonic()
        assert source.read(0.1) is None
        assert 0.08 <= time.monotonic() - start < 1.0


def test_read_wakes_on_push_from_another_thread() -> None:
    with open_source("memory://in") as source:
        threading.Timer(0.05, memory.channel("in").push, args=(picture(9),)).start()
        frame = source.read(5.0)
    assert frame is not None and frame.pixels[0, 0, 0] == 9


def test_close_wakes_a_waiting_read() -> None:
    source = open_source("memory://in")
    threading.Timer(0.05, source.close).start()
    start = time.monotonic()
    assert source.read(5.0) is None
    assert time.monotonic() - start < 1.0
    with pytest.raises(ClosedError):
        source.read(0.0)
    source.close()


def test_sink_records_copies() -> None:
    buffer = picture(1)
    with open_sink("memory://out") as sink:
        sink.publish(buffer)
        buffer[:] = 2  # the publisher recycles its buffer
        sink.publish(buffer)
    published = memory.channel("out").published
    assert [int(f.pixels[0, 0, 0]) for f in published] == [1, 2]
    assert memory.channel("out").published_count == 2


def test_sink_is_bounded() -> None:
    with open_sink("memory://out") as sink:
        for value in range(100):
            sink.publish(picture(value))
    link = memory.channel("out")
    assert link.published_count == 100
    assert len(link.published) == memory.RECORD_LIMIT
    assert int(link.published[-1].pixels[0, 0, 0]) == 99
    assert int(link.published[0].pixels[0, 0, 0]) == 100 - memory.RECORD_LIMIT


def test_wait_published_returns_the_newest() -> None:
    with open_sink("memory://out") as sink:
        for value in range(5):
            sink.publish(picture(value))
    frames = memory.channel("out").wait_published(3, timeout=0.1)
    assert [int(f.pixels[0, 0, 0]) for f in frames] == [2, 3, 4]


def test_wait_published_blocks_until_published() -> None:
    sink = open_sink("memory://out")

    def publish_later() -> None:
        time.sleep(0.05)
        for value in range(2):
            sink.publish(picture(value))

    thread = threading.Thread(target=publish_later)
    thread.start()
    frames = memory.channel("out").wait_published(2, timeout=5.0)
    thread.join()
    sink.close()
    assert len(frames) == 2


def test_wait_published_times_out() -> None:
    with open_sink("memory://out") as sink:
        sink.publish(picture(1))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 3 frames"):
        memory.channel("out").wait_published(3, timeout=0.1)
    assert time.monotonic() - start < 1.0


def test_publish_after_close_fails() -> None:
    sink = open_sink("memory://out")
    sink.close()
    sink.close()
    with pytest.raises(ClosedError):
        sink.publish(picture(1))


def test_reset_isolates() -> None:
    old = memory.channel("x")
    old.push(picture(1))
    with open_sink("memory://x") as sink:
        sink.publish(picture(1))
    memory.reset()
    assert not old.pending and old.published_count == 0
    fresh = memory.channel("x")
    assert fresh is not old
    assert fresh.published == [] and fresh.pushed_count == 0


def test_round_trip_through_source_and_sink() -> None:
    with open_source("memory://in") as source, open_sink("memory://out") as sink:
        for value in range(3):
            memory.channel("in").push(picture(value))
            frame = source.read(1.0)
            assert frame is not None
            sink.publish(frame.pixels)
    frames = memory.channel("out").wait_published(3, timeout=1.0)
    assert [int(f.pixels[0, 0, 0]) for f in frames] == [0, 1, 2]


def test_needs_a_name() -> None:
    with pytest.raises(InvalidURIError):
        open_sink("memory://")
