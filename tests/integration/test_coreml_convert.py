"""Real Core ML conversion (coremltools) of tiny models of each registry family.

Conversion runs on Linux; running the programs needs macOS (tests/macos). What can be
checked here is everything up to Core ML itself: the ``torch.export`` program equals the
eager ``FrameStep``, the saved ML programs declare the expected interface, and, on a Mac
stubbed below coremltools' Python (tests/coremlpython_stub.py), what conversion asks of Core
ML and which cached target ``--target auto`` picks.

Each family's tiny model is converted once per run (tests/conversions.py); tests about the
stage split, states, precision, export, the cache and what conversion asks of a Mac use the
smallest model of the same classes (``make_tiny_components``), which converts faster, and
share its conversions with the Core ML backend's tests.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from conversions import SMALL, fingerprint
from livediffusion_models.coreml import VARIANTS, Precision, Target, Variant
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.convert import convert, export_program
from livediffusion_models.coreml.programs import STATE_NAMES, build_programs
from livediffusion_models.step import NUM_CONTROLS, STEP_OUTPUTS, FrameStep, step_inputs
from tinymodel import TINY_EMBED_DIM, TINY_SIZE, make_tiny_components

ct = pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = pytest.mark.integration

FAMILIES = ("sdxs-512-0.9", "sdxs-512-dreamshaper", "sd-turbo")
FLOAT16, FLOAT32 = 65552, 65568  # ArrayFeatureType data types in the spec
SIZE = (TINY_SIZE, TINY_SIZE)
LATENT = (1, 4, TINY_SIZE // 8, TINY_SIZE // 8)
IMAGE = (1, 3, TINY_SIZE, TINY_SIZE)
EMBEDS = (1, 77, TINY_EMBED_DIM)


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory, shared_conversions: Any
) -> Callable[..., ConvertedModel]:
    """Each setting converted once per run (seconds each; tests/conversions.py), copied into
    one cache for this module."""
    cache = tmp_path_factory.mktemp("coreml-cache")

    def get(
        family: str,
        variant: Variant,
        *,
        target: Target = "macOS14",
        precision: Precision = "fp16",
    ) -> ConvertedModel:
        return shared_conversions.get(
            cache, family, variant=variant, target=target, precision=precision
        )

    return get


def _interface(package: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Any]:
    spec = ct.utils.load_spec(str(package))
    description = spec.description

    def arrays(items: Any) -> dict[str, Any]:
        return {
            i.name: (tuple(i.type.multiArrayType.shape), i.type.multiArrayType.dataType)
            for i in items
        }

    states = {
        s.name: (tuple(s.type.stateType.arrayType.shape), s.type.stateType.arrayType.dataType)
        for s in description.state
    }
    return arrays(description.input), arrays(description.output), states, spec


def _ops(spec: Any) -> set[str]:
    return {
        op.type
        for function in spec.mlProgram.functions.values()
        for block in function.block_specializations.values()
        for op in block.operations
    }


# Every family as the fused program (its UNet's block types, mid block and attention layout
# are what the converter meets), and the stage split once, of the smallest model (the one the
# Core ML backend's tests run): the three stage programs hold the same modules, and their
# interface does not depend on the family. (The families' stage conversions took 50 s of
# every run and could fail only where a fused one does.)
FAMILY_VARIANTS = [*((family, "fused") for family in FAMILIES), (SMALL, "stages")]
assert {variant for _, variant in FAMILY_VARIANTS} == set(VARIANTS)


@pytest.mark.parametrize(("family", "variant"), FAMILY_VARIANTS)
def test_each_family_converts_with_the_declared_interface(
    converted: Callable[..., ConvertedModel], family: str, variant: Variant
) -> None:
    result = converted(family, variant)
    assert result.key.stateful is False  # macOS14 has no states
    if variant == "fused":
        assert list(result.programs) == ["step"]
        inputs, outputs, states, spec = _interface(result.programs["step"].package)
        # exactly FrameStep's inputs, in its order; float32 in, fp16 out
        assert list(inputs) == list(step_inputs())
        assert list(outputs) == list(STEP_OUTPUTS)
        assert inputs["image"] == (IMAGE, FLOAT32)
        assert inputs["noise_from"] == (LATENT, FLOAT32)
        assert inputs["embeds_to"] == (EMBEDS, FLOAT32)
        assert inputs["controls"] == ((NUM_CONTROLS,), FLOAT32)
        assert outputs == {
            "output": (IMAGE, FLOAT16),
            "x0": (LATENT, FLOAT16),
            "smoothed": (IMAGE, FLOAT16),
        }
        assert states == {}
        # macOS14 decomposes attention; macOS15 keeps it fused (next test)
        assert "scaled_dot_product_attention" not in _ops(spec)
    else:
        assert list(result.programs) == ["encoder", "unet", "decoder"]
        expected = {
            "encoder": ({"image": (IMAGE, FLOAT32)}, {"latents": (LATENT, FLOAT16)}),
            "unet": (
                {
                    "sample": (LATENT, FLOAT32),
                    "timestep": ((1,), FLOAT32),
                    "encoder_hidden_states": (EMBEDS, FLOAT32),
                },
                {"eps": (LATENT, FLOAT16)},
            ),
            "decoder": ({"latents": (LATENT, FLOAT32)}, {"image": (IMAGE, FLOAT16)}),
        }
        for name, (want_in, want_out) in expected.items():
            inputs, outputs, states, _ = _interface(result.programs[name].package)
            assert (inputs, outputs, states) == (want_in, want_out, {}), name
    assert result.folder.name.startswith(f"64x64-fp16-macOS14-{variant}-")


def test_macos15_fused_keeps_the_temporal_state_as_core_ml_states(
    converted: Callable[..., ConvertedModel],
) -> None:
    result = converted(SMALL, "fused", target="macOS15")
    assert result.key.stateful
    inputs, outputs, states, spec = _interface(result.programs["step"].package)
    assert list(inputs) == [name for name in step_inputs() if name not in STATE_NAMES]
    assert outputs == {"output": (IMAGE, FLOAT16)}
    assert states == {"previous_x0": (LATENT, FLOAT16), "previous_output": (IMAGE, FLOAT16)}
    ops = _ops(spec)
    assert {"read_state", "write_state", "scaled_dot_product_attention"} <= ops
    assert spec.specificationVersion >= 9  # iOS18 / macOS15


def test_fp32_precision_keeps_float32_outputs(converted: Callable[..., ConvertedModel]) -> None:
    result = converted(SMALL, "stages", precision="fp32")
    _, outputs, _, _ = _interface(result.programs["unet"].package)
    assert outputs == {"eps": (LATENT, FLOAT32)}


def test_a_second_convert_reuses_the_cache(
    converted: Callable[..., ConvertedModel], tmp_path: Path
) -> None:
    first = converted(SMALL, "fused")
    started = time.monotonic()
    again = convert(
        make_tiny_components(),
        model="sdxs-512-0.9",
        fingerprint=fingerprint(SMALL),
        size=SIZE,
        cache_dir=first.folder.parents[2],
        progress=lambda message: None,
    )
    assert again.folder == first.folder
    assert time.monotonic() - started < 5  # no conversion (it takes ~10 s here)


def test_converting_on_a_mac_never_loads_the_fresh_program_into_core_ml(
    coreml_mac: Any, tmp_path: Path
) -> None:
    """Without ``skip_model_load=True``, ``ct.convert`` on a Mac compiles its result and loads
    it into Core ML (``MLModel._get_proxy_and_spec``): minutes and gigabytes for a real UNet,
    thrown away. The only native call conversion may make is compile_programs' one compile
    per program; and ``--target auto`` on macOS 15 converts for macOS15, with states."""
    result = convert(
        make_tiny_components(),
        model="sdxs-512-0.9",
        fingerprint="tiny-on-a-mac",
        size=SIZE,
        cache_dir=tmp_path,
        progress=lambda message: None,
    )
    assert (result.key.target, result.key.stateful) == ("macOS15", True)
    assert coreml_mac.of_kind("load") == []
    assert [event.path for event in coreml_mac.of_kind("compile")] == [
        str(result.programs["step"].package)
    ]
    assert result.programs["step"].compiled.is_dir()


def test_auto_finds_a_conversion_for_any_target_this_mac_runs(
    converted: Callable[..., ConvertedModel], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The one target rule: off macOS ``auto`` converts for macOS14, which a Mac on 14 or 15
    finds as it is; a Mac on 14 never picks a macOS15 folder."""
    from coremlpython_stub import as_linux, install
    from livediffusion_models.coreml import runnable_targets

    on_linux = converted(SMALL, "fused")  # target macOS14, as auto off macOS
    also_15 = converted(SMALL, "fused", target="macOS15")
    with pytest.MonkeyPatch.context() as linux:
        as_linux(linux)  # a no-op here; the same claim on the macOS CI job
        assert runnable_targets() == ("macOS14",)

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again although a usable folder was cached")

    monkeypatch.setattr("livediffusion_models.coreml.convert._convert_one", no_conversion)
    for macos, found in (((15, 3), also_15), ((14, 6), on_linux)):
        with pytest.MonkeyPatch.context() as mac:
            install(mac, tmp_path, macos=macos)
            again = convert(
                make_tiny_components(),
                model="sdxs-512-0.9",
                fingerprint=fingerprint(SMALL),
                size=SIZE,
                cache_dir=on_linux.folder.parents[2],
                progress=lambda message: None,
            )
            assert again.folder == found.folder, macos


