"""Syphon through the engine's threads, as a user's syphon-python code would drive it.

A plain syphon-python server stands in for the input app (it is not one of our sinks, so the
source may read it); the engine reads it on its capture thread, passes it through (bypass, a
tiny CPU model) and publishes on its publish thread; a plain syphon-python client stands in
for the host reading our output. The test's main thread does what ``livediffusion serve``
does: it pumps the run loop, through which Syphon's discovery arrives.

On a Mac this is the real thing. Elsewhere it runs the same syphon-python 0.2.0 code over the
stubbed native layer of tests/syphon_native.py, with the bridge's OS checks saying macOS.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine
from livediffusion_bridge import list_sources, open_sink, open_source, pump_events, transports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

_BYPASS = Controls(bypass=True, smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


def quadrants(size: int = 64) -> np.ndarray:
    """Red, green / blue, white: a flip, a mirror or a red/blue swap all show."""
    pixels = np.zeros((size, size, 4), np.uint8)
    half = size // 2
    pixels[:half, :half, :3] = (255, 0, 0)
    pixels[:half, half:, :3] = (0, 255, 0)
    pixels[half:, :half, :3] = (0, 0, 255)
    pixels[half:, half:, :3] = (255, 255, 255)
    pixels[..., 3] = 255
    return pixels


@pytest.fixture
def mac(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """ "real" on a Mac; elsewhere "stubbed": syphon-python's own Python over syphon_native."""
    if sys.platform == "darwin":
        pytest.importorskip("syphon")
        return "real"
    import syphon_native

    request.getfixturevalue("syphon_mac")()
    syphon_native.pretend_macos(monkeypatch, transports)
    return "stubbed"


def test_engine_round_trip_keeps_colours_and_orientation(
    make_tiny_backend: Callable[..., Any], mac: str
) -> None:
    import Metal
    import objc
    import syphon
    from syphon.utils.numpy import copy_image_to_mtl_texture, copy_mtl_texture_to_image
    from syphon.utils.raw import create_mtl_texture

    tag = uuid.uuid4().hex[:8]
    input_name, output_name = f"ld-test-in-{tag}", f"ld-test-out-{tag}"
    sent = quadrants()  # the tiny model's size: the bypass copies it unchanged

    with objc.autorelease_pool():
        camera = syphon.SyphonMetalServer(input_name)
        texture = create_mtl_texture(camera.device, 64, 64, Metal.MTLPixelFormatBGRA8Unorm)
        copy_image_to_mtl_texture(np.ascontiguousarray(sent[..., (2, 1, 0, 3)]), texture)
    engine = Engine(
        source=open_source(f"syphon://{input_name}"),
        sink=open_sink(f"syphon://{output_name}"),
        backend=make_tiny_backend(),
        controls=ControlStore(_BYPASS),
    )
    directory = syphon.SyphonServerDirectory()  # closed at the end, as the wheel advises
    directory.run_loop_interval = 0.0
    client: Any = None
    received = None
    try:
        engine.start()
        deadline = time.monotonic() + 60.0
        while received is None:
            assert time.monotonic() < deadline, "no frame came back through the engine"
            assert engine.errors == [], engine.errors
            with objc.autorelease_pool():
                camera.publish_frame_texture(texture)
                if client is None:
                    outputs = [s for s in directory.servers if s.name == output_name]
                    if outputs:
                        client = syphon.SyphonMetalClient(outputs[0])
                elif client.has_new_frame:
                    image = client.new_frame_image
                    if image is not None:
                        received = copy_mtl_texture_to_image(image)[..., (2, 1, 0, 3)]
            pump_events(0.01)
        # Our output is listed for other apps but never offered as an input here.
        listed = list_sources(timeout=1.0).of_kind("syphon")
        assert any(input_name in s.name for s in listed)
        assert not any(output_name in s.name for s in listed)
    finally:
        engine.stop()
        engine.source.close()
        engine.sink.close()
        with objc.autorelease_pool():
            if client is not None:
                client.stop()
            camera.stop()
        directory.close()
    assert engine.errors == []
    assert received.shape == sent.shape
    # Syphon is lossless and the bypass copies at the model's size: colours and the
    # quadrants' places must survive (a flip or a BGRA/RGBA mix-up would move them).
    assert np.abs(received.astype(int) - sent.astype(int)).max() <= 1
