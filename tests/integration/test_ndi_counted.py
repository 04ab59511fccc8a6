"""NDI frame memory, counted on the real runtime over loopback (``tests/ndi_counting.py``).

The bridge's source and sink run unchanged over a wrapper of the real NDIlib that counts
every capture, free and send and checks NDI's rules on the way: every received video frame
freed exactly once and never touched afterwards, no audio or metadata asked for, and no send
buffer changed or collected while an async send may still read it.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from livediffusion_bridge import Frame, FrameSink, FrameSource, open_sink, open_source
from ndi_counting import CountingNdi, counting_ndi

pytest.importorskip("NDIlib")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LOSS = 12.0  # mean absolute error allowed after NDI's compression (observed: ~1-4)


@pytest.fixture
def ndi() -> Iterator[CountingNdi]:
    with counting_ndi() as wrapper:
        yield wrapper


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def picture(seed: int, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A picture unlike its neighbours' (by seed): a changed buffer changes its bytes."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    pixels[..., 0] = (x * 255 // max(width - 1, 1) + seed * 37) % 256
    pixels[..., 1] = (y * 255 // max(height - 1, 1) + seed * 71) % 256
    pixels[..., 2] = (seed * 53) % 256
    pixels[..., 3] = 255
    return pixels


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., :3].astype(np.int16) - b[..., :3].astype(np.int16)).mean())


def receive(source: FrameSource, sink: FrameSink, pixels: np.ndarray) -> Frame:
    """Keep publishing ``pixels`` until the source delivers a frame that looks like them."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        sink.publish(pixels)
        frame = source.read(0.05)
        matches = frame is not None and frame.pixels.shape == pixels.shape
        if matches and error(frame.pixels, pixels) < LOSS:
            return frame
    raise AssertionError(f"no matching frame within 10 s (waiting for {source.waiting_for!r})")


def test_every_captured_frame_is_freed_exactly_once_and_only_video_is_asked_for(
    ndi: CountingNdi,
) -> None:
    """Bursts of three frames per read: the source frees the older ones unread (the newest
    wins). Then the sender goes away while the source reads, and comes back: the lost
    connection's receiver is destroyed with nothing owed, a new one takes over."""
    name = unique("ld-count")
    delivered = 0
    with open_source(f"ndi://{name}") as source:
        for round_ in range(2):
            with open_sink(f"ndi://{name}") as sink:
                receive(source, sink, picture(100 + round_))
                for seed in range(30):
                    for burst in range(3):
                        sink.publish(picture(3 * seed + burst))
                    time.sleep(0.02)
                    frame = source.read(0.2)
                    delivered += frame is not None
            deadline = time.monotonic() + 10.0
            while source.waiting_for is None and time.monotonic() < deadline:
                source.read(0.05)  # until the source notices the sender left
            assert source.waiting_for is not None
    counts = ndi.counts
    print(f"\n{counts}")
    assert counts.violations == []
    assert delivered >= 20
    assert counts.video_captured == counts.video_freed and ndi.unfreed() == 0
    assert counts.video_captured > delivered + 2  # frames freed unread were freed once too
    assert counts.audio_captured == counts.metadata_captured == 0
    assert counts.receivers_destroyed >= 2  # the lost connection's and the last one


def test_no_send_buffer_is_rewritten_or_dropped_while_an_async_send_may_read_it(
    ndi: CountingNdi,
) -> None:
    """Every frame, at every size: the frame NDI may still read is checked unchanged and
    alive at the next send (and the last one at close), whatever the sink did meanwhile."""
    sizes = [(120, 160), (100, 240), (120, 160)]  # a new size swaps the sink's buffers
    # What was alive before this test (a worker's torch, diffusers and coremltools objects
    # from earlier tests) is set aside from the collector, so that each full collection below
    # takes microseconds instead of most of a second; the sink and everything it makes are
    # made after this and are collected as before.
    gc.freeze()
    try:
        with open_sink(f"ndi://{unique('ld-count')}") as sink:
            sink.publish(picture(0))
            with open_source(f"ndi://{sink.listen_address}") as source:
                for number, size in enumerate(sizes):
                    receive(source, sink, picture(50 + number, size))
                    before = ndi.counts.async_sends
                    for seed in range(20):
                        sink.publish(picture(seed, size))
                        gc.collect()  # anything dropped goes now, while its send is in flight
                        source.read(0.01)
                    assert ndi.counts.async_sends == before + 20  # one async send per publish
            assert ndi.in_flight() == 1  # the last frame: NDI's until close
    finally:
        gc.unfreeze()
    counts = ndi.counts
    print(f"\n{counts}")
    assert counts.violations == []
    assert counts.async_sends >= 61
    assert counts.in_flight_checked == counts.async_sends  # each released by a sync call
    assert ndi.in_flight() == 0 and counts.senders_destroyed == 1
    assert counts.video_captured == counts.video_freed
