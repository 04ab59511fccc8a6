"""Spout through the engine's real thread layout, on the SpoutGL contract fake (Linux).

The main thread builds the source and sink, the engine reads on its capture thread and
publishes on its publish thread, as ``livediffusion serve`` does: an external Spout sender
-> ``SpoutSource`` -> Engine (a tiny model on the CPU, in bypass) -> ``SpoutSink`` -> what an
external receiver sees. ``tests/spoutgl_fake.py`` enforces the library's rules, above all
that every call has an OpenGL context current on the *calling* thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import spoutgl_fake
from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine
from livediffusion.tools.doctor import compare_pictures
from livediffusion_bridge import Frame, FrameSource, open_sink, open_source
from spoutgl_fake import GL_RGBA

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BYPASS = Controls(bypass=True, smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


def quadrants(height: int = 64, width: int = 64, value: int = 0) -> np.ndarray:
    """Four coloured quadrants (a flip or a red/blue swap shows); ``value`` tints them."""
    pixels = np.empty((height, width, 4), np.uint8)
    top, left = height // 2, width // 2
    pixels[:top, :left, :3] = (220, 40 + value, 40)
    pixels[:top, left:, :3] = (40, 220, 40 + value)
    pixels[top:, :left, :3] = (40 + value, 40, 220)
    pixels[top:, left:, :3] = (220, 220, 220)
    pixels[..., 3] = 255
    return pixels


class Camera:
    """Another application sending to Spout from its own thread, about 200 frames a second."""

    def __init__(self, world: Any, name: str, picture: Callable[[int], np.ndarray]) -> None:
        self.world = world
        self.name = name
        self.picture = picture
        self.sent: list[np.ndarray] = []
        self._sender: Any = world.sender(name)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"app {name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(0.005):
            with self._lock:
                if self._sender is None:
                    continue
                pixels = self.picture(count)
                self._sender.send(pixels)
                self.sent.append(pixels)
            count += 1

    def show(self, picture: Callable[[int], np.ndarray]) -> None:
        with self._lock:
            self.picture = picture

    def vanish(self) -> None:
        with self._lock:
            self._sender.close()
            self._sender = None

    def come_back(self, picture: Callable[[int], np.ndarray]) -> None:
        with self._lock:
            self.picture = picture
            self._sender = self.world.sender(self.name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = spoutgl_fake.install(monkeypatch)
    yield module
    assert module.world.problems() == []  # no misuse, every context closed


@pytest.fixture
def running(
    fake: ModuleType, make_tiny_backend: Callable[..., Any]
) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def start(source: str | FrameSource, sink: str = "spout://out") -> Engine:
        engine = Engine(
            source=open_source(source) if isinstance(source, str) else source,
            sink=open_sink(sink),
            backend=make_tiny_backend(),
            controls=ControlStore(BYPASS),
        )
        engines.append(engine)
        return engine.start()

    yield start
    for engine in engines:
        engine.stop()
        engine.source.close()  # from the main thread, after the frame threads ended
        engine.sink.close()
        assert engine.errors == []


@pytest.fixture
def camera(fake: ModuleType) -> Iterator[Callable[..., Camera]]:
    """Start another application's sender: ``camera(name, picture)``."""
    cameras: list[Camera] = []

    def start(name: str, picture: Callable[[int], np.ndarray]) -> Camera:
        cameras.append(Camera(fake.world, name, picture))
        return cameras[-1]

    yield start
    for cam in cameras:
        cam.stop()


def close_to(got: np.ndarray | None, want: np.ndarray) -> bool:
    """Same size, orientation and colours (at another size than the model's, bypass scales
    through the model size, which softens the quadrants' edges)."""
    return got is not None and compare_pictures(want, got, tolerance=4.0) is None


def test_frames_flow_through_the_engine_threads(
    running: Callable[..., Engine], fake: ModuleType, camera: Callable[..., Camera]
) -> None:
    world = fake.world
    picture = quadrants()
    camera("cam", lambda i: picture)
    engine = running("spout://cam")
    wait_for(lambda: close_to(world.latest("out"), picture))  # size, orientation, colours
    assert engine.source.waiting_for is None

    # Each thread made its own context and used only that; the main thread none.
    assert world.threads_of("createOpenGL") == {"capture", "publish"}
    assert world.threads_of("receiveImage") == {"capture"}
    assert world.threads_of("sendImage") == {"publish"}
    engine.stop()
    engine.source.close()
    engine.sink.close()
    assert world.threads_of("releaseReceiver") == {"capture"}
    assert world.threads_of("releaseSender") == {"publish"}
    assert world.threads_of("closeOpenGL") == {"capture", "publish"}
    assert "out" not in world.textures and world.open_contexts() == []


