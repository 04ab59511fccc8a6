"""Several streams through one served model, over real OSC on loopback with the tiny CPU model:
each stream's controls and temporal state stay its own, plain addresses reach every stream,
``/status`` answers per stream and for all, and one stream's trouble (its source gone, NaN
frames, a sink that refuses every frame) leaves the others publishing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from pythonosc.osc_message import OscMessage as Decoded
from pythonosc.osc_message_builder import OscMessageBuilder

from faulty import Faulty
from livediffusion.config_file import config_from_values
from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine, EngineOptions, Stream
from livediffusion.run.server import run_server
from livediffusion.tools.measure import picture
from livediffusion_bridge import (
    FrameSink,
    Pixels,
    TransportError,
    memory,
    open_sink,
    open_source,
)
from loopback import free_udp_port

pytestmark = pytest.mark.integration

_PICTURE = picture(48, 64)  # smooth: it survives the framing into the model's size
_PICTURES = {"a": _PICTURE, "b": _PICTURE.copy(), "c": 255 - _PICTURE}
"""What each memory channel is fed: ``a`` and ``b`` alike (the same look must give the same
output), ``c`` another picture (each stream must show its own input)."""


def _dgram(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


class _Feeder:
    """Pushes the same picture into each named memory channel at ~30 fps until told not to."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in self.names - self.paused:
                memory.channel(name).push(_PICTURES[name])
            time.sleep(0.03)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class _Served:
    port: int
    stop: threading.Event
    backend: Faulty
    engines: list[Engine]
    sock: socket.socket
    feeder: _Feeder

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(_dgram(address, *args), ("127.0.0.1", self.port))

    def ask(self, address: str) -> list[Any]:
        self.send(address)
        while True:
            decoded = Decoded(self.sock.recv(65_535))
            if decoded.address == address:
                return list(decoded.params)

    def latest(self, sink: str, after: int = 2) -> np.ndarray:
        """A frame published after ``after`` more frames, so controls sent before have landed
        (a change takes effect from the next frame the inference thread prepares)."""
        channel = memory.channel(sink)
        count = channel.published_count
        return channel.wait_published(count + after, timeout=30)[-1].pixels.astype(int)


def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait for ``condition``, polling; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def serve(make_tiny_backend: Callable[..., Any]) -> Iterator[Callable[..., _Served]]:
    memory.reset()
    feeder = _Feeder("a", "b", "c")
    running: list[tuple[_Served, threading.Thread, list[int]]] = []

    def launch(*, clip_from: str = "memory://b", **values: Any) -> _Served:
        port = free_udp_port()
        config = config_from_values(
            {
                "stream": (
                    _stream("cam", "memory://a", "memory://a-out"),
                    _stream("clip", clip_from, "memory://b-out"),
                ),
                "osc_port": port,
                "feedback": 0.0,
                "smoothing": 0.0,
                "prompt_glide": 0.0,
                "seed_glide": 0.0,
                **values,
            }
        )
        backend = Faulty(make_tiny_backend(streams=2))
        stop = threading.Event()
        engines: list[Engine] = []
        codes: list[int] = []
        thread = threading.Thread(
            target=lambda: codes.append(
                run_server(config, backend=backend, stop=stop, on_engine=engines.append)
            ),
            daemon=True,
        )
        thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5.0)
        served = _Served(port, stop, backend, engines, sock, feeder)
        running.append((served, thread, codes))
        for sink in ("a-out", "b-out"):  # warm, and both streams processed
            _until(lambda: bool(engines and engines[0].warm), 60, "the model never warmed up")
            served.latest(sink)
        return served

    yield launch
    feeder.close()
    for served, thread, codes in running:
        served.stop.set()
        thread.join(10)
        served.sock.close()
        assert codes == [0]
    memory.reset()


def _stream(name: str, source: str, sink: str) -> Any:
    from livediffusion.option_values import _stream as parse

    return parse([name, source, sink])