def test_states_are_refused_where_core_ml_has_none(tmp_path: Path) -> None:
    for variant, precision, target in (
        ("stages", "fp16", "macOS15"),
        ("fused", "fp32", "macOS15"),
        ("fused", "fp16", "macOS14"),
    ):
        with pytest.raises(ValueError, match="states"):
            convert(
                make_tiny_components(),
                model="sdxs-512-0.9",
                fingerprint="x",
                size=SIZE,
                precision=precision,  # type: ignore[arg-type]
                target=target,  # type: ignore[arg-type]
                variant=variant,  # type: ignore[arg-type]
                stateful=True,
                cache_dir=tmp_path,
            )


@pytest.mark.parametrize(
    ("variant", "stateful"), [("fused", False), ("fused", True), ("stages", False)]
)
def test_the_exported_program_equals_the_eager_modules(variant: Variant, stateful: bool) -> None:
    """Everything up to the converter: the program coremltools reads computes what torch does."""
    components = make_tiny_components()
    programs = build_programs(
        components.unet, components.vae, size=SIZE, tokens=77, variant=variant, stateful=stateful
    )
    eager_step = FrameStep(components.unet, components.vae)
    with torch.inference_mode():
        for program in programs:
            inputs = program.example_inputs()
            # a copy: the exported module shares its buffers (the states) with the original
            exported = copy.deepcopy(export_program(program).module())
            if program.states:
                # two frames: the second reads the state the first wrote, in both
                for frame in range(2):
                    want = program.module(*inputs)
                    got = exported(*inputs)
                    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
                    assert frame == 1 or not torch.isnan(program.module.previous_x0).any()
            else:
                want = program.module(*inputs)
                got = exported(*inputs)
                torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
            if program.name == "step" and not stateful:
                torch.testing.assert_close(
                    eager_step(*inputs), want, rtol=0, atol=0
                )  # the fused program is FrameStep itself


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_real_sdxs_architecture_converts(tmp_path: Path) -> None:
    """The full-size SDXS-512 UNet + TAESD with random weights: 36 s alone, 41-44 s beside
    the other tests on 2 cores, so it runs in CI; deselect it with ``-m "not slow"``. Built from
    the shipped configs without the text encoder: no Core ML program holds it, and its 340M
    parameters take 7 s to build."""
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from livediffusion_models.registry import get_model
    from livediffusion_models.tokenizer import build_offline_tokenizer

    spec = get_model("sdxs-512-0.9")
    model = SimpleNamespace(
        unet=UNet2DConditionModel.from_config(spec.read_config("unet")).eval(),
        vae=AutoencoderTiny.from_config(spec.read_config("vae")).eval(),
        tokenizer=build_offline_tokenizer(pad_token=spec.pad_token),
    )
    result = convert(
        model,
        model=spec.name,
        fingerprint="random-unet-and-taesd",
        size=(512, 512),
        target="macOS15",
        cache_dir=tmp_path,
        progress=lambda message: print(message, file=sys.stderr),
    )
    inputs, outputs, states, spec_ = _interface(result.programs["step"].package)
    assert inputs["image"] == ((1, 3, 512, 512), FLOAT32)
    assert outputs == {"output": ((1, 3, 512, 512), FLOAT16)}
    assert states["previous_x0"] == ((1, 4, 64, 64), FLOAT16)
    assert "scaled_dot_product_attention" in _ops(spec_)