class OldSpoutSource(FrameSource):
    """The previous design, plus the context it lacked: receiver and OpenGL context made by
    the constructor, on the thread that builds the source, and used by whoever reads."""

    uri = "spout://cam (old design)"

    def __init__(self, spout: ModuleType) -> None:
        self.receiver = spout.SpoutReceiver()
        assert self.receiver.createOpenGL()
        self.receiver.setReceiverName("cam")
        self.buffer: np.ndarray | None = None

    def read(self, timeout: float) -> Frame | None:
        time.sleep(timeout / 10)
        if not self.receiver.receiveImage(self.buffer, GL_RGBA, False, 0):
            return None
        if self.receiver.isUpdated():
            w, h = self.receiver.getSenderWidth(), self.receiver.getSenderHeight()
            self.buffer = np.zeros((h, w, 4), np.uint8)
            return None
        if self.buffer is None or not self.receiver.isFrameNew():
            return None
        frame, self.buffer = self.buffer, np.zeros_like(self.buffer)
        return Frame(frame, time.monotonic())

    def close(self) -> None:
        pass


def test_a_context_made_where_the_source_is_built_serves_no_reader(
    running: Callable[..., Engine], fake: ModuleType, camera: Callable[..., Camera]
) -> None:
    world = fake.world
    camera("cam", lambda i: quadrants())
    old = OldSpoutSource(fake)  # built here, on the main thread, as the engine's owner does
    stale = running(old)
    time.sleep(1.0)
    stale.stop()
    assert world.latest("out") is None  # silently nothing, as on Windows
    assert world.violations and all("'capture'" in v for v in world.violations)
    world.violations.clear()
    assert old.receiver.closeOpenGL()  # made here, closed here
    before = len(world.calls)

    # The same layout with SpoutSource works only because it connects on the reader.
    engine = running("spout://cam", "spout://out2")
    wait_for(lambda: close_to(world.latest("out2"), quadrants()))
    assert {thread for _, thread in world.calls[before:]} == {"capture", "publish"}
    assert engine.source.waiting_for is None


def test_no_unwritten_or_stale_frame_reaches_the_sink(
    running: Callable[..., Engine], fake: ModuleType, camera: Callable[..., Camera]
) -> None:
    """Each camera frame is one flat colour: a frame Spout never wrote (the sentinel-marked
    buffer) or a picture from another size would not be one of them."""
    world = fake.world

    def flat(height: int, width: int) -> Callable[[int], np.ndarray]:
        def picture(i: int) -> np.ndarray:
            pixels = np.empty((height, width, 4), np.uint8)
            pixels[..., :3] = 10 + (7 * i) % 240
            pixels[..., 3] = 255
            return pixels

        return picture

    cam = camera("cam", flat(64, 64))
    engine = running("spout://cam")
    wait_for(lambda: len(world.sent("out")) >= 5)
    cam.show(flat(64, 96))  # the sender changes size
    wait_for(lambda: any(f.shape == (64, 96, 4) for f in world.sent("out")[-3:]))
    wait_for(lambda: len(world.sent("out")) >= 15)
    engine.stop()

    colours = {int(p[0, 0, 0]) for p in cam.sent}
    published = world.sent("out")
    assert {p.shape for p in published} == {(64, 64, 4), (64, 96, 4)}
    for pixels in published:
        rgb = pixels[..., :3].astype(int)
        assert rgb.max() - rgb.min() <= 2, "not one of the camera's flat frames"
        assert min(abs(int(rgb.mean()) - c) for c in colours) <= 1


def test_any_sender_never_takes_our_output_and_waits_for_a_sender_to_return(
    running: Callable[..., Engine], fake: ModuleType, camera: Callable[..., Camera]
) -> None:
    world = fake.world
    cam = camera("cam", lambda i: quadrants())
    wait_for(lambda: "cam" in world.textures)
    engine = running("spout://", "spout://")  # the default sink: livediffusion
    wait_for(lambda: close_to(world.latest("livediffusion"), quadrants()))
    assert world.active == "livediffusion"  # Spout made our output the active sender
    assert engine.source.sender == "cam"  # type: ignore[attr-defined]

    cam.vanish()
    wait_for(lambda: engine.source.waiting_for == "any Spout sender")
    time.sleep(0.6)  # several connection attempts, with only our own output there
    assert engine.source.waiting_for == "any Spout sender"
    assert engine.source.sender is None  # type: ignore[attr-defined]

    cam.come_back(lambda i: quadrants(48, 80, value=30))
    wait_for(lambda: close_to(world.latest("livediffusion"), quadrants(48, 80, value=30)))
    assert engine.source.waiting_for is None and engine.source.reconnects == 1
    assert engine.running


def test_a_named_sender_that_vanishes_is_picked_up_again_at_another_size(
    running: Callable[..., Engine], fake: ModuleType, camera: Callable[..., Camera]
) -> None:
    world = fake.world
    cam = camera("cam", lambda i: quadrants())
    engine = running("spout://cam")
    wait_for(lambda: close_to(world.latest("out"), quadrants()))
    cam.vanish()
    wait_for(lambda: engine.source.waiting_for == "Spout sender 'cam'")
    cam.come_back(lambda i: quadrants(96, 128, value=60))
    wait_for(lambda: close_to(world.latest("out"), quadrants(96, 128, value=60)))
    assert engine.source.waiting_for is None and engine.source.reconnects == 1