def test_a_change_on_one_stream_never_shows_on_the_other(serve: Callable[..., _Served]) -> None:
    served = serve()
    cam, clip = served.latest("a-out"), served.latest("b-out")
    # the same picture, look, prompt and seed: the same output, row for row of the batch
    assert np.abs(cam - clip).max() <= 1
    served.send("/cam/strength", 0.1)
    served.send("/cam/seed", 99)
    cam_after, clip_after = served.latest("a-out", 3), served.latest("b-out", 3)
    assert np.abs(cam_after - cam).mean() > 1.0  # cam changed
    assert np.abs(clip_after - clip).max() <= 1  # clip did not
    # TouchDesigner's channel-name form reaches the named stream too
    served.send("clip_blend", 1.0)
    blended = served.latest("b-out", 3)
    assert np.abs(blended - _PICTURE.astype(int)).mean() < np.abs(clip - _PICTURE).mean()
    assert np.abs(served.latest("a-out", 3) - cam_after).max() <= 1
    stores = [lane.controls.snapshot() for lane in served.engines[0].lanes]
    assert (stores[0].strength, stores[0].seed, stores[0].blend) == (0.1, 99, 0.0)
    assert (stores[1].strength, stores[1].seed, stores[1].blend) == (1.0, 42, 1.0)
    # and the other way round: clip's seed moves clip only
    cam_now, clip_now = served.latest("a-out", 3), served.latest("b-out", 3)
    served.send("/clip/seed", 5)
    served.send("/clip/blend", 0.0)
    assert np.abs(served.latest("b-out", 3) - clip_now).mean() > 1.0
    assert np.abs(served.latest("a-out", 3) - cam_now).max() <= 1


def test_each_stream_shows_its_own_input(serve: Callable[..., _Served]) -> None:
    served = serve(clip_from="memory://c")  # clip is fed another picture
    served.send("/blend", 1.0)  # through the model, the input comes out: whose input is it
    cam, clip = served.latest("a-out", 4)[..., :3], served.latest("b-out", 4)[..., :3]
    a, c = _PICTURES["a"][..., :3], _PICTURES["c"][..., :3]  # c is a's negative

    def off(out: np.ndarray, picture: np.ndarray) -> float:
        return float(np.abs(out - picture.astype(int)).mean())

    assert off(cam, a) < 0.5 * off(cam, c)  # framed at the model's size, so not exact
    assert off(clip, c) < 0.5 * off(clip, a)


def test_a_reset_on_one_stream_resets_that_stream_s_state(serve: Callable[..., _Served]) -> None:
    served = serve()
    served.backend.resets.clear()
    served.send("/clip/reset")
    served.latest("b-out", 3)
    assert served.backend.resets == [1]  # the backend's row of clip, no other
    served.send("/reset")
    served.latest("a-out", 3)
    served.latest("b-out", 3)
    assert sorted(served.backend.resets[1:]) == [0, 1]


def test_a_failed_batch_counts_against_every_stream_in_it_and_frames_go_on(
    serve: Callable[..., _Served],
) -> None:
    served = serve()
    lanes = served.engines[0].lanes
    served.backend.fail = 2  # out of memory for the whole batch, twice
    _until(lambda: not served.backend.fail, 30, "the failing batches never ran")
    served.latest("a-out", 3)
    served.latest("b-out", 3)
    assert lanes[0].stats.errors >= 1 and lanes[1].stats.errors >= 1
    assert served.engines[0].running and not served.engines[0].errors


def test_plain_addresses_reach_every_stream(serve: Callable[..., _Served]) -> None:
    served = serve()
    served.send("/strength", 0.25)
    served.send("/reset")
    lanes = served.engines[0].lanes
    # the two messages are handled in turn: wait for the second before reading either
    _until(
        lambda: all(
            lane.controls.snapshot().strength == 0.25 and lane.controls.resets for lane in lanes
        ),
        10,
        "/strength and /reset did not reach every stream",
    )
    assert [lane.controls.resets for lane in lanes] == [1] * len(lanes)
    # saving a preset needs the stream's name: two streams, two looks
    rejected = served.ask("/status")[6]
    served.send("/preset/save", 1)
    _until(
        lambda: served.ask("/status")[6] != rejected,
        10,
        "/preset/save without a stream was not refused",
    )


