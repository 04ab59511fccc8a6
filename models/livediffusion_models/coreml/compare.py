"""Core ML against torch on the same weights and inputs: PSNR per program (``doctor``, tests).

Each stage program gets the same inputs as its torch module; the fused program runs two
frames (the second one reads the temporal state the first left), against ``FrameStep`` run
the same way. PSNR uses the reference's own value range as the peak, so it means the same
for latents, noise predictions and pictures.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from livediffusion_models.condition import condition_for
from livediffusion_models.coreml import CoreMLSettings
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.programs import ProgramSpec, TensorSpec, build_programs
from livediffusion_models.coreml.runtime import Program
from livediffusion_models.coreml.styles import baked_unet, plan_styles
from livediffusion_models.step import STEP_OUTPUTS, Control, FrameStep, step_inputs

if TYPE_CHECKING:
    from livediffusion_models.controlnet import LoadedControlNet
    from livediffusion_models.lora.read import WeightedLora

__all__ = ["compare_converted", "compare_with_torch", "psnr"]


def psnr(reference: npt.ArrayLike, test: npt.ArrayLike) -> float:
    """Peak signal-to-noise ratio in dB, with the reference's range as the peak."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(test, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {got.shape}")
    if not np.all(np.isfinite(got)):
        return -math.inf
    peak = max(float(ref.max() - ref.min()), 1e-6)
    mse = float(np.mean((ref - got) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def _feed(spec: ProgramSpec, values: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    return {
        t.name: v.detach().numpy().astype(np.float32)
        for t, v in zip(spec.inputs, values, strict=True)
    }


@torch.inference_mode()
def compare_converted(
    components: Any,
    converted: ConvertedModel,
    programs: Mapping[str, Program],
    *,
    loras: Sequence[WeightedLora] = (),
    controlnet: LoadedControlNet | None = None,
) -> dict[str, float]:
    """PSNR (dB) of each loaded program of ``converted`` against its torch module.

    ``loras`` and ``controlnet`` must be what it was converted with: the torch side bakes the
    same LoRA mix (for styles, the default function's: no LoRA) into ``components``' UNet for
    the comparison (restored afterwards), and runs the same ControlNet and condition.
    """
    key = converted.key
    if tuple((c.lora.digest, float(c.weight)) for c in loras) != key.loras:
        raise ValueError("compare with the LoRAs the programs were converted with")
    fingerprint = f"{controlnet.fingerprint}:{controlnet.condition}" if controlnet else ""
    if fingerprint != key.controlnet:
        raise ValueError("compare with the ControlNet the programs were converted with")
    with baked_unet(components.unet, loras) as bake:
        bake(plan_styles(loras, key.styles)[0])
        return _compare(components, converted, programs, controlnet)


def _compare(
    components: Any,
    converted: ConvertedModel,
    programs: Mapping[str, Program],
    controlnet: LoadedControlNet | None,
) -> dict[str, float]:
    key = converted.key
    tokens = int(getattr(components.tokenizer, "model_max_length", 77))
    control = controlnet.controlnet if controlnet is not None else None
    condition = condition_for(controlnet.condition, key.size) if controlnet else None
    specs = build_programs(
        components.unet,
        components.vae,
        size=key.size,
        tokens=tokens,
        variant=key.variant,
        stateful=key.stateful,
        controlnet=control,
        condition=condition,
    )
    results: dict[str, float] = {}
    if key.variant == "stages":
        for spec in specs:
            inputs = spec.example_inputs()
            expected = spec.module(*inputs)
            result = programs[spec.name].predict(_feed(spec, inputs))[spec.outputs[0]]
            results[spec.name] = psnr(expected.numpy(), result)
        return results

    # fused: two frames, the second with feedback and smoothing reading the first's state
    (spec,) = specs
    step = FrameStep(components.unet, components.vae, control, condition)
    shapes = {t.name: t.shape for t in (*spec.inputs, *spec.states)}
    names = step_inputs()
    reference = ProgramSpec(
        "reference", step, tuple(TensorSpec(n, shapes[n]) for n in names), STEP_OUTPUTS
    )
    values = dict(zip(names, reference.example_inputs(), strict=True))
    program = programs[spec.name]
    state = program.make_state() if key.stateful else None
    own_previous: dict[str, npt.NDArray[np.float32]] = {}
    for frame in range(2):
        controls = values["controls"].clone()
        if frame == 0:
            controls[Control.FEEDBACK] = 0.0
            controls[Control.SMOOTHING] = 0.0
        values["controls"] = controls
        output, x0, smoothed = step(*(values[n] for n in names))
        feed = {t.name: values[t.name].numpy().astype(np.float32) for t in spec.inputs}
        feed.update(own_previous)  # without states, Core ML reads back its own last frame
        got = program.predict(feed, state=state)
        results["fused"] = psnr(output.numpy(), got["output"])
        values["previous_x0"], values["previous_output"] = x0, smoothed
        if not key.stateful:
            own_previous = {
                "previous_x0": np.asarray(got["x0"], dtype=np.float32),
                "previous_output": np.asarray(got["smoothed"], dtype=np.float32),
            }
    return results


def compare_with_torch(
    components: Any,
    *,
    model: str,
    fingerprint: str,
    size: tuple[int, int],
    settings: CoreMLSettings | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Convert (or reuse) both variants of float32 ``components``, load them, compare.

    ``model`` and ``fingerprint`` key the conversion cache (``LoadedModel.spec.name`` and
    ``LoadedModel.fingerprint``); ``settings`` give precision, target, compute units and
    hints (its variant and states are ignored: both variants run, states where allowed).

    Returns PSNR in dB for "encoder", "unet", "decoder" (the stages) and "fused".
    """
    from livediffusion_models.coreml.convert import convert
    from livediffusion_models.coreml.runtime import load_programs, require_runtime

    require_runtime()
    settings = settings or CoreMLSettings()
    results: dict[str, float] = {}
    for variant in ("stages", "fused"):
        kwargs: dict[str, Any] = {} if progress is None else {"progress": progress}
        converted = convert(
            components,
            model=model,
            fingerprint=fingerprint,
            size=size,
            precision=settings.precision,
            target=settings.target,
            variant=variant,
            cache_dir=cache_dir,
            **kwargs,
        )
        loaded = dataclasses.replace(settings, variant=variant, states=None)
        programs = load_programs(converted, settings=loaded)
        results.update(compare_converted(components, converted, programs))
    return results
