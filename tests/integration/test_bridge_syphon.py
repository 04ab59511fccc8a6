"""Syphon round trip in one process (macOS only; never run on the project's Linux machines).

The test runs on the main thread, which is where a UI-less process must pump the Cocoa run
loop for Syphon discovery; the sink and the source both pump while they work here.
"""

from __future__ import annotations

import sys
import time
import uuid

import numpy as np
import pytest

from livediffusion_bridge import list_sources, open_sink, open_source, pump_events
from pictures import oriented_picture

pytestmark = [
    pytest.mark.macos,
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform != "darwin", reason="Syphon needs macOS"),
]


def test_round_trip_keeps_colours_and_orientation() -> None:
    pytest.importorskip("syphon")
    name = f"ld-test-{uuid.uuid4().hex[:8]}"
    sent = oriented_picture(1)
    with open_sink(f"syphon://{name}") as sink:
        sink.publish(sent)
        deadline = time.monotonic() + 10.0
        listing = list_sources(timeout=1.0)
        while not any(name in s.name for s in listing.of_kind("syphon")):
            assert time.monotonic() < deadline, listing
            sink.publish(sent)
            pump_events(0.05)
            listing = list_sources(timeout=0.5)
        uri = next(s.uri for s in listing.of_kind("syphon") if name in s.name)
        with open_source(uri) as source:
            frame = None
            while frame is None and time.monotonic() < deadline:
                sink.publish(sent)
                pump_events(0.01)
                frame = source.read(0.1)
    assert frame is not None
    assert frame.pixels.shape == sent.shape
    # Syphon is lossless: exact colours, and the white block must still be top-left.
    assert np.array_equal(frame.pixels[..., :3], sent[..., :3])