def test_status_answers_per_stream_and_for_all(serve: Callable[..., _Served]) -> None:
    served = serve()
    deadline = time.monotonic() + 30
    while True:
        cam, clip, both = (served.ask(a) for a in ("/cam/status", "/clip/status", "/status"))
        if (cam[1] > 0 and clip[1] > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cam[1] > 0 and clip[1] > 0
    assert cam[4:6] == clip[4:6] == both[4:6] == ["sdxs-512-0.9", "torch-cpu float32"]
    assert both[0] > max(cam[0], clip[0])  # inputs summed: each stream feeds ~30 fps
    assert both[2] >= min(cam[2], clip[2])  # the worst latency


def test_a_stream_whose_source_stops_leaves_the_other_publishing(
    serve: Callable[..., _Served],
) -> None:
    served = serve()
    feeder = served.feeder
    feeder.paused.add("b")
    cam, clip = served.engines[0].lanes
    _until(clip.source_lost, 10, "clip's source was never counted lost")
    steps, fallback, cam_steps = clip.stats.steps, clip.stats.fallback, cam.stats.steps
    # cam goes on through the model (counted, not read from its sink: a frame stepped just
    # before the counts above can be published just after them)
    _until(lambda: cam.stats.steps >= cam_steps + 8, 30, "cam did not step 8 more frames")
    served.latest("a-out", 8)  # and publishes
    assert clip.stats.steps == steps  # clip's frames no longer go through the model
    # its receivers keep its last picture, re-sent
    _until(lambda: clip.stats.fallback >= fallback + 3, 30, "clip's last picture was not re-sent")
    served.latest("b-out", 3)
    feeder.paused.discard("b")
    served.latest("b-out", 3)  # back, without a restart


def test_nan_frames_on_one_stream_leave_the_other_publishing(
    serve: Callable[..., _Served],
) -> None:
    served = serve()
    lanes = served.engines[0].lanes
    served.backend.fail_streams[1] = 3
    _until(lambda: lanes[1].stats.errors >= 3, 30, "clip's NaN frames were not counted")
    assert lanes[0].stats.errors == 0
    served.latest("a-out", 3)
    served.latest("b-out", 3)  # clip recovered: its frames go through the model again
    assert lanes[1].degraded_until is None


class _RefusingSink(FrameSink):
    """A sink whose every publish fails, as an NDI sender whose runtime went away does."""

    def __init__(self) -> None:
        self.uri = "memory://refusing"
        self.attempts = 0

    def publish(self, pixels: Pixels) -> None:
        self.attempts += 1
        raise TransportError("the sender is gone")

    def close(self) -> None:
        pass


def test_a_stream_whose_sink_cannot_publish_stops_alone(
    make_tiny_backend: Callable[..., Any],
) -> None:
    memory.reset()
    feeder = _Feeder("a", "b")
    refusing = _RefusingSink()
    try:
        with (
            open_source("memory://a") as source_a,
            open_sink("memory://a-out") as sink_a,
            open_source("memory://b") as source_b,
        ):
            engine = Engine(
                streams=[
                    Stream(source_a, sink_a, ControlStore(Controls()), name="cam"),
                    Stream(source_b, refusing, ControlStore(Controls()), name="clip"),
                ],
                backend=make_tiny_backend(streams=2),
                options=EngineOptions(),
            )
            engine.start()
            try:
                out = memory.channel("a-out")
                out.wait_published(out.published_count + 5, timeout=30)
                cam, clip = engine.lanes
                assert isinstance(clip.failed, TransportError)
                assert cam.failed is None and engine.running  # the others go on
                assert refusing.attempts >= 1
                out.wait_published(out.published_count + 5, timeout=30)
            finally:
                engine.stop()
            assert len(engine.errors) == 1  # the run ends with the failure on record
    finally:
        feeder.close()
        memory.reset()
