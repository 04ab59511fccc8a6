"""NDI over loopback with the real runtime: a sender and a receiver in this process
(and one test with the sender in a child process, the way a host application would be).

NDI is lossy, so pictures are compared by mean absolute error, and every test also checks
that two different pictures stay distinguishable after the trip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livediffusion_bridge import (
    ClosedError,
    Frame,
    FrameSink,
    FrameSource,
    SourceNotFoundError,
    list_sources,
    open_sink,
    open_source,
)

pytest.importorskip("NDIlib")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

BRIDGE_ROOT = Path(__file__).resolve().parents[2] / "bridge"
LOSS = 12.0  # mean absolute error allowed after NDI's compression (observed: ~1-4)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def picture(seed: int, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A picture with structure (gradients and a block), so geometry errors show."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    pixels[..., 0] = (x * 255 // (width - 1) + seed * 80) % 256
    pixels[..., 1] = (y * 255 // (height - 1) + seed * 40) % 256
    pixels[..., 2] = 40 + 160 * (seed % 2)
    pixels[: height // 3, : width // 3, :3] = 255 if seed % 2 else 0
    pixels[..., 3] = 255
    return pixels


def error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., :3].astype(np.int16) - b[..., :3].astype(np.int16)).mean())


def receive(
    source: FrameSource, sink: FrameSink | None, pixels: np.ndarray, timeout: float = 10.0
) -> Frame:
    """Keep sending ``pixels`` until the source delivers a frame that looks like them."""
    deadline = time.monotonic() + timeout
    last: Frame | None = None
    while time.monotonic() < deadline:
        if sink is not None:
            sink.publish(pixels)
        frame = source.read(0.05)
        if frame is not None:
            last = frame
            if frame.pixels.shape == pixels.shape and error(frame.pixels, pixels) < LOSS:
                return frame
    raise AssertionError(f"no matching frame within {timeout} s (last: {last})")


@pytest.fixture
def sink() -> Iterator[FrameSink]:
    with open_sink(f"ndi://{unique('ld-test')}") as opened:
        opened.publish(picture(0))  # senders open at the first frame
        yield opened


def name_of(sink: FrameSink) -> str:
    full = sink.source_name  # type: ignore[attr-defined]
    assert isinstance(full, str)
    return full


def test_by_name_content_and_size(sink: FrameSink) -> None:
    short = name_of(sink).split(" (", 1)[1][:-1]
    with open_source(f"ndi://{short}") as source:
        first = receive(source, sink, picture(1))
        second = receive(source, sink, picture(2))
    assert first.pixels.shape == (120, 160, 4)
    assert first.pixels.dtype == np.uint8 and first.pixels.flags.c_contiguous
    assert (first.pixels[..., 3] == 255).all()
    assert error(first.pixels, picture(1)) < LOSS
    assert error(second.pixels, picture(2)) < LOSS
    # Distinguishable: each received picture is far closer to what was sent than to the other.
    assert error(first.pixels, picture(2)) > 3 * LOSS
    assert error(second.pixels, picture(1)) > 3 * LOSS


def test_by_full_name_and_other_size(sink: FrameSink) -> None:
    big = picture(3, size=(360, 640))
    with open_source(f"ndi://{name_of(sink)}") as source:
        frame = receive(source, sink, big)
    assert frame.pixels.shape == (360, 640, 4)


def test_direct_address(sink: FrameSink) -> None:
    address = sink.listen_address
    assert address is not None and re.fullmatch(r"127\.0\.0\.1:\d+", address)
    with open_source(f"ndi://{address}") as source:
        frame = receive(source, sink, picture(4))
    assert error(frame.pixels, picture(4)) < LOSS


def test_list_sources_finds_the_sender(sink: FrameSink) -> None:
    listing = list_sources(timeout=3.0)
    assert "ndi" not in listing.errors
    matches = [s for s in listing.of_kind("ndi") if s.name == name_of(sink)]
    assert len(matches) == 1
    found = matches[0]
    assert found.address == sink.listen_address
    with open_source(found.uri) as source:
        receive(source, sink, picture(5))


def test_newest_frame_wins(sink: FrameSink) -> None:
    with open_source(f"ndi://{name_of(sink)}") as source:
        receive(source, sink, picture(1))
        for seed in (2, 3, 4):
            sink.publish(picture(seed))
        time.sleep(0.2)  # let all three arrive
        frame = source.read(1.0)
    assert frame is not None
    assert error(frame.pixels, picture(4)) < LOSS


def test_missing_sender_waits_quietly_then_errors_when_asked() -> None:
    with open_source(f"ndi://{unique('absent')}") as source:
        start = time.monotonic()
        assert source.read(0.2) is None
        assert time.monotonic() - start < 1.0
    start = time.monotonic()
    with pytest.raises(SourceNotFoundError, match="visible"):
        open_source(f"ndi://{unique('absent')}?wait=0.3")
    assert time.monotonic() - start < 2.0


def test_reconnects_when_the_sender_comes_back() -> None:
    name = unique("ld-restart")
    sink = open_sink(f"ndi://{name}")
    with open_source(f"ndi://{name}") as source:
        receive(source, sink, picture(1))
        sink.close()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # gone: reads return None, never raise
            source.read(0.1)
        with open_sink(f"ndi://{name}") as again:
            frame = receive(source, again, picture(2), timeout=15.0)
    assert error(frame.pixels, picture(2)) < LOSS


def test_close_is_idempotent_and_final(sink: FrameSink) -> None:
    source = open_source(f"ndi://{name_of(sink)}")
    source.close()
    source.close()
    with pytest.raises(ClosedError):
        source.read(0.1)
    other = open_sink(f"ndi://{unique('ld-closed')}")
    other.publish(picture(1))
    other.close()
    other.close()
    with pytest.raises(ClosedError):
        other.publish(picture(1))


SENDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from livediffusion_bridge import open_sink

    pixels = np.zeros((90, 120, 4), np.uint8)
    pixels[..., 0] = 220
    pixels[..., 2] = 30
    pixels[..., 3] = 255
    with open_sink("ndi://" + sys.argv[1]) as sink:
        sink.publish(pixels)
        print(sink.listen_address, flush=True)
        end = time.monotonic() + float(sys.argv[2])
        while time.monotonic() < end:
            sink.publish(pixels)
            time.sleep(1 / 30)
    """
)


def test_sender_in_another_process_by_address(sink: FrameSink) -> None:
    """Cross-process discovery over loopback is unreliable; the direct address is not."""
    child = subprocess.Popen(
        [sys.executable, "-c", SENDER_SCRIPT, unique("ld-child"), "20"],
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BRIDGE_ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        assert re.fullmatch(r"127\.0\.0\.1:\d+", address), address
        expected = np.zeros((90, 120, 4), np.uint8)
        expected[..., 0], expected[..., 2], expected[..., 3] = 220, 30, 255
        with open_source(f"ndi://{address}") as source:
            frame = receive(source, None, expected)
        assert frame.pixels.shape == (90, 120, 4)
    finally:
        child.kill()
        child.wait(timeout=10)
