"""The torch modules that become Core ML programs, named and shaped for export.

``fused`` is :class:`FrameStep` itself: one ``predict`` per frame, inputs exactly the step's.
On a macOS15 target at fp16 it is wrapped in :class:`StatefulStep`, which keeps
``previous_x0`` and ``previous_output`` as Core ML states, so the temporal state stays on the
device between frames instead of crossing into numpy and back twice a frame.

``stages`` is the paper's split: TAESD encoder, UNet, TAESD decoder as three programs. Each
wraps one module with exactly the call :class:`FrameStep` makes on it, so the Core ML backend
can hand these programs to an unchanged ``FrameStep`` in place of the torch modules: the glue
math (feedback, noise, x0, EMA, blend) still runs from the one source of truth.

A ControlNet converts into the fused program only: there the frame goes in and the edges, the
ControlNet and its scaled residuals all stay inside the one program (the scale is a column of
``controls``, so it stays live). Split into stages, its residuals (one tensor per skip
connection, up to 1280 channels each) would cross into numpy and back every frame, and the
UNet program would need them all as inputs: more copies than the split saves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from livediffusion_models.coreml import Variant
from livediffusion_models.step import (
    NUM_CONTROLS,
    STEP_OUTPUTS,
    Control,
    FrameStep,
    step_inputs,
)

__all__ = ["STATE_NAMES", "ProgramSpec", "StatefulStep", "TensorSpec", "build_programs"]

STATE_NAMES = ("previous_x0", "previous_output")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ProgramSpec:
    """One program to convert: the module, its named inputs, outputs and states."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    states: tuple[TensorSpec, ...] = ()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """Plausible values (export traces shapes, but NaN-free values keep checks honest)."""
        generator = torch.Generator().manual_seed(0)
        values = []
        for spec in self.inputs:
            if spec.name == "controls":
                values.append(_example_controls())
            elif spec.name == "timestep":
                values.append(torch.tensor([999.0]))
            elif spec.name == "image":
                values.append(torch.rand(spec.shape, generator=generator) * 2 - 1)
            else:
                values.append(torch.randn(spec.shape, generator=generator))
        return tuple(values)


def _example_controls() -> torch.Tensor:
    controls = torch.zeros(NUM_CONTROLS)
    controls[Control.TIMESTEP] = 999.0
    controls[Control.SQRT_ALPHA] = 0.0683
    controls[Control.SQRT_ONE_MINUS_ALPHA] = 0.9977
    controls[Control.FEEDBACK] = 0.1
    controls[Control.SMOOTHING] = 0.4
    controls[Control.BLEND] = 0.0
    controls[Control.PROMPT_MIX] = 1.0
    controls[Control.NOISE_TO] = 1.0
    controls[Control.CONTROLNET_SCALE] = 1.0
    return controls


class StatefulStep(nn.Module):
    """:class:`FrameStep` with its temporal state held as fp16 buffers (Core ML states).

    Core ML states must be fp16. Core ML fills a new state with zeros (Apple's ``newState``
    documentation), but a reset keeps the state the last scene left, so a state is only read
    through ``where(weight > 0, ...)``: a frame with feedback or smoothing at 0 (the first after
    a reset) ignores it entirely, even where it holds inf from an fp16 overflow
    (``x + (inf - x) * 0`` is NaN).
    """

    previous_x0: torch.Tensor
    previous_output: torch.Tensor

    def __init__(self, step: FrameStep, *, latent_shape: Sequence[int], image_shape: Sequence[int]):
        super().__init__()
        self.step = step
        self.register_buffer("previous_x0", torch.zeros(*latent_shape, dtype=torch.float16))
        self.register_buffer("previous_output", torch.zeros(*image_shape, dtype=torch.float16))

    def forward(
        self,
        image: torch.Tensor,
        noise_from: torch.Tensor,
        noise_to: torch.Tensor,
        embeds_from: torch.Tensor,
        embeds_to: torch.Tensor,
        controls: torch.Tensor,
    ) -> torch.Tensor:
        previous_x0 = self.previous_x0.to(image.dtype)
        previous_output = self.previous_output.to(image.dtype)
        # where(cond, tensor, tensor): coremltools 9.0 cannot convert where.ScalarOther
        previous_x0 = torch.where(
            controls[Control.FEEDBACK] > 0, previous_x0, torch.zeros_like(previous_x0)
        )
        previous_output = torch.where(
            controls[Control.SMOOTHING] > 0, previous_output, torch.zeros_like(previous_output)
        )
        output, x0, smoothed = self.step(
            image,
            noise_from,
            noise_to,
            embeds_from,
            embeds_to,
            previous_x0,
            previous_output,
            controls,
        )
        self.previous_x0.copy_(x0.to(torch.float16))
        self.previous_output.copy_(smoothed.to(torch.float16))
        return output  # type: ignore[no-any-return]


class EncoderStage(nn.Module):
    """``vae.encode(image).latents``, as FrameStep calls it."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latents  # type: ignore[no-any-return]


