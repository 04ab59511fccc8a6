"""Several streams through one batched step: each stream keeps its own controls and state.

The batched backend must give every stream exactly what a backend of its own would give it,
frame for frame, whatever the other streams do (other prompts, seeds, controls, sizes, a
stream that waits, a stream whose picture goes NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from livediffusion_models import get_model
from livediffusion_models.backends.base import FrameParams, Pixels
from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions, resolve_device
from livediffusion_models.errors import NonFiniteFrameError
from livediffusion_models.weights import TINY, LoadedModel, load_model

SIZE = 64
ATOL = 2  # uint8 levels: a batched convolution may sum in another order than a single one


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(get_model("sdxs-512-0.9"), TINY, progress=False)


def backend(tiny: LoadedModel, streams: int, *, fit: str = "crop") -> TorchBackend:
    return TorchBackend.from_components(
        tiny,
        TorchOptions(size=(SIZE, SIZE), streams=streams, fit=fit),  # type: ignore[arg-type]
    )


def picture(seed: int, height: int, width: int) -> Pixels:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 4), dtype=np.uint8)


PROMPTS = ("a red fox in snow", "neon jellyfish", "a brutalist tower at dusk")
SEEDS = (1, 42, 7)
PARAMS = (
    FrameParams(strength=1.0, feedback=0.3, smoothing=0.4, blend=0.0),
    FrameParams(strength=0.6, feedback=0.0, smoothing=0.7, blend=0.2),
    FrameParams(strength=0.9, feedback=0.5, smoothing=0.0, blend=0.5),
)
SIZES = ((64, 64), (48, 80), (90, 60))  # (height, width) per stream: each its own crop


def setup_streams(batched: TorchBackend, singles: Sequence[TorchBackend]) -> None:
    for stream in range(len(singles)):
        prompt, seed = PROMPTS[stream], SEEDS[stream]
        embedding = batched.encode_prompt(prompt)
        batched.set_prompt(embedding, stream=stream)
        batched.set_seed(seed, stream=stream)
        singles[stream].set_prompt(embedding)
        singles[stream].set_seed(seed)


def test_the_batched_step_equals_one_backend_per_stream_frame_for_frame(
    tiny: LoadedModel,
) -> None:
    batched = backend(tiny, 3)
    singles = [backend(tiny, 1) for _ in range(3)]
    setup_streams(batched, singles)
    for frame in range(4):
        pixels = [picture(10 * frame + k, *SIZES[k]) for k in range(3)]
        outs = [np.zeros_like(p) for p in pixels]
        errors = batched.step_many(pixels, PARAMS, out=outs)
        assert errors == [None, None, None]
        for k in range(3):
            alone = np.zeros_like(pixels[k])
            singles[k].step(pixels[k], PARAMS[k], out=alone)
            difference = np.abs(outs[k].astype(int) - alone.astype(int)).max()
            assert difference <= ATOL, (frame, k, difference)
    # and the streams really differ from each other (not one picture three times)
    assert not np.array_equal(outs[0][:48, :64], outs[1][:48, :64])


def test_a_waiting_stream_keeps_its_state_and_its_output_buffer(tiny: LoadedModel) -> None:
    batched = backend(tiny, 2)
    singles = [backend(tiny, 1) for _ in range(2)]
    setup_streams(batched, singles)
    untouched = np.full((SIZE, SIZE, 4), 7, dtype=np.uint8)
    # stream 1 (with feedback and smoothing) waits at frames 2 and 3; stream 0 runs every frame
    looks = (PARAMS[0], PARAMS[2])
    for frame in range(5):
        pixels: list[Pixels | None] = [picture(frame, SIZE, SIZE), picture(100 + frame, 64, 64)]
        if frame in (2, 3):
            pixels[1] = None
        outs = [np.zeros((SIZE, SIZE, 4), np.uint8), untouched.copy()]
        params: list[FrameParams | None] = [looks[0], looks[1] if pixels[1] is not None else None]
        assert batched.step_many(pixels, params, out=outs) == [None, None]
        for k in range(2):
            frame_k = pixels[k]
            if frame_k is None:
                assert np.array_equal(outs[k], untouched), "a waiting stream's out was written"
            else:
                alone = np.zeros((SIZE, SIZE, 4), np.uint8)
                singles[k].step(frame_k, looks[k], out=alone)
                assert np.abs(outs[k].astype(int) - alone.astype(int)).max() <= ATOL, (frame, k)
            # the temporal state itself, far more sensitive than 8-bit pictures
            for state in ("previous_x0", "previous_output"):
                mine = getattr(batched.inputs, state)[k]
                own = getattr(singles[k].inputs, state)[0]
                assert torch.allclose(mine, own, atol=1e-4), (frame, k, state)


def test_a_change_on_one_stream_never_shows_on_another(tiny: LoadedModel) -> None:
    changed, same = backend(tiny, 2), backend(tiny, 2)
    for b in (changed, same):
        for stream in range(2):
            b.set_prompt(b.encode_prompt(PROMPTS[stream]), stream=stream)
            b.set_seed(SEEDS[stream], stream=stream)
    outs = {id(b): [np.zeros((SIZE, SIZE, 4), np.uint8) for _ in range(2)] for b in (changed, same)}
    for frame in range(3):
        pixels = [picture(frame, SIZE, SIZE), picture(50 + frame, SIZE, SIZE)]
        if frame == 1:  # stream 1 of one backend: new seed, new prompt, reset, other controls
            changed.set_seed(999, stream=1)
            changed.set_prompt(changed.encode_prompt("a completely different look"), stream=1)
            changed.reset(stream=1)
        params_1 = PARAMS[1] if frame == 0 else FrameParams(strength=0.3, blend=0.9)
        for b in (changed, same):
            p1 = params_1 if b is changed else PARAMS[1]
            b.step_many(pixels, [PARAMS[0], p1], out=outs[id(b)])
        assert np.array_equal(outs[id(changed)][0], outs[id(same)][0]), frame
    assert not np.array_equal(outs[id(changed)][1], outs[id(same)][1])


def test_nan_in_one_stream_fails_and_clears_that_stream_only(tiny: LoadedModel) -> None:
    batched = backend(tiny, 2)
    for stream in range(2):
        batched.set_prompt(batched.encode_prompt(PROMPTS[stream]), stream=stream)
    pixels = [picture(1, SIZE, SIZE), picture(2, SIZE, SIZE)]
    outs = [np.zeros((SIZE, SIZE, 4), np.uint8) for _ in range(2)]
    assert batched.step_many(pixels, [PARAMS[0]] * 2, out=outs) == [None, None]
    good_state = batched.inputs.previous_x0[0].clone()
    with torch.inference_mode():
        batched.inputs.embeds_to[1].fill_(float("nan"))
        batched.inputs.embeds_from[1].fill_(float("nan"))
    errors = batched.step_many(pixels, [PARAMS[0]] * 2, out=outs)
    assert errors[0] is None
    assert isinstance(errors[1], NonFiniteFrameError)
    assert torch.count_nonzero(batched.inputs.previous_x0[1]) == 0  # stream 1 cleared
    assert batched.inputs.fresh == [False, True]
    assert torch.isfinite(batched.inputs.previous_x0[0]).all()
    assert not torch.equal(batched.inputs.previous_x0[0], good_state)  # stream 0 moved on


def test_step_many_with_every_stream_waiting_runs_nothing(tiny: LoadedModel) -> None:
    batched = backend(tiny, 2)
    for stream in range(2):
        batched.set_prompt(batched.encode_prompt(PROMPTS[stream]), stream=stream)
    before = batched.inputs.previous_x0.clone()
    assert batched.step_many([None, None], [None, None], out=[None, None]) == [None, None]
    assert torch.equal(batched.inputs.previous_x0, before)
    assert batched.inputs.fresh == [True, True]


def test_a_stream_index_out_of_range_is_refused(tiny: LoadedModel) -> None:
    batched = backend(tiny, 2)
    with pytest.raises(IndexError, match="stream 2 does not exist"):
        batched.set_seed(1, stream=2)
    with pytest.raises(ValueError, match="wants 2 entries"):
        batched.step_many([None], [None], out=[None])


def test_cuda_n_is_parsed_and_checked() -> None:
    for bad in ("cuda:x", "cpu:1", "gpu", "cuda:-1"):
        with pytest.raises(ValueError, match="cuda:N"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    else:
        count = torch.cuda.device_count()
        assert resolve_device(f"cuda:{count - 1}") == torch.device(f"cuda:{count - 1}")
        with pytest.raises(RuntimeError, match=f"sees {count}"):
            resolve_device(f"cuda:{count}")


def test_half_precision_stays_half_precision_through_the_batched_step(tiny: LoadedModel) -> None:
    """The float32 controls must not promote a half-precision model's activations (the UNet
    would then meet float32 inputs with half weights, as it did on the first GPU run)."""
    import copy

    from livediffusion_models.step import NUM_CONTROLS, FrameStep

    step = FrameStep(copy.deepcopy(tiny.unet).to(torch.bfloat16), copy.deepcopy(tiny.vae))
    step.vae.to(torch.bfloat16)
    controls = torch.zeros(2, NUM_CONTROLS)
    controls[:, :3] = torch.tensor([999.0, 0.068, 0.997])
    controls[:, -1] = 1.0
    generator = torch.Generator().manual_seed(0)

    def like(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(torch.bfloat16)

    embed = tiny.text_encoder.config.hidden_size
    with torch.inference_mode():
        results = step(
            like(2, 3, SIZE, SIZE),
            like(2, 4, SIZE // 8, SIZE // 8),
            like(2, 4, SIZE // 8, SIZE // 8),
            like(2, 77, embed),
            like(2, 77, embed),
            like(2, 4, SIZE // 8, SIZE // 8),
            like(2, 3, SIZE, SIZE),
            controls,
        )
    assert [r.dtype for r in results] == [torch.bfloat16] * 3
