"""The Core ML backend through coremltools' real Python, on a stubbed Mac.

The programs are really converted (coremltools, tiny model), compiled through coremltools'
``compile_model`` and loaded as its ``CompiledMLModel``, with ``predict``, ``make_state`` and
the optimization-hint checks all coremltools' own code. Only the native module under it is
the stub of tests/coremlpython_stub.py, which behaves as coremltools' Objective-C++ does (the
compiled folder Core ML returns, float32 outputs for fp16 programs, states, its errors) and
computes with the torch module each program came from. So these tests check everything the
backend does around Core ML (feeds, states, the stages' glue through FrameStep, pre/post-
processing) against the torch backend; Core ML's numerics are checked on a Mac (tests/macos).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livediffusion_models.backends import FrameParams
from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions
from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
from livediffusion_models.coreml import (
    CoreMLSettings,
    CoreMLUnavailableError,
    Target,
    Variant,
)
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.compare import compare_converted
from livediffusion_models.coreml.programs import build_programs
from livediffusion_models.coreml.runtime import load_programs
from tinymodel import TINY_SIZE, make_tiny_components, make_tiny_family

pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = pytest.mark.integration

SIZE = (TINY_SIZE, TINY_SIZE)
SETTINGS = [("fused", "macOS14"), ("fused", "macOS15"), ("stages", "macOS14")]


def _picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


@pytest.fixture
def make_backend(
    converted_for: Callable[..., ConvertedModel], coreml_mac: Any
) -> Callable[..., tuple[CoreMLBackend, Any]]:
    """A CoreMLBackend over programs compiled and loaded by coremltools on the stubbed Mac."""

    def make(variant: Variant, target: Target, **options: Any) -> tuple[CoreMLBackend, Any]:
        components = make_tiny_components()  # what converted_for converted
        converted = converted_for(variant, target)
        coreml_mac.register_converted(converted, components)
        settings = CoreMLSettings(variant=variant, target=target)
        backend = CoreMLBackend(
            components=components,
            converted=converted,
            programs=load_programs(converted, settings=settings),
            options=CoreMLOptions(size=SIZE, coreml=settings, **options),
        )
        return backend, components

    return make


@pytest.mark.parametrize(("variant", "target"), SETTINGS)
def test_core_ml_backend_matches_the_torch_backend_frame_after_frame(
    make_backend: Callable[..., Any], coreml_mac: Any, variant: Variant, target: Target
) -> None:
    coreml, components = make_backend(variant, target, seed=3)
    torch_backend = TorchBackend.from_components(
        components, TorchOptions(size=SIZE, device="cpu", seed=3)
    )
    assert coreml.stateful == (target == "macOS15" and variant == "fused")
    embedding = torch_backend.encode_prompt("a crystal cave")
    for backend in (coreml, torch_backend):
        backend.set_prompt(embedding)
    params = FrameParams(strength=0.8, feedback=0.3, smoothing=0.4, blend=0.1)
    for frame in range(4):
        picture = _picture(72, 96, seed=frame)  # a new picture each frame: none may go stale
        got = np.zeros_like(picture)
        want = np.zeros_like(picture)
        coreml.step(picture, params, out=got)
        torch_backend.step(picture, params, out=want)
        # fp16 program outputs (and fp16 states) against float32 torch
        difference = np.abs(got.astype(int) - want.astype(int))
        assert difference.mean() < 1.5, (frame, difference.mean())
        assert difference.max() <= 12, (frame, difference.max())
        assert np.all(got[..., 3] == 255)
    assert got[..., :3].std() > 0
    # every frame went through Core ML's predict, the stateful one with its own MLState
    compiled = [p.compiled for p in coreml.converted.programs.values()]
    assert all(coreml_mac.predictions(path) == 4 for path in compiled)
    assert len(coreml_mac.of_kind("new_state")) == (1 if coreml.stateful else 0)


def test_a_reset_frame_ignores_the_state_the_last_scene_left(
    make_backend: Callable[..., Any],
) -> None:
    """Core ML keeps the state across a reset (it is zeroed only when made): the first frame
    after one must come out as a first frame does, however strong feedback and smoothing are."""
    params = FrameParams(feedback=0.9, smoothing=0.9)
    used, _ = make_backend("fused", "macOS15", seed=5)
    fresh, _ = make_backend("fused", "macOS15", seed=5)
    embedding = used.encode_prompt("fog")
    for backend in (used, fresh):
        backend.set_prompt(embedding)
    out = np.zeros((64, 64, 4), dtype=np.uint8)
    for seed in range(3):
        used.step(_picture(64, 64, seed=seed), params, out=out)
    used.reset()
    after_reset = np.zeros_like(out)
    first = np.zeros_like(out)
    used.step(_picture(64, 64, seed=9), params, out=after_reset)
    fresh.step(_picture(64, 64, seed=9), params, out=first)
    np.testing.assert_array_equal(after_reset, first)
    used.step(_picture(64, 64, seed=9), params, out=out)
    assert np.abs(out.astype(int) - first.astype(int)).mean() > 0  # the state counts again


def test_every_frame_feeds_core_ml_its_current_inputs_through_one_reused_feed(
    make_backend: Callable[..., Any], coreml_mac: Any
) -> None:
    """The feed is built once from views of the step's buffers. coremltools replaces a float16
    array in the caller's dict by a float32 copy (``_update_float16_multiarray_input_to_float32``),
    so a feed of anything but float32 views would silently keep feeding Core ML the first
    frame's values: what Core ML receives is checked against the buffers every frame."""
    backend, _ = make_backend("fused", "macOS14")
    backend.set_prompt(backend.encode_prompt("rain"))
    feed = backend._streams[0].feed
    arrays = {name: id(array) for name, array in feed.items()}
    out = np.zeros((64, 64, 4), dtype=np.uint8)
    for seed, feedback in ((0, 0.2), (1, 0.5), (2, 0.8)):
        backend.set_seed(seed + 10)  # new noise every frame, written into the same buffers
        backend.step(_picture(64, 64, seed), FrameParams(feedback=feedback), out=out)
        received = coreml_mac.of_kind("predict")[-1].detail["inputs"]
        current = {
            "image": backend._streams[0].image,
            "controls": backend.inputs.controls,
            "noise_to": backend.inputs.noise_to,
            "embeds_to": backend.inputs.embeds_to,
        }  # (previous_x0 already holds this frame's x0, for the next)
        for name, tensor in current.items():
            np.testing.assert_array_equal(received[name], tensor.numpy(), err_msg=name)
    assert backend._streams[0].feed is feed
    assert {name: id(array) for name, array in feed.items()} == arrays


