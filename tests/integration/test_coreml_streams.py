"""Several streams through one Core ML backend, on a stubbed Mac (tests/coremlpython_stub.py).

The programs are converted for batch 1, so the backend runs them once per stream with a frame,
each stream on its own row of StepInputs, its own feed, framing and Core ML state. Whatever
the other streams do (other prompts, seeds, controls, input sizes, waiting, failing), every
stream must get exactly what a backend of its own gives it: the stub computes each prediction
with the torch module the program came from, so equal inputs give bit-equal pictures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from livediffusion_models.backends import FrameParams
from livediffusion_models.backends.base import Pixels
from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions
from livediffusion_models.coreml import CoreMLSettings
from livediffusion_models.coreml.runtime import load_programs
from livediffusion_models.errors import NonFiniteFrameError
from tinymodel import TINY_SIZE, make_tiny_components

pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = pytest.mark.integration

SIZE = (TINY_SIZE, TINY_SIZE)
PROMPTS = ("a red fox in snow", "neon jellyfish", "a brutalist tower at dusk")
SEEDS = (1, 42, 7)
PARAMS = (
    FrameParams(strength=1.0, feedback=0.3, smoothing=0.4, blend=0.0),
    FrameParams(strength=0.6, feedback=0.6, smoothing=0.7, blend=0.2),
    FrameParams(strength=0.9, feedback=0.5, smoothing=0.0, blend=0.5),
)
SIZES = ((64, 64), (48, 80), (90, 60))  # (height, width) per stream: each its own framing
STATE_NAMES = ("previous_x0", "previous_output")


def picture(seed: int, height: int, width: int) -> Pixels:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


Maker = Callable[..., CoreMLBackend]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from torch's intra-op threads, and on a shared 2-core machine
    they wait for each other: a 32-wide linear took 2.2 ms on two threads, 0.1 ms on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def backends(converted_for: Callable[..., Any], coreml_mac: Any) -> Callable[[str, str], Maker]:
    """``backends(variant, target)`` -> ``make(streams, **options)``: backends sharing one
    model and one set of programs loaded through coremltools (as one ``serve`` would hold)."""

    def for_setting(variant: str, target: str) -> Maker:
        components = make_tiny_components()  # what converted_for converted
        converted = converted_for(variant, target)
        coreml_mac.register_converted(converted, components)
        settings = CoreMLSettings(variant=variant, target=target)  # type: ignore[arg-type]
        programs = load_programs(converted, settings=settings)

        def make(streams: int, **options: Any) -> CoreMLBackend:
            return CoreMLBackend(
                components=components,
                converted=converted,
                programs=programs,
                options=CoreMLOptions(size=SIZE, coreml=settings, streams=streams, **options),
            )

        return make

    return for_setting


def setup_streams(batched: CoreMLBackend, singles: Sequence[CoreMLBackend]) -> None:
    for stream, single in enumerate(singles):
        embedding = batched.encode_prompt(PROMPTS[stream])
        batched.set_prompt(embedding, stream=stream)
        batched.set_seed(SEEDS[stream], stream=stream)
        single.set_prompt(embedding)
        single.set_seed(SEEDS[stream])


def state_of(backend: CoreMLBackend, stream: int) -> dict[str, np.ndarray]:
    """A stream's temporal state wherever it lives: the Core ML state, or the feed's rows."""
    row = backend._streams[stream]
    if backend.stateful:
        return {name: row.state.read_state(name) for name in STATE_NAMES}
    return {
        "previous_x0": row.previous_x0.numpy().copy(),
        "previous_output": row.previous_output.numpy().copy(),
    }


@pytest.mark.parametrize(
    ("variant", "target"), [("fused", "macOS14"), ("fused", "macOS15"), ("stages", "macOS14")]
)
def test_n_streams_equal_n_backends_of_one_stream_frame_for_frame(
    backends: Callable[[str, str], Maker],
    coreml_mac: Any,
    monkeypatch: pytest.MonkeyPatch,
    variant: str,
    target: str,
) -> None:
    from livediffusion_models.imaging import plan_geometry

    make = backends(variant, target)
    batched = make(3, fit="letterbox")
    singles = [make(1, fit="letterbox") for _ in range(3)]
    assert batched.streams == 3 and batched.stateful == (target == "macOS15")
    setup_streams(batched, singles)
    plans: list[tuple[int, int]] = []

    def plan(input_size: tuple[int, int], *args: Any, **kwargs: Any) -> Any:
        plans.append(input_size)
        return plan_geometry(input_size, *args, **kwargs)

    monkeypatch.setattr("livediffusion_models.backends.coreml_backend.plan_geometry", plan)
    untouched = np.full((*SIZES[1], 4), 7, dtype=np.uint8)
    programs = list(batched.converted.programs.values())
    for frame in range(4):
        pixels: list[Pixels | None] = [picture(10 * frame + k, *SIZES[k]) for k in range(3)]
        if frame == 2:
            pixels[1] = None  # stream 1 (feedback and smoothing on) waits this frame
        outs = [np.zeros((*size, 4), np.uint8) for size in SIZES]
        outs[1] = untouched.copy()
        params = [PARAMS[k] if pixels[k] is not None else None for k in range(3)]
        before = [coreml_mac.predictions(p.compiled) for p in programs]
        assert batched.step_many(pixels, params, out=outs) == [None, None, None]
        ran = sum(p is not None for p in pixels)  # one batch-1 prediction per stream with a frame
        assert [coreml_mac.predictions(p.compiled) for p in programs] == [b + ran for b in before]
        for k, single in enumerate(singles):
            frame_k = pixels[k]
            if frame_k is None:
                assert np.array_equal(outs[k], untouched), "a waiting stream's out was written"
            else:
                alone = np.zeros_like(outs[k])
                single.step(frame_k, PARAMS[k], out=alone)
                assert np.array_equal(outs[k], alone), (frame, k)
            # the temporal state itself, far more sensitive than 8-bit pictures: exact
            mine, own = state_of(batched, k), state_of(single, 0)
            for name in STATE_NAMES:
                assert np.array_equal(mine[name], own[name]), (frame, k, name)
    # and the streams really differ from each other (not one picture three times)
    assert not np.array_equal(outs[0][:48, :60], outs[2][:48, :60])
    # every stream framed its size once (its own letterbox), not once a frame (singles too)
    assert sorted(plans) == sorted(SIZES * 2)
    if batched.stateful:  # each stream its own Core ML state, made once
        assert len({id(row.state) for row in batched._streams}) == 3
        assert len(coreml_mac.of_kind("new_state")) == 3 + 3  # batched + singles


def test_a_change_on_one_stream_never_shows_on_another(
    backends: Callable[[str, str], Maker], coreml_mac: Any
) -> None:
    make = backends("fused", "macOS14")  # the feed path: state in numpy rows
    changed, same = make(2), make(2)
    embeddings = [changed.encode_prompt(prompt) for prompt in PROMPTS[:2]]
    for backend in (changed, same):
        for stream in range(2):
            backend.set_prompt(embeddings[stream], stream=stream)
            backend.set_seed(SEEDS[stream], stream=stream)
    outs = {id(b): [np.zeros((*SIZE, 4), np.uint8) for _ in range(2)] for b in (changed, same)}
    other = changed.encode_prompt("a completely different look")
    for frame in range(3):
        pixels = [picture(frame, *SIZE), picture(50 + frame, *SIZE)]
        if frame == 1:  # stream 1 of one backend: new seed, new prompt, reset, other controls
            changed.set_seed(999, stream=1)
            changed.set_prompt(other, stream=1)
            changed.set_prompt(other, slot="b", stream=1)
            changed.reset(stream=1)
        for backend in (changed, same):
            moved = backend is changed and frame > 0
            second = FrameParams(strength=0.3, blend=0.9, morph=0.5) if moved else PARAMS[1]
            assert backend.step_many(pixels, [PARAMS[0], second], out=outs[id(backend)]) == [
                None,
                None,
            ]
        assert np.array_equal(outs[id(changed)][0], outs[id(same)][0]), frame
        mine, theirs = state_of(changed, 0), state_of(same, 0)
        assert all(np.array_equal(mine[n], theirs[n]) for n in STATE_NAMES), frame
    assert not np.array_equal(outs[id(changed)][1], outs[id(same)][1])
    # what Core ML was fed for stream 0 is stream 0's own prompt and seed, never stream 1's
    feed = changed._streams[0].feed
    np.testing.assert_array_equal(feed["embeds_to"], embeddings[0].numpy())
    assert feed["noise_to"] is not changed._streams[1].feed["noise_to"]


def test_nan_on_one_stream_fails_and_clears_that_stream_only(
    backends: Callable[[str, str], Maker], coreml_mac: Any
) -> None:
    make = backends("fused", "macOS15")
    batched = make(2)
    setup_streams(batched, [make(1), make(1)])
    params = [FrameParams(feedback=0.5, smoothing=0.5)] * 2
    pixels = [picture(1, *SIZE), picture(2, *SIZE)]
    outs = [np.zeros((*SIZE, 4), np.uint8) for _ in range(2)]
    assert batched.step_many(pixels, params, out=outs) == [None, None]
    states = [row.state for row in batched._streams]
    kept = state_of(batched, 0)
    shown = outs[1].copy()
    poisoned = batched.inputs.embeds_to[1:2].clone()
    with torch.inference_mode():
        batched.inputs.embeds_to[1].fill_(float("nan"))
        batched.inputs.embeds_from[1].fill_(float("nan"))
    errors = batched.step_many(pixels, params, out=outs)
    assert errors[0] is None
    assert isinstance(errors[1], NonFiniteFrameError)
    assert np.array_equal(outs[1], shown)  # the NaN frame was not shown
    assert batched._streams[0].state is states[0]  # stream 0 kept its state and moved on
    assert not np.array_equal(state_of(batched, 0)["previous_x0"], kept["previous_x0"])
    assert batched._streams[1].state is not states[1]  # stream 1 starts from a new one
    assert all(not value.any() for value in state_of(batched, 1).values())
    assert batched.inputs.fresh == [False, True]
    # after the prompt is back, stream 1 runs a clean first frame
    with torch.inference_mode():
        batched.inputs.embeds_to[1:2].copy_(poisoned)
        batched.inputs.embeds_from[1:2].copy_(poisoned)
    assert batched.step_many(pixels, params, out=outs) == [None, None]
    fresh = make(1)
    fresh.set_prompt(poisoned)
    fresh.set_seed(SEEDS[1])
    first = np.zeros_like(outs[1])
    fresh.step(pixels[1], params[1], out=first)
    assert np.array_equal(outs[1], first)


def test_a_bad_picture_fails_its_stream_alone_and_changes_nothing(
    backends: Callable[[str, str], Maker], coreml_mac: Any
) -> None:
    """A picture that cannot be framed is that stream's error only: its state, reset flag and
    letterbox stay as they were, so its next good frame is what it would have been."""
    make = backends("fused", "macOS15")
    batched, alone = make(2, fit="letterbox"), make(1, fit="letterbox")
    setup_streams(batched, [alone, make(1)])
    params = [FrameParams(feedback=0.5, smoothing=0.5)] * 2
    outs = [np.zeros((*SIZE, 4), np.uint8) for _ in range(2)]
    good = [picture(3, *SIZE), picture(4, *SIZE)]
    assert batched.step_many(good, params, out=outs) == [None, None]
    alone.step(good[0], params[0], out=np.zeros_like(good[0]))
    kept = state_of(batched, 0)
    # framed for 48x80 (a new letterbox), then refused: grey, not RGBA
    grey = np.zeros((48, 80), dtype=np.uint8)
    wide_out = np.zeros((48, 80, 4), np.uint8)
    errors = batched.step_many([grey, good[1]], params, out=[wide_out, outs[1]])
    assert isinstance(errors[0], IndexError) and errors[1] is None
    assert all(np.array_equal(state_of(batched, 0)[n], kept[n]) for n in STATE_NAMES)
    assert batched.inputs.fresh == [False, False]  # nothing cleared: stream 0 simply waited
    wide = picture(5, 48, 80)
    assert batched.step_many([wide, good[1]], params, out=[wide_out, outs[1]]) == [None, None]
    want = np.zeros_like(wide_out)
    alone.step(wide, params[0], out=want)
    assert np.array_equal(wide_out, want)  # its letterbox painted, its state carried on
    mine, own = state_of(batched, 0), state_of(alone, 0)  # (the padding shows in the latents)
    assert all(np.array_equal(mine[n], own[n]) for n in STATE_NAMES)
    empty = np.zeros((0, 64, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="sizes must be positive"):
        batched.step(empty, params[0], out=outs[0])  # one stream's step raises it


def test_passthrough_and_calls_name_their_own_stream(
    backends: Callable[[str, str], Maker], coreml_mac: Any
) -> None:
    make = backends("fused", "macOS14")
    batched, alone = make(2, fit="letterbox"), make(1, fit="letterbox")
    wide, tall = picture(5, 32, 64), picture(6, 64, 32)
    got, want = np.zeros_like(wide), np.zeros_like(wide)
    batched.passthrough(tall, out=np.zeros_like(tall), stream=0)
    batched.passthrough(wide, out=got, stream=1)
    alone.passthrough(wide, out=want)
    assert np.array_equal(got, want)
    assert batched._streams[0].geometry is not None
    assert batched._streams[0].geometry.input_size == (64, 32)  # stream 1 left it alone
    assert coreml_mac.of_kind("predict") == []
    with pytest.raises(IndexError, match="stream 2 does not exist"):
        batched.passthrough(wide, out=got, stream=2)
    with pytest.raises(IndexError, match="stream 2 does not exist"):
        batched.set_seed(3, stream=2)
    with pytest.raises(ValueError, match="wants 2 entries"):
        batched.step_many([wide], [FrameParams()], out=[got])
    with pytest.raises(IndexError, match="stream -1 does not exist"):
        batched.passthrough(wide, out=got, stream=-1)
