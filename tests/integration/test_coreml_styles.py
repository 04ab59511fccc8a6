"""Core ML with LoRAs (baked, or one program function per style) and with a ControlNet.

Real conversions of the smallest tiny model (``make_tiny_components``: a LoRA's attention
layers and a ControlNet built from its UNet are all these tests need), with coremltools on
Linux; the ones the tests only read are made once per run (tests/conversions.py). What is
checked here: the programs' interfaces, what the cache key and the weights hold, that
conversion leaves the caller's modules as they were, the exported ControlNet step against
eager, and, on the stubbed Mac of tests/coremlpython_stub.py (coremltools' real Python above
it), that each style is loaded as its own function and a LoRA weight change picks the
function the next frame predicts with. Core ML's own numerics need a Mac (tests/macos).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conversions import SMALL, fingerprint
from livediffusion_models.backends import FrameParams
from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions
from livediffusion_models.condition import condition_for
from livediffusion_models.controlnet import LoadedControlNet, load_controlnet
from livediffusion_models.coreml import CoreMLSettings
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.convert import conversion_key, convert, export_program
from livediffusion_models.coreml.programs import build_programs
from livediffusion_models.coreml.runtime import load_programs
from livediffusion_models.coreml.styles import baked_unet, nearest_style, plan_styles
from livediffusion_models.lora import LoraRequest
from livediffusion_models.lora.read import WeightedLora, read_loras
from livediffusion_models.registry import get_model
from livediffusion_models.step import NUM_CONTROLS, STEP_OUTPUTS, FrameStep, step_inputs
from lorafiles import write_lora
from tinymodel import TINY_SIZE, make_tiny_components

ct = pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = pytest.mark.integration

SIZE = (TINY_SIZE, TINY_SIZE)
FAMILY = "sdxs-512-0.9"


def _state(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _weights_bytes(package: Path) -> bytes:
    return (package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").read_bytes()


def _interfaces(package: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Function name -> (input names, output names); "" for a single-function program."""
    description = ct.utils.load_spec(str(package)).description
    if not description.functions:
        return {"": ([i.name for i in description.input], [o.name for o in description.output])}
    return {
        f.name: ([i.name for i in f.input], [o.name for o in f.output])
        for f in description.functions
    }


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    components = make_tiny_components()
    folder = tmp_path_factory.mktemp("loras")
    # attention projections only, as many style LoRAs: most weights stay shared
    ink = write_lora(
        folder / "ink", unet=components.unet, fmt="kohya", seed=1, unet_targets=("to_q",)
    )
    glow = write_lora(
        folder / "glow",
        unet=components.unet,
        text_encoder=components.text_encoder,
        seed=2,
        unet_targets=("to_k", "to_v"),
    )
    return ink, glow


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml-styles-cache")


def _loras(components: Any, *requests: LoraRequest) -> tuple[WeightedLora, ...]:
    return read_loras(components, requests)


def _convert(components: Any, cache: Path, **options: Any) -> ConvertedModel:
    """Converted here, by this test (what converting does is part of what it checks)."""
    options.setdefault("target", "macOS14")
    return convert(
        components,
        model=FAMILY,
        fingerprint=fingerprint(SMALL),
        size=SIZE,
        cache_dir=cache,
        progress=lambda message: None,
        **options,
    )


# -- baked -----------------------------------------------------------------------------------


def test_a_baked_lora_is_part_of_the_key_and_of_the_weights_only(
    lora_files: tuple[Path, Path], cache: Path, shared_conversions: Any
) -> None:
    ink, _ = lora_files
    components = make_tiny_components()
    before = _state(components.unet)
    plain = shared_conversions.get(cache, SMALL)  # the same model without a LoRA
    at_one = _convert(components, cache, loras=_loras(components, LoraRequest(str(ink), 1.0)))
    # weight 0 is a key of its own, and bakes exactly the base weights, so converting it would
    # write the plain program's weights (conversion of the same modules is byte-identical,
    # which tests/conversions.py counts on); checked on the modules, not by a third conversion
    at_zero = _loras(components, LoraRequest(str(ink), 0.0))
    zero_key = conversion_key(
        model=FAMILY,
        fingerprint=fingerprint(SMALL),
        size=SIZE,
        precision="fp16",
        target="macOS14",
        variant="fused",
        loras=at_zero,
    )
    assert len({plain.folder, zero_key.folder(cache), at_one.folder}) == 3  # three keys
    assert at_one.key.loras == ((at_one.key.loras[0][0], 1.0),)
    assert zero_key.loras == ((at_one.key.loras[0][0], 0.0),)
    assert at_one.folder.name.startswith("64x64-fp16-macOS14-fused-lora1-")
    with baked_unet(components.unet, at_zero) as bake:
        bake(plan_styles(at_zero, False)[0])
        baked = _state(components.unet)
    assert all(torch.equal(baked[k], before[k]) for k in before)
    # the interface of the plain step
    assert _interfaces(at_one.programs["step"].package) == {
        "": (list(step_inputs()), list(STEP_OUTPUTS))
    }
    plain_w, one_w = (_weights_bytes(c.programs["step"].package) for c in (plain, at_one))
    assert len(one_w) == len(plain_w) and one_w != plain_w  # the same constants, other values
    # the caller's modules are as they were: the LoRA was only on them while converting
    after = _state(components.unet)
    assert all(torch.equal(after[k], before[k]) for k in before)