def test_a_new_prompt_and_seed_reach_the_program(make_backend: Callable[..., Any]) -> None:
    import torch

    backend, _ = make_backend("fused", "macOS15")
    picture = _picture(64, 64)
    outputs = []
    for prompt, seed in (("ice", 0), ("a completely different prompt", 0), ("fire", 9)):
        embedding = backend.encode_prompt(prompt)
        backend.set_prompt(embedding)
        backend.set_seed(seed)
        backend.reset()
        out = np.zeros_like(picture)
        backend.step(picture, FrameParams(), out=out)
        # what the program was fed is the new embedding and the seed's noise, in place
        np.testing.assert_array_equal(backend._streams[0].feed["embeds_to"], embedding.numpy())
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(backend._streams[0].feed["noise_to"], noise.numpy())
        outputs.append(out.astype(int))
    # (a tiny random text encoder moves the picture only a little; the seed moves it a lot)
    assert np.abs(outputs[0] - outputs[1]).mean() > 0.05
    assert np.abs(outputs[1] - outputs[2]).mean() > 0.5


@pytest.mark.parametrize(("variant", "target"), SETTINGS)
def test_stage_timers_name_the_programs_and_run(
    make_backend: Callable[..., Any], coreml_mac: Any, variant: Variant, target: Target
) -> None:
    backend, _ = make_backend(variant, target)
    backend.set_prompt(backend.encode_prompt("dust"))
    with pytest.raises(RuntimeError):
        backend.stage_timers()
    backend.step(_picture(64, 64), FrameParams(), out=np.zeros((64, 64, 4), dtype=np.uint8))
    timers = backend.stage_timers()
    model_stages = ["step"] if variant == "fused" else ["encode", "unet", "decode"]
    assert list(timers) == ["pre", *model_stages, "post", "frame"]
    compiled = {name: p.compiled for name, p in backend.converted.programs.items()}
    calls = {name: coreml_mac.predictions(path) for name, path in compiled.items()}
    for timer in timers.values():
        timer()
    for name, path in compiled.items():
        assert coreml_mac.predictions(path) >= calls[name] + 2  # its own stage and the frame