class UNetStage(nn.Module):
    """``unet(sample, timestep, encoder_hidden_states)[0]``, as FrameStep calls it."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        result = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states)
        return result[0]  # type: ignore[no-any-return]


class DecoderStage(nn.Module):
    """``vae.decode(latents).sample``, as FrameStep calls it."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample  # type: ignore[no-any-return]


def shapes(unet: Any, vae: Any, size: tuple[int, int], tokens: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape at model ``size`` (height, width) with ``tokens`` prompt tokens."""
    height, width = size
    scale = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    latent = (1, int(unet.config.in_channels), height // scale, width // scale)
    image = (1, 3, height, width)
    embeds = (1, tokens, int(unet.config.cross_attention_dim))
    return {
        "image": image,
        "noise_from": latent,
        "noise_to": latent,
        "embeds_from": embeds,
        "embeds_to": embeds,
        "previous_x0": latent,
        "previous_output": image,
        "controls": (NUM_CONTROLS,),
        "latents": latent,
        "sample": latent,
        "timestep": (1,),
        "encoder_hidden_states": embeds,
    }


def build_programs(
    unet: Any,
    vae: Any,
    *,
    size: tuple[int, int],
    tokens: int,
    variant: Variant,
    stateful: bool = False,
    controlnet: Any = None,
    condition: Any = None,
) -> list[ProgramSpec]:
    """The programs of one variant, in the order a frame runs them (a ControlNet, with the
    module making its condition, goes into the fused step)."""
    shape = shapes(unet, vae, size, tokens)

    def specs(*names: str) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(name, shape[name]) for name in names)

    if variant == "stages":
        if controlnet is not None:
            raise ValueError(
                "a ControlNet converts into the fused program only (--variant fused): split "
                "into stages, its residuals would cross into numpy and back every frame"
            )
        if stateful:
            raise ValueError("Core ML states are for the fused variant only")
        return [
            ProgramSpec("encoder", EncoderStage(vae), specs("image"), ("latents",)),
            ProgramSpec(
                "unet",
                UNetStage(unet),
                specs("sample", "timestep", "encoder_hidden_states"),
                ("eps",),
            ),
            ProgramSpec("decoder", DecoderStage(vae), specs("latents"), ("image",)),
        ]
    if variant != "fused":
        raise ValueError(f"variant must be fused or stages, got {variant!r}")
    step = FrameStep(unet, vae, controlnet, condition)
    if not stateful:
        return [ProgramSpec("step", step, specs(*step_inputs()), STEP_OUTPUTS)]
    module = StatefulStep(step, latent_shape=shape["previous_x0"], image_shape=shape["image"])
    plain = [name for name in step_inputs() if name not in STATE_NAMES]
    return [ProgramSpec("step", module, specs(*plain), ("output",), specs(*STATE_NAMES))]