# -- styles: one function per LoRA -----------------------------------------------------------


@pytest.fixture(scope="module")
def styled(
    lora_files: tuple[Path, Path], cache: Path, shared_conversions: Any
) -> tuple[ConvertedModel, Any]:
    """Converted once per run (tests/conversions.py): four tests only read it."""
    ink, glow = lora_files
    components = make_tiny_components()
    loras = _loras(components, LoraRequest(str(ink), 1.0), LoraRequest(str(glow), 0.7))
    converted = shared_conversions.get(
        cache, SMALL, components=components, loras=loras, styles=True, target="macOS15"
    )
    return converted, loras


def test_styles_are_one_package_with_a_function_each_sharing_base_weights(
    styled: tuple[ConvertedModel, Any], cache: Path, shared_conversions: Any
) -> None:
    converted, _ = styled
    program = converted.programs["step"]
    assert program.functions == ("base", "lora0", "lora1")
    assert converted.key.styles and not converted.key.stateful
    interfaces = _interfaces(program.package)
    assert interfaces == {
        name: (list(step_inputs()), list(STEP_OUTPUTS)) for name in program.functions
    }
    spec = ct.utils.load_spec(str(program.package))
    assert spec.description.defaultFunctionName == "base"
    assert spec.specificationVersion >= 9  # multifunction programs are macOS 15
    # constants no LoRA touches are stored once: far less than three whole programs. The
    # single program is the macOS14 one the other tests share: a macOS15 conversion of the same
    # modules stores the same constants (1,127,792 bytes each), and would cost a conversion
    single = _weights_bytes(shared_conversions.get(cache, SMALL).programs["step"].package)
    together = len(_weights_bytes(program.package))
    assert len(single) < together < 1.2 * len(single)


def test_styles_refuse_what_cannot_work_before_converting() -> None:
    components = make_tiny_components()
    with pytest.raises(ValueError, match="at least one --lora"):
        _convert(components, Path("/nonexistent"), styles=True, target="macOS15")


def test_nearest_style_cuts_a_crossfade_at_the_midpoint(styled: tuple[ConvertedModel, Any]) -> None:
    _, loras = styled
    plan = plan_styles(loras, True)
    assert [s.weights for s in plan] == [(0.0, 0.0), (1.0, 0.0), (0.0, 0.7)]
    assert nearest_style(plan, [0.9, 0.1]).name == "lora0"
    assert nearest_style(plan, [0.2, 0.6]).name == "lora1"
    assert nearest_style(plan, [0.0, 0.0]).name == "base"


def _register_styles(world: Any, converted: ConvertedModel, loras: Any) -> Any:
    """Each function's torch module: the step with that style's LoRA mix baked in."""
    components = make_tiny_components()
    key = converted.key
    for style in plan_styles(loras, True):
        unet = copy.deepcopy(components.unet)
        with baked_unet(unet, loras) as bake:
            bake(style)
            baked = copy.deepcopy(unet)
        (spec,) = build_programs(baked, components.vae, size=key.size, tokens=77, variant="fused")
        world.register(converted.programs["step"].package, spec.module.eval(), function=style.name)
    return components


def test_a_mac_switches_styles_live_by_function(
    styled: tuple[ConvertedModel, Any], coreml_mac: Any
) -> None:
    converted, loras = styled
    components = _register_styles(coreml_mac, converted, loras)
    settings = CoreMLSettings(target="macOS15", states=False)
    programs = load_programs(converted, settings=settings)
    assert {e.detail["function"] for e in coreml_mac.of_kind("load")} == {
        "base",
        "lora0",
        "lora1",
    }
    backend = CoreMLBackend(
        components=components,
        converted=converted,
        programs=programs,
        options=CoreMLOptions(size=SIZE, coreml=settings, loras=loras, lora_styles=True),
    )
    assert backend.loras == ("style_kohya", "pytorch_lora_weights")
    assert backend.lora_weights == (1.0, 0.0) and not backend.lora_weights_live
    backend.set_prompt(backend.encode_prompt("a lighthouse"))
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    out = np.zeros_like(pixels)

    def frame_with() -> str:
        backend.step(pixels, FrameParams(), out=out)
        return str(coreml_mac.of_kind("predict")[-1].detail["function"])

    assert frame_with() == "lora0"
    change = backend.set_lora_weights([0.4, 0.6])  # crossfade past the midpoint: a cut
    assert change.applied and change.reencode_prompts  # glow also changes the text encoder
    assert backend.lora_weights == (0.0, 0.7)
    assert frame_with() == "lora1"
    assert backend.set_lora_weights([0.3, 0.65]).applied is False  # same style: nothing
    backend.set_lora_weights([0.0, 0.0])
    assert frame_with() == "base"


