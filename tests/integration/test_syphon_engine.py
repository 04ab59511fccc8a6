"""Syphon in -> engine -> Syphon out, through the engine's real threads and syphon-python 0.2.0's
real Python, over the stubbed native layer of tests/syphon_native.py.

Another app's server (``ExternalServer``) feeds ``SyphonSource`` on the engine's capture
thread; the engine passes the picture through (bypass, on a tiny CPU model) and its publish
thread hands it to ``SyphonSink``; another app (``ExternalClient``) reads our server. The
test's main thread does what ``livediffusion serve``'s does: it pumps the run loop, which
discovery needs (frames travel on Syphon's own queue).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine
from livediffusion_bridge import _syphon, open_sink, open_source
from livediffusion_bridge._syphon import SyphonSource
from syphon_native import ExternalClient, ExternalServer, ServerState, World

pytestmark = pytest.mark.integration

_BYPASS = Controls(bypass=True, smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


def quadrants(size: int) -> np.ndarray:
    """Red, green / blue, white: a flip, a mirror or a red/blue swap all show."""
    pixels = np.zeros((size, size, 4), np.uint8)
    half = size // 2
    pixels[:half, :half, :3] = (255, 0, 0)
    pixels[:half, half:, :3] = (0, 255, 0)
    pixels[half:, :half, :3] = (0, 0, 255)
    pixels[half:, half:, :3] = (255, 255, 255)
    pixels[..., 3] = 255
    return pixels


def centres(pixels: np.ndarray) -> np.ndarray:
    """The colour in the middle of each quadrant (clear of any resampling at the edges)."""
    h, w = pixels.shape[0] // 4, pixels.shape[1] // 4
    return np.array([pixels[y, x, :3] for y in (h, 3 * h) for x in (w, 3 * w)], dtype=int)


@pytest.fixture
def world(syphon_mac: Callable[..., World], monkeypatch: pytest.MonkeyPatch) -> World:
    world = syphon_mac()
    monkeypatch.setattr(SyphonSource, "retry_interval", 0.05)
    return world


@pytest.fixture
def start(make_tiny_backend: Callable[..., Any], world: World) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def start(source: str = "syphon://", sink: str = "syphon://livediffusion") -> Engine:
        engine = Engine(
            source=open_source(source),
            sink=open_sink(sink),
            backend=make_tiny_backend(),
            controls=ControlStore(_BYPASS),
        )
        engines.append(engine.start())
        return engine

    yield start
    for engine in engines:
        engine.stop()
        engine.source.close()
        engine.sink.close()


def run_until(
    condition: Callable[[], object],
    *,
    feed: Callable[[], None] | None = None,
    engine: Engine | None = None,
    timeout: float = 20.0,
    what: str = "the condition",
) -> None:
    """The main thread's loop: let the external app send a frame, pump the run loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if engine is not None:
            assert engine.errors == [], engine.errors
        if feed is not None:
            feed()
        _syphon.pump(0.01)


def output_of(world: World, engine: Engine, feed: Callable[[], None]) -> ExternalClient:
    """Another app's client of our server, once the engine's publish thread has made it."""
    servers: list[ServerState] = []

    def ours() -> bool:
        with world.lock:
            servers[:] = [s for s in world.servers.values() if not s.external and s.alive]
        return bool(servers)

    run_until(ours, feed=feed, engine=engine)
    [server] = servers
    return ExternalClient(world, server)


def test_frames_flow_through_the_engine_threads(world: World, start: Callable[..., Engine]) -> None:
    camera = ExternalServer(world, "Camera", "cam")
    picture = quadrants(64)  # the tiny model's size: the bypass copies it unchanged

    def feed() -> None:
        camera.publish(picture)

    engine = start()
    output = output_of(world, engine, feed)
    run_until(lambda: output.frames >= 5, feed=feed, engine=engine)
    received = output.frame()
    assert received is not None and received.shape == picture.shape
    assert np.abs(received.astype(int) - picture.astype(int)).max() <= 1  # RGBA, right way up
    assert engine.errors == []

    [client] = world.clients
    ours = output.state
    assert client.created_on == "capture" and client.used_on == {"capture"}
    assert ours.created_on == "publish" and ours.app == world.app_name
    # what the server logs for the host to pick: as other apps' directories list it
    assert engine.sink.shown_as == f"Syphon server '{ours.app} - {ours.name}'"
    assert world.leaks_on("capture", "publish") == {}  # every pool drained, on frame threads
    assert world.pools["capture"] > 0 and world.pools["publish"] > 0
    textures = ours.published
    assert len(set(textures)) == 2 and all(a != b for a, b in itertools.pairwise(textures))
    assert ours.copies == {"blit": len(textures)}


def test_flip_turns_an_opengl_sender_the_right_way_up(
    world: World, start: Callable[..., Engine]
) -> None:
    camera = ExternalServer(world, "GL App", "")  # an unnamed server: addressed by its app
    picture = quadrants(64)

    def feed() -> None:
        camera.publish(picture, upside_down=True)

    engine = start(source="syphon://GL App?flip=1")
    output = output_of(world, engine, feed)
    run_until(lambda: output.frames >= 3, feed=feed, engine=engine)
    received = output.frame()
    assert received is not None
    assert np.abs(received.astype(int) - picture.astype(int)).max() <= 1


def test_input_app_quits_and_returns_at_another_size_never_feeding_back(
    world: World, start: Callable[..., Engine]
) -> None:
    """The Mac defaults: ``syphon://`` in, ``syphon://livediffusion`` out."""
    camera = ExternalServer(world, "Camera", "cam")
    engine = start()
    output = output_of(world, engine, lambda: camera.publish(quadrants(64)))
    run_until(lambda: output.frames >= 3, feed=lambda: camera.publish(quadrants(64)))
    ours = output.state
    run_until(lambda: ours.uuid in world.listed())  # our output is listed, for everyone

    camera.stop()  # the input app quits while our output exists
    source = engine.source
    run_until(
        lambda: source.waiting_for is not None,
        engine=engine,
        what="the source to wait (not to switch to our own output)",
    )
    assert source.waiting_for == "any Syphon server (not our own)"
    frames_in = engine.stats.snapshot().frames_in
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # many connection attempts, none of them to us
        _syphon.pump(0.01)
    # Our output stays up (the engine may re-send its last frame), but nothing of it comes
    # back in: no client of our server, no input frame.
    assert all(client.state is not ours for client in world.clients)
    assert engine.stats.snapshot().frames_in == frames_in
    assert source.waiting_for is not None
    frames = output.frames

    back = ExternalServer(world, "Camera", "cam")  # the app is back, now at 128x128
    bigger = quadrants(128)
    run_until(
        lambda: (frame := output.frame()) is not None and frame.shape == bigger.shape,
        feed=lambda: back.publish(bigger),
        engine=engine,
    )
    run_until(lambda: output.frames >= frames + 3, feed=lambda: back.publish(bigger))
    received = output.frame()
    assert received is not None
    assert np.abs(centres(received) - centres(bigger)).max() <= 2
    assert source.reconnects == 1
    assert [client.state for client in world.clients] == [camera.state, back.state]
    assert [s for s in world.servers.values() if not s.external] == [ours]  # one server
    assert world.leaks_on("capture", "publish") == {}
    assert engine.errors == []
