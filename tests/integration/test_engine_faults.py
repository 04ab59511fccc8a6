"""Faults inside the engine: a failing or NaN frame is skipped and reported, a model that keeps
failing is bypassed (and retried), a stalled frame is noticed, a lost source gets a fallback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from faulty import Faulty
from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine, EngineOptions
from livediffusion_bridge import FrameSink, TransportError, memory, open_sink, open_source
from livediffusion_models.backends import FrameParams
from livediffusion_models.errors import NonFiniteFrameError

pytestmark = pytest.mark.integration

_STILL = Controls(smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


def _picture(seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


@pytest.fixture
def engine_with(
    make_tiny_backend: Callable[..., Any],
) -> Iterator[Callable[..., tuple[Engine, Faulty]]]:
    memory.reset()
    engines: list[Engine] = []

    def start(**options: Any) -> tuple[Engine, Faulty]:
        backend = Faulty(make_tiny_backend())
        engine = Engine(
            source=open_source("memory://cam"),
            sink=open_sink("memory://out"),
            backend=backend,
            controls=ControlStore(_STILL),
            options=EngineOptions(**options),
        )
        engines.append(engine.start())
        return engine, backend

    yield start
    for engine in engines:
        engine.stop()
        engine.source.close()
        engine.sink.close()
    memory.reset()


def _outputs(picture: np.ndarray, count: int, timeout: float = 20.0) -> list[np.ndarray]:
    out = memory.channel("out")
    start = out.published_count
    deadline = time.monotonic() + timeout
    while out.published_count < start + count:
        assert time.monotonic() < deadline, "no output"
        memory.channel("cam").push(picture)
        time.sleep(0.03)
    return [frame.pixels for frame in out.published[start : start + count]]


def test_a_failing_frame_is_skipped_and_counted(
    engine_with: Callable[..., tuple[Engine, Faulty]],
) -> None:
    engine, backend = engine_with()
    picture = _picture(1)
    processed = _outputs(picture, 2)[-1]
    backend.fail = 2
    after = _outputs(picture, 3)
    assert engine.stats.errors == 2
    assert engine.running and engine.errors == []
    assert not engine.degraded  # two in a row is not "keeps failing"
    assert np.array_equal(after[-1], processed)  # the model, not a passthrough


def test_a_model_that_keeps_failing_is_bypassed_then_retried(
    engine_with: Callable[..., tuple[Engine, Faulty]],
) -> None:
    engine, backend = engine_with(max_failures=3, retry_after=0.5)
    picture = _picture(2)
    processed = _outputs(picture, 2)[-1]
    backend.fail = 10_000
    outputs = _outputs(picture, 5)
    assert engine.degraded
    assert np.abs(outputs[-1].astype(int) - picture.astype(int)).max() <= 1  # passed through
    failed = engine.stats.errors
    time.sleep(0.7)
    _outputs(picture, 3)
    assert engine.stats.errors > failed  # it was tried again after retry_after
    backend.fail = 0
    time.sleep(0.7)
    recovered = _outputs(picture, 3)[-1]
    assert not engine.degraded
    assert np.array_equal(recovered, processed)


def test_the_watchdog_notices_a_stalled_frame(
    engine_with: Callable[..., tuple[Engine, Faulty]],
) -> None:
    engine, backend = engine_with(stall_after=0.3)
    picture = _picture(3)
    _outputs(picture, 2)
    assert engine.stalled_for() is None
    backend.sleep = 2.0
    memory.channel("cam").push(picture)
    deadline = time.monotonic() + 1.5
    while engine.stalled_for() is None:
        assert time.monotonic() < deadline, "the stall went unnoticed"
        time.sleep(0.05)
    stalled = engine.stalled_for()
    assert stalled is not None and stalled > 0.3
    backend.sleep = 0.0


def test_slow_frames_on_a_slow_machine_are_not_stalls_but_a_hang_is(
    make_tiny_backend: Callable[..., Any],
) -> None:
    """At 512 on a CPU every 7 s frame was reported as `INFERENCE STALLED` (a fixed 5 s
    limit before the first frame was measured). Here every frame takes 0.6 s, 3x the floor:
    none is a stall, first frame included; a frame that hangs still is."""
    memory.reset()
    backend = Faulty(make_tiny_backend())
    backend.sleep = 0.6
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        backend=backend,
        controls=ControlStore(_STILL),
        options=EngineOptions(stall_after=0.2, stall_factor=4.0),
    )
    try:
        engine.start()
        picture = _picture(5)
        out = memory.channel("out")
        seen: list[float] = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline or out.published_count < 4:
            assert time.monotonic() < deadline + 20, "no output"
            memory.channel("cam").push(picture)
            stalled = engine.stalled_for()
            if stalled is not None:
                seen.append(stalled)
            time.sleep(0.05)
        assert seen == [], f"slow frames called stalls: {seen}"
        assert 2.0 <= engine.stall_limit() <= 3.5  # 4x a 0.6 s frame (plus the model's own)
        backend.sleep = 6.0  # a hang
        memory.channel("cam").push(picture)
        began = time.monotonic()
        while engine.stalled_for() is None:
            assert time.monotonic() - began < 5.0, "the hang went unnoticed"
            time.sleep(0.05)
    finally:
        engine.stop()
        engine.source.close()
        engine.sink.close()
        memory.reset()


def test_a_long_warm_up_is_not_a_stall(make_tiny_backend: Callable[..., Any]) -> None:
    """The status line runs during the warm-up now (placeholders go out meanwhile): a
    warm-up longer than the floor, here 1.2 s (a CPU's one grey frame) against 0.2 s, says
    "warming up"."""
    import threading

    memory.reset()
    backend = Faulty(make_tiny_backend())
    backend.sleep = 1.2
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        controls=ControlStore(_STILL),
        options=EngineOptions(stall_after=0.2, stall_factor=4.0),
    )
    starter = threading.Thread(target=engine.start, args=(backend,), daemon=True)
    try:
        engine.open()
        starter.start()
        warming, stalled = [], []
        while not engine.warm:
            assert starter.is_alive() or engine.warm, "start() ended without warming up"
            warming.append(engine.warming_for)
            stalled.append(engine.stalled_for())
            time.sleep(0.05)
        assert max(w for w in warming if w is not None) > 0.8
        assert stalled == [None] * len(stalled)
    finally:
        starter.join(10)
        engine.stop()
        engine.source.close()
        engine.sink.close()
        memory.reset()


def test_a_nan_frame_is_refused_and_the_state_cleared(
    make_tiny_backend: Callable[..., Any],
) -> None:
    backend = make_tiny_backend()
    backend.set_prompt(backend.encode_prompt("a prompt"))
    picture = _picture(4)
    out = np.empty_like(picture)
    params = FrameParams(feedback=0.5, smoothing=0.5)
    backend.step(picture, params, out=out)
    fresh = make_tiny_backend()
    fresh.set_prompt(fresh.encode_prompt("a prompt"))
    expected = np.empty_like(picture)
    fresh.step(picture, params, out=expected)  # a first frame: no temporal state
    weight = next(backend.frame_step.unet.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.fill_(float("nan"))
    with pytest.raises(NonFiniteFrameError):
        backend.step(picture, params, out=out)
    with torch.no_grad():
        weight.copy_(saved)
    backend.step(picture, params, out=out)
    # the NaNs did not survive in the feedback: the next frame is a clean first frame
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("mode", ["last", "black", "hold-input"])
def test_a_lost_source_gets_the_chosen_fallback(
    engine_with: Callable[..., tuple[Engine, Faulty]], mode: str
) -> None:
    engine, _ = engine_with(on_source_loss=mode, fallback_fps=20.0)
    picture = _picture(5)
    last = _outputs(picture, 3)[-1]
    out = memory.channel("out")
    assert not engine.source_lost()
    time.sleep(1.5)  # no input: lost after max(1 s, 4 input intervals)
    assert engine.source_lost()
    count = out.published_count
    time.sleep(0.5)
    assert out.published_count - count >= 5  # re-sent at about 20 fps while lost
    shown = out.published[-1].pixels
    if mode == "last":
        assert np.array_equal(shown, last)
    elif mode == "black":
        assert shown[..., :3].max() == 0 and shown.shape == picture.shape
    else:
        assert np.abs(shown.astype(int) - picture.astype(int)).max() <= 1
    # and the live picture is back as soon as the source is
    back = _outputs(_picture(6), 3)[-1]
    assert not np.array_equal(back, shown)


def test_stop_returns_quickly_with_a_frame_in_flight(
    engine_with: Callable[..., tuple[Engine, Faulty]],
) -> None:
    engine, backend = engine_with()
    picture = _picture(7)
    _outputs(picture, 2)
    backend.sleep = 5.0
    memory.channel("cam").push(picture)
    time.sleep(0.3)
    started = time.monotonic()
    stuck = engine.stop(timeout=0.5)
    assert time.monotonic() - started < 1.0
    assert stuck == ["inference"] and engine.busy
    started = time.monotonic()
    assert engine.stop() == ["inference"]  # a second stop does not wait again
    assert time.monotonic() - started < 0.1
    backend.sleep = 0.0
    deadline = time.monotonic() + 10
    while engine.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.busy


class _FailingSink(FrameSink):
    """A sink whose sender cannot be made, or fails once in a while, as transports do."""

    def __init__(self, fail_from: int, fail_until: int) -> None:
        self.uri = "failing://out"
        self.calls = 0
        self.fail = range(fail_from, fail_until)
        self.published = 0

    def publish(self, pixels: Any) -> None:
        self.calls += 1
        if self.calls in self.fail:
            raise TransportError("the sender could not be created (injected)")
        self.published += 1

    def close(self) -> None:
        pass


def _run_with_sink(make_tiny_backend: Callable[..., Any], sink: FrameSink) -> Engine:
    memory.reset()
    engine = Engine(
        source=open_source("memory://cam"),
        sink=sink,
        backend=make_tiny_backend(),
        controls=ControlStore(Controls(bypass=True)),
    )
    engine.start()
    picture = _picture(8)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and engine.running:
        memory.channel("cam").push(picture)
        time.sleep(0.03)
    engine.stop()
    engine.source.close()
    return engine


def test_a_sink_that_cannot_open_stops_with_one_clear_error(
    make_tiny_backend: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    engine = _run_with_sink(make_tiny_backend, _FailingSink(1, 10**9))
    assert len(engine.errors) == 1 and isinstance(engine.errors[0], TransportError)
    [record] = [r for r in caplog.records if "cannot publish" in r.getMessage()]
    assert "failing://out" in record.getMessage() and record.exc_info is None


def test_a_sink_failing_later_is_logged_and_publishing_goes_on(
    make_tiny_backend: Callable[..., Any],
) -> None:
    sink = _FailingSink(3, 6)
    engine = _run_with_sink(make_tiny_backend, sink)
    assert engine.errors == []
    assert engine.stats.errors == 3
    assert sink.published > 10