def test_functions_need_macos_15_on_the_mac(
    styled: tuple[ConvertedModel, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from coremlpython_stub import install

    install(monkeypatch, tmp_path, macos=(14, 6))
    converted, _ = styled
    with pytest.raises(Exception, match="macOS"):
        load_programs(converted, settings=CoreMLSettings(target="macOS15", states=False))


# -- ControlNet --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlled(
    tmp_path_factory: pytest.TempPathFactory, cache: Path, shared_conversions: Any
) -> tuple[Any, tuple[WeightedLora, ...], LoadedControlNet, ConvertedModel]:
    """A strong LoRA baked and a sketch ControlNet in one fused step, converted once per run
    (tests/conversions.py): the ControlNet's interface and the comparison read the same one."""
    components = make_tiny_components()
    folder = tmp_path_factory.mktemp("strong-lora")
    strong = write_lora(folder, unet=components.unet, alpha=32.0, seed=7)  # scale 8
    loras = _loras(components, LoraRequest(str(strong), 1.0))
    control = load_controlnet(
        "tiny", spec=get_model(FAMILY), unet=components.unet, condition="sketch"
    )
    converted = shared_conversions.get(
        cache, SMALL, components=components, loras=loras, controlnet=control
    )
    return components, loras, control, converted


def test_a_controlnet_converts_into_the_fused_step_with_a_live_scale(
    controlled: tuple[Any, tuple[WeightedLora, ...], LoadedControlNet, ConvertedModel],
    cache: Path,
    shared_conversions: Any,
) -> None:
    _, _, control, converted = controlled
    assert converted.key.controlnet == f"{control.fingerprint}:sketch"
    assert "-controlnet-" in converted.folder.name
    package = converted.programs["step"].package
    assert _interfaces(package) == {"": (list(step_inputs()), list(STEP_OUTPUTS))}
    shapes = {
        i.name: tuple(i.type.multiArrayType.shape)
        for i in ct.utils.load_spec(str(package)).description.input
    }
    assert shapes["controls"] == (NUM_CONTROLS,)  # the scale is one of the controls
    ops = {
        op.type
        for function in ct.utils.load_spec(str(package)).mlProgram.functions.values()
        for block in function.block_specializations.values()
        for op in block.operations
    }
    assert "max_pool" in ops  # the sketch's strokes (and canny's hysteresis) are in there
    assert len(_weights_bytes(package)) > len(
        _weights_bytes(shared_conversions.get(cache, SMALL).programs["step"].package)
    )  # and the ControlNet's weights


def test_the_exported_controlnet_step_equals_eager() -> None:
    components = make_tiny_components()
    control = load_controlnet("tiny", spec=get_model(FAMILY), unet=components.unet)
    (program,) = build_programs(
        components.unet,
        components.vae,
        size=SIZE,
        tokens=77,
        variant="fused",
        controlnet=control.controlnet,
        condition=FrameStep(components.unet, components.vae, control.controlnet).condition,
    )
    inputs = program.example_inputs()
    with torch.no_grad():
        eager = program.module(*inputs)
        exported = export_program(program).module()(*inputs)
    for a, b in zip(eager, exported, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_controlnet_is_refused_for_the_stages_variant(cache: Path) -> None:
    components = make_tiny_components()
    control = load_controlnet("tiny", spec=get_model(FAMILY), unet=components.unet)
    with pytest.raises(ValueError, match="fused program only"):
        _convert(components, cache, controlnet=control, variant="stages")


def test_compare_bakes_the_same_lora_and_runs_the_same_controlnet(
    controlled: tuple[Any, tuple[WeightedLora, ...], LoadedControlNet, ConvertedModel],
    coreml_mac: Any,
) -> None:
    from livediffusion_models.coreml.compare import compare_converted

    components, loras, control, converted = controlled
    # what the stubbed Core ML computes with: the step with the LoRA baked and the ControlNet
    baked = copy.deepcopy(components.unet)
    with baked_unet(baked, loras) as bake:
        bake(plan_styles(loras, False)[0])
        frozen = copy.deepcopy(baked)
    (spec,) = build_programs(
        frozen,
        components.vae,
        size=SIZE,
        tokens=77,
        variant="fused",
        controlnet=control.controlnet,
        condition=condition_for(control.condition, SIZE),
    )
    coreml_mac.register(converted.programs["step"].package, spec.module.eval())
    programs = load_programs(converted, settings=CoreMLSettings(target="macOS14"))
    before = _state(components.unet)
    scores = compare_converted(components, converted, programs, loras=loras, controlnet=control)
    # the stub computes in torch and rounds to fp16: only that rounding may differ
    assert scores["fused"] > 65.0
    after = _state(components.unet)
    assert all(torch.equal(after[k], before[k]) for k in before)  # restored
    with pytest.raises(ValueError, match="LoRAs the programs were converted with"):
        compare_converted(components, converted, programs, controlnet=control)