def test_passthrough_frames_the_input_without_the_model(
    make_backend: Callable[..., Any], coreml_mac: Any
) -> None:
    backend, _ = make_backend("fused", "macOS14", fit="letterbox")
    picture = _picture(32, 64)
    out = np.zeros_like(picture)
    backend.passthrough(picture, out=out)
    assert np.abs(out.astype(int) - picture.astype(int)).mean() < 8
    assert coreml_mac.of_kind("predict") == []


def test_compare_reports_psnr_per_program(
    make_backend: Callable[..., Any], coreml_mac: Any
) -> None:
    """compare_converted (what doctor runs on a Mac): high through the stub, and it notices
    a program that computes the wrong thing."""
    for variant, target in (("stages", "macOS14"), ("fused", "macOS15")):
        backend, components = make_backend(variant, target)
        scores = compare_converted(components, backend.converted, backend._programs)
        expected = ["encoder", "unet", "decoder"] if variant == "stages" else ["fused"]
        assert list(scores) == expected
        assert min(scores.values()) > 35.0, scores
    backend, components = make_backend("stages", "macOS14")
    specs = build_programs(components.unet, components.vae, size=SIZE, tokens=77, variant="stages")
    decoder = next(spec for spec in specs if spec.name == "decoder")
    coreml_mac.register(backend.converted.programs["decoder"].package, _Negate(decoder.module))
    scores = compare_converted(components, backend.converted, backend._programs)
    assert scores["decoder"] < 10.0 < scores["encoder"]


class _Negate:
    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, *args: Any) -> Any:
        return -self.module(*args)


def test_optimization_hints_reach_core_ml_only_when_asked_and_on_macos_15(
    converted_for: Callable[..., ConvertedModel], coreml_mac: Any
) -> None:
    """coremltools validates the hints and refuses any below macOS 15 (even default values):
    none are sent unless asked for, and asked-for hints arrive as the native strings."""
    converted = converted_for("fused", "macOS14")
    load_programs(converted, settings=CoreMLSettings())
    hinted = CoreMLSettings(
        low_precision_accumulation=True, specialization="fast-prediction", compute_units="all"
    )
    load_programs(converted, settings=hinted)
    first, second = coreml_mac.of_kind("load")
    assert first.detail == {"compute_units": "CPU_AND_GPU", "hints": {}}
    assert second.detail == {
        "compute_units": "ALL",
        "hints": {
            "allowLowPrecisionAccumulationOnGPU": "True",
            "specializationStrategy": "FastPrediction",
        },
    }


def test_on_macos_14_hints_are_refused_in_one_sentence_and_defaults_still_load(
    converted_for: Callable[..., ConvertedModel], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from coremlpython_stub import install

    converted = converted_for("fused", "macOS14")
    world = install(monkeypatch, tmp_path, macos=(14, 6))
    programs = load_programs(converted, settings=CoreMLSettings())  # no hint: loads on 14
    assert list(programs) == ["step"]
    with pytest.raises(CoreMLUnavailableError, match="macOS 15") as info:
        load_programs(converted, settings=CoreMLSettings(specialization="fast-prediction"))
    assert "\n" not in str(info.value)
    assert [event.detail["hints"] for event in world.of_kind("load")] == [{}]


def test_from_components_refuses_off_macos_before_converting(tmp_path: Path) -> None:
    from livediffusion_models.coreml import runtime_available

    if runtime_available():
        pytest.skip("this machine has the Core ML runtime")
    with pytest.raises(CoreMLUnavailableError, match="macOS"):
        CoreMLBackend.from_components(
            make_tiny_family("sdxs-512-0.9"),  # type: ignore[arg-type]
            CoreMLOptions(size=SIZE, cache_dir=str(tmp_path)),
        )
    assert not any(tmp_path.iterdir())  # nothing was converted
