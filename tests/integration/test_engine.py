"""The engine's three threads with the in-memory transport and a tiny model on the CPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine, EngineOptions
from livediffusion_bridge import memory, open_sink, open_source

pytestmark = pytest.mark.integration


def _picture(seed: int, height: int = 48, width: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


_STILL = Controls(smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


@pytest.fixture
def running(make_tiny_backend: Callable[..., Any]) -> Iterator[Callable[..., Engine]]:
    memory.reset()
    engines: list[Engine] = []

    def start(controls: Controls | None = None, **options: Any) -> Engine:
        engine = Engine(
            source=open_source("memory://cam"),
            sink=open_sink("memory://out"),
            backend=make_tiny_backend(),
            controls=ControlStore(controls or _STILL),
            options=EngineOptions(**options),
        )
        engines.append(engine.start())
        return engine

    yield start
    for engine in engines:
        engine.stop()
        engine.source.close()
        engine.sink.close()
    memory.reset()


def _next_output(picture: np.ndarray, *, after: int, timeout: float = 20.0) -> np.ndarray:
    """Push ``picture`` until an output newer than the ``after``-th one is published."""
    out = memory.channel("out")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        memory.channel("cam").push(picture)
        try:
            return out.wait_published(after + 1, timeout=0.5)[-1].pixels
        except TimeoutError:
            continue
    raise AssertionError("no output frame")


def _settled_output(picture: np.ndarray, *, frames: int = 3) -> np.ndarray:
    """An output produced after a change had time to apply (the change lands between frames)."""
    count = memory.channel("out").published_count
    result = picture
    for i in range(frames):
        result = _next_output(picture, after=count + i)
    return result


def test_frames_come_out_processed_at_the_input_size(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(1)
    output = _settled_output(picture)
    assert output.shape == picture.shape
    assert output.dtype == np.uint8
    assert np.all(output[..., 3] == 255)
    # Not a pass-through: the model changed the picture.
    assert np.abs(output[..., :3].astype(int) - picture[..., :3].astype(int)).mean() > 10
    status = engine.stats.snapshot()
    assert status.frames_out >= 1 and status.frames_in >= status.frames_out
    assert engine.errors == []


def test_output_size_option(running: Callable[..., Engine]) -> None:
    running(output_size=(32, 40))
    assert _settled_output(_picture(2)).shape == (32, 40, 4)


def test_bypass_passes_the_picture_through(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = np.zeros((64, 64, 4), np.uint8)
    picture[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    picture[..., 3] = 255
    engine.controls.handle_osc("/bypass", (1,))
    output = _settled_output(picture)
    assert np.abs(output.astype(int) - picture.astype(int)).max() <= 1


def test_prompt_strength_and_seed_change_the_output(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(3)
    base = _settled_output(picture).astype(int)
    assert np.array_equal(_settled_output(picture).astype(int), base)  # deterministic

    def changed(address: str, value: object) -> float:
        engine.controls.handle_osc(address, (value,))
        return float(np.abs(_settled_output(picture).astype(int) - base).mean())

    assert changed("/prompt", "a completely different prompt") > 0.5
    engine.controls.handle_osc("/prompt", (Controls().prompt,))
    assert changed("/strength", 0.3) > 0.5
    engine.controls.handle_osc("/strength", (1.0,))
    assert changed("/seed", 1234) > 0.5


def test_pause_stops_publishing(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(4)
    _settled_output(picture)
    engine.controls.handle_osc("/pause", (1,))
    time.sleep(0.3)  # let an in-flight frame finish
    count = memory.channel("out").published_count
    for _ in range(10):
        memory.channel("cam").push(picture)
        time.sleep(0.02)
    assert memory.channel("out").published_count == count
    engine.controls.handle_osc("/pause", (0,))
    _next_output(picture, after=count)


def test_a_slow_model_drops_frames_instead_of_queueing(
    running: Callable[..., Engine],
) -> None:
    engine = running()
    cam = memory.channel("cam")
    _settled_output(_picture(5))
    start = engine.stats.snapshot()
    for i in range(200):  # far faster than the CPU model
        cam.push(_picture(i % 3))
    time.sleep(0.5)
    status = engine.stats.snapshot()
    pushed = status.frames_in - start.frames_in
    assert status.dropped > start.dropped
    # The engine took at most one frame more than it could process: nothing queued.
    assert status.frames_out - start.frames_out <= pushed


def test_a_glide_reaches_the_new_prompt(make_tiny_backend: Callable[..., Any]) -> None:
    memory.reset()
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        backend=make_tiny_backend(),
        controls=ControlStore(
            Controls(smoothing=0.0, feedback=0.0, prompt_glide=0.3, seed_glide=0.3)
        ),
    )
    with engine:
        picture = _picture(6)
        before = _settled_output(picture).astype(int)
        engine.controls.handle_osc("/prompt", ("glide target",))
        outputs = [_settled_output(picture, frames=1).astype(int) for _ in range(3)]
        time.sleep(0.4)
        final = _settled_output(picture).astype(int)
    engine.source.close()
    engine.sink.close()
    assert np.abs(final - before).mean() > 0.1
    # The glide passes through in-between pictures, not a jump from before to final.
    between = [o for o in outputs if np.abs(o - before).mean() > 0 and np.abs(o - final).mean() > 0]
    assert between
    memory.reset()


def _first_output_after(picture: np.ndarray) -> np.ndarray:
    """The output of the first frame of ``picture``: nothing else in flight or waiting."""
    time.sleep(0.3)  # an in-flight frame finishes; a waiting one is replaced by the push
    return _next_output(picture, after=memory.channel("out").published_count)


def test_prompt_morph_crossfades_two_prompts(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(7)
    store = engine.controls
    only_a = _settled_output(picture).astype(int)
    store.update(prompt_b="a completely different prompt")
    assert np.array_equal(_settled_output(picture).astype(int), only_a)  # mix 0 shows A
    store.update(prompt_mix=1.0)
    all_b = _settled_output(picture).astype(int)
    store.update(prompt_mix=0.5)
    half = _settled_output(picture).astype(int)
    store.update(prompt="a completely different prompt", prompt_b="", prompt_mix=1.0)
    b_as_a = _settled_output(picture).astype(int)
    assert np.abs(all_b - only_a).mean() > 0.2
    # mix 1 is exactly prompt B (as if it were prompt A); the empty B leaves A alone
    assert np.abs(all_b - b_as_a).max() <= 1
    assert np.abs(half - only_a).mean() > 0.02 and np.abs(half - all_b).mean() > 0.02


def test_glide_ramps_numeric_values_over_the_set_time(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(8)
    store = engine.controls
    start = _settled_output(picture).astype(int)
    store.update(glide=1.5)
    began = time.monotonic()
    store.update(strength=0.2)
    during = []
    while time.monotonic() - began < 1.0:
        during.append(_settled_output(picture, frames=1).astype(int))
    time.sleep(max(0.0, 1.6 - (time.monotonic() - began)))
    end = _settled_output(picture).astype(int)
    assert np.abs(end - start).mean() > 0.5
    distances = [float(np.abs(frame - end).mean()) for frame in during]
    # in between for the whole first second, not a jump to the end
    assert all(distance > 0.05 for distance in distances), distances
    assert any(float(np.abs(frame - start).mean()) > 0.05 for frame in during)


def test_a_recall_glides_even_when_glide_is_zero(running: Callable[..., Engine]) -> None:
    engine = running()
    picture = _picture(9)
    start = _settled_output(picture).astype(int)
    engine.controls.update(ramp_seconds=1.5, strength=0.2)
    _settled_output(picture, frames=1)  # the ramp starts at the first frame after the change
    time.sleep(0.4)
    soon = _settled_output(picture, frames=1).astype(int)
    time.sleep(1.2)
    end = _settled_output(picture).astype(int)
    assert np.abs(soon - end).mean() > 0.05 and np.abs(soon - start).mean() > 0.05


def test_reset_forgets_feedback_and_smoothing(running: Callable[..., Engine]) -> None:
    engine = running(Controls(feedback=0.6, smoothing=0.8, prompt_glide=0.0, seed_glide=0.0))
    first, second = _picture(10), _picture(11)

    def after_history(reset: bool) -> np.ndarray:
        _settled_output(first, frames=4)
        if reset:
            engine.controls.request_reset()
        return _first_output_after(second).astype(int)

    with_reset = after_history(True)
    again = after_history(True)
    without = after_history(False)
    assert np.array_equal(with_reset, again)  # history no longer matters
    assert np.abs(without - with_reset).mean() > 0.5  # without a reset it does


def test_skip_similar_republishes_a_still_input_and_wakes_on_change(
    running: Callable[..., Engine],
) -> None:
    from livediffusion.run.similarity import SETTLE_FRAMES

    engine = running(skip_similar=0.01)
    still = _picture(3)
    outputs = [_next_output(still, after=i) for i in range(SETTLE_FRAMES + 12)]
    assert engine.skipped >= 5  # the model stopped running on the still picture
    assert engine.stats.steps < engine.stats.frames_out
    assert np.array_equal(outputs[-1], outputs[-2])  # and the settled output was republished
    steps = engine.stats.steps
    moved = _settled_output(_picture(4))  # a new picture runs the model again at once
    assert engine.stats.steps > steps
    assert not np.array_equal(moved, outputs[-1])
    steps = engine.stats.steps
    engine.controls.update(strength=0.5)  # so does a control change on the same picture
    _settled_output(_picture(4))
    assert engine.stats.steps > steps


def test_skip_similar_off_runs_the_model_on_every_frame(running: Callable[..., Engine]) -> None:
    engine = running()
    still = _picture(3)
    for i in range(15):
        _next_output(still, after=i)
    assert engine.skipped == 0
    assert engine.stats.steps >= 15
