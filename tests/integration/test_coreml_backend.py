"""The Core ML backend's wiring, run here through a contract fake of the Core ML runtime.

The programs are really converted (coremltools, tiny model); only ``CompiledMLModel`` is the
fake from tests/coreml_fake.py, which enforces the runtime's interface and computes with the
torch module each program came from. So these tests check everything the backend does around
``predict`` (feeds, states, the stages' glue through FrameStep, pre/post-processing) against
the torch backend; Core ML's own numerics are checked on a Mac (tests/macos).
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
from livediffusion_models.coreml import CoreMLSettings, CoreMLUnavailableError, Target, Variant
from livediffusion_models.coreml.compare import compare_converted
from livediffusion_models.coreml.convert import convert
from livediffusion_models.coreml.programs import build_programs
from tinymodel import TINY_SIZE, make_tiny_family

pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")
from coreml_fake import FakeCompiledModel

pytestmark = pytest.mark.integration

SIZE = (TINY_SIZE, TINY_SIZE)
SETTINGS = [("fused", "macOS14"), ("fused", "macOS15"), ("stages", "macOS14")]


def _picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


@pytest.fixture(scope="module")
def make_backend(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    cache = tmp_path_factory.mktemp("coreml-backend-cache")

    def make(variant: Variant, target: Target, **options: Any) -> tuple[CoreMLBackend, Any]:
        components = make_tiny_family("sdxs-512-0.9")
        converted = convert(
            components,
            model="sdxs-512-0.9",
            fingerprint="tiny",
            size=SIZE,
            variant=variant,
            target=target,
            cache_dir=cache,
            progress=lambda message: None,
        )
        specs = build_programs(
            components.unet,
            components.vae,
            size=SIZE,
            tokens=77,
            variant=variant,
            stateful=converted.key.stateful,
        )
        programs = {
            spec.name: FakeCompiledModel(
                converted.programs[spec.name].package, spec.module, compute_units="CPU_AND_GPU"
            )
            for spec in specs
        }
        backend = CoreMLBackend(
            components=components,
            converted=converted,
            programs=programs,
            options=CoreMLOptions(
                size=SIZE, coreml=CoreMLSettings(variant=variant, target=target), **options
            ),
        )
        return backend, components

    return make


@pytest.mark.parametrize(("variant", "target"), SETTINGS)
def test_core_ml_backend_matches_the_torch_backend_frame_after_frame(
    make_backend: Callable[..., Any], variant: Variant, target: Target
) -> None:
    coreml, components = make_backend(variant, target, seed=3)
    torch_backend = TorchBackend.from_components(
        components, TorchOptions(size=SIZE, device="cpu", seed=3)
    )
    assert coreml.stateful == (target == "macOS15" and variant == "fused")
    embedding = torch_backend.encode_prompt("a crystal cave")
    for backend in (coreml, torch_backend):
        backend.set_prompt(embedding)
    picture = _picture(72, 96)
    params = FrameParams(strength=0.8, feedback=0.3, smoothing=0.4, blend=0.1)
    for frame in range(4):
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


def test_the_first_frame_never_reads_an_unwritten_state(make_backend: Callable[..., Any]) -> None:
    """The fake's fresh states are NaN; feedback and smoothing must not pick them up."""
    backend, _ = make_backend("fused", "macOS15")
    backend.set_prompt(backend.encode_prompt("fog"))
    out = np.zeros((64, 64, 4), dtype=np.uint8)
    backend.step(_picture(64, 64), FrameParams(feedback=0.9, smoothing=0.9), out=out)
    assert out[..., :3].std() > 0  # NaN would come out as a flat picture
    backend.reset()
    backend.step(_picture(64, 64, seed=1), FrameParams(feedback=0.9, smoothing=0.9), out=out)
    assert out[..., :3].std() > 0


def test_the_fused_feed_is_built_once_and_reused(make_backend: Callable[..., Any]) -> None:
    backend, _ = make_backend("fused", "macOS14")
    backend.set_prompt(backend.encode_prompt("rain"))
    feed = backend._feed
    arrays = {name: id(array) for name, array in feed.items()}
    out = np.zeros((64, 64, 4), dtype=np.uint8)
    for seed in range(3):
        backend.step(_picture(64, 64, seed), FrameParams(feedback=0.2), out=out)
    assert backend._feed is feed
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
        # what the program is fed is the new embedding and the seed's noise, in place
        np.testing.assert_array_equal(backend._feed["embeds_to"], embedding.numpy())
        noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
        np.testing.assert_array_equal(backend._feed["noise_to"], noise.numpy())
        out = np.zeros_like(picture)
        backend.step(picture, FrameParams(), out=out)
        outputs.append(out.astype(int))
    # (a tiny random text encoder moves the picture only a little; the seed moves it a lot)
    assert np.abs(outputs[0] - outputs[1]).mean() > 0.05
    assert np.abs(outputs[1] - outputs[2]).mean() > 0.5


@pytest.mark.parametrize(("variant", "target"), SETTINGS)
def test_stage_timers_name_the_programs_and_run(
    make_backend: Callable[..., Any], variant: Variant, target: Target
) -> None:
    backend, _ = make_backend(variant, target)
    backend.set_prompt(backend.encode_prompt("dust"))
    with pytest.raises(RuntimeError):
        backend.stage_timers()
    backend.step(_picture(64, 64), FrameParams(), out=np.zeros((64, 64, 4), dtype=np.uint8))
    timers = backend.stage_timers()
    model_stages = ["step"] if variant == "fused" else ["encode", "unet", "decode"]
    assert list(timers) == ["pre", *model_stages, "post", "frame"]
    calls = {name: program.calls for name, program in backend._programs.items()}
    for timer in timers.values():
        timer()
    for name, program in backend._programs.items():
        assert program.calls >= calls[name] + 2  # its own stage and the whole frame


def test_passthrough_frames_the_input_without_the_model(make_backend: Callable[..., Any]) -> None:
    backend, _ = make_backend("fused", "macOS14", fit="letterbox")
    picture = _picture(32, 64)
    out = np.zeros_like(picture)
    backend.passthrough(picture, out=out)
    assert np.abs(out.astype(int) - picture.astype(int)).mean() < 8
    assert all(program.calls == 0 for program in backend._programs.values())


def test_compare_reports_psnr_per_program(make_backend: Callable[..., Any]) -> None:
    """compare_converted (what doctor runs on a Mac): high through the fake, and it notices
    a program that computes the wrong thing."""
    for variant, target in (("stages", "macOS14"), ("fused", "macOS15")):
        backend, components = make_backend(variant, target)
        scores = compare_converted(components, backend.converted, backend._programs)
        expected = ["encoder", "unet", "decoder"] if variant == "stages" else ["fused"]
        assert list(scores) == expected
        assert min(scores.values()) > 35.0, scores
    backend, components = make_backend("stages", "macOS14")
    wrong = backend._programs["decoder"]
    wrong.module = _Negate(wrong.module)
    scores = compare_converted(components, backend.converted, backend._programs)
    assert scores["decoder"] < 10.0 < scores["encoder"]


class _Negate:
    def __init__(self, module: Any) -> None:
        self.module = module

    def eval(self) -> _Negate:
        return self

    def __call__(self, *args: Any) -> Any:
        return -self.module(*args)


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
