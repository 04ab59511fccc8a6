"""Spout round trip in one process (Windows only; never run on the project's Linux machines).

Spout shares textures through OpenGL/DirectX, so this needs a GPU driver; SpoutGL opens its
own hidden OpenGL context on the first send or receive.
"""

from __future__ import annotations

import sys
import time
import uuid

import numpy as np
import pytest

from livediffusion_bridge import list_sources, open_sink, open_source
from pictures import oriented_picture

pytestmark = [
    pytest.mark.windows,
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform != "win32", reason="Spout needs Windows"),
]


def test_round_trip_keeps_size_colours_and_orientation() -> None:
    pytest.importorskip("SpoutGL")
    name = f"ld-test-{uuid.uuid4().hex[:8]}"
    sent = oriented_picture(1)
    with open_sink(f"spout://{name}") as sink:
        sink.publish(sent)
        assert any(s.name == name for s in list_sources(timeout=1.0).of_kind("spout"))
        with open_source(f"spout://{name}") as source:
            frame = None
            deadline = time.monotonic() + 10.0
            while frame is None and time.monotonic() < deadline:
                sink.publish(sent)
                frame = source.read(0.1)
    assert frame is not None
    # A non-square picture catches the binding's width/height labelling.
    assert frame.pixels.shape == sent.shape
    assert np.array_equal(frame.pixels[..., :3], sent[..., :3])
