"""The whole per-frame img2img step as one torch module: the single source of truth.

Every backend runs this module: the torch backend eagerly (and, later, compiled or captured
in one CUDA graph), the Core ML backend by converting it with ``torch.export``. So every value
that may change from one frame to the next is an input tensor, never a Python constant: a new
prompt, strength or seed is a buffer update, not a re-trace.

One frame, top to bottom::

    latents  = TAESD.encode(image)
    clean    = lerp(latents, previous x0, feedback)          # latent feedback
    noisy    = sqrt(a_t) * clean + sqrt(1 - a_t) * noise     # fixed noise per seed
    eps      = UNet(noisy, t, prompt embedding,
                    [scale * ControlNet(noisy, t, prompt, edges(image))])   # optional
    x0       = (noisy - sqrt(1 - a_t) * eps) / sqrt(a_t)     # one step straight to x0
    decoded  = TAESD.decode(x0)
    smoothed = lerp(decoded, previous output, smoothing)    # EMA on the output
    output   = lerp(smoothed, image, blend)                 # optional blend with the input

With feedback, smoothing and blend at 0 this is exactly diffusers' img2img with one Euler step
(``strength=1`` -> ``t=999``) and no guidance: Euler's scaled input ``(x + sigma * n) /
sqrt(sigma^2 + 1)`` equals ``sqrt(a_t) * x + sqrt(1 - a_t) * n``, and its one step lands on x0.

With a ControlNet, its condition (edges of the input frame, :mod:`livediffusion_models.condition`)
is computed inside the step too, and its residuals are scaled by the ``CONTROLNET_SCALE`` column
of ``controls``: a live value like strength, captured in the same graph, where 0 adds exactly
nothing (the frame equals the step without a ControlNet). A ControlNet's start/end fractions
do not apply: one step is both the first and the last, so they could only switch it fully on
or off, which the scale already does.

Two of the inputs glide: the prompt embedding is ``lerp(embeds_from, embeds_to, prompt_mix)``,
and the noise is ``cos * noise_from + sin * noise_to`` (variance stays 1 while the seed changes),
so neither a new prompt nor a new seed ever produces a jump.

Several streams run as one batch: row ``k`` of every input is stream ``k``'s picture, noise,
prompt and state, and row ``k`` of ``controls`` (``(streams, NUM_CONTROLS)``) its scalars, so
each stream has its own timestep, feedback, smoothing, blend and glides in the same call. A
single ``(NUM_CONTROLS,)`` vector is one stream (what the Core ML programs take).
"""

from __future__ import annotations

import inspect
from enum import IntEnum
from typing import Any

import torch
from torch import nn

__all__ = ["NUM_CONTROLS", "STEP_OUTPUTS", "Control", "FrameStep", "step_inputs"]


class Control(IntEnum):
    """Positions in the ``controls`` vector: the per-frame scalars, uploaded in one copy."""

    TIMESTEP = 0
    SQRT_ALPHA = 1
    SQRT_ONE_MINUS_ALPHA = 2
    FEEDBACK = 3
    SMOOTHING = 4
    BLEND = 5
    PROMPT_MIX = 6
    NOISE_FROM = 7  # cos of the seed glide angle
    NOISE_TO = 8  # sin of the seed glide angle
    CONTROLNET_SCALE = 9  # how much of the ControlNet's residuals the UNet gets; 0 = none


NUM_CONTROLS = len(Control)

STEP_OUTPUTS = ("output", "x0", "smoothed")
"""Names of :meth:`FrameStep.forward`'s results, in order (a converted program uses them)."""


def step_inputs() -> tuple[str, ...]:
    """Names of :meth:`FrameStep.forward`'s inputs, in order, read from its signature.

    A converted program names its inputs from this, so they cannot drift from the module.
    """
    return tuple(inspect.signature(FrameStep.forward).parameters)[1:]


def _lerp(start: torch.Tensor, end: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # Explicit arithmetic: torch.lerp wants weight in the tensors' dtype; ours stays float32.
    return start + (end - start) * weight


class FrameStep(nn.Module):
    """UNet + TAESD (AutoencoderTiny) for one frame; see the module docstring for the math."""

    def __init__(self, unet: Any, vae: Any, controlnet: Any = None, condition: Any = None) -> None:
        """``controlnet``: a diffusers ``ControlNetModel`` fitting ``unet``, or None;
        ``condition``: the module making its condition from the frame (default canny edges)."""
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.controlnet = controlnet
        if controlnet is not None and condition is None:
            from livediffusion_models.condition import EdgeCondition

            condition = EdgeCondition("canny")
        self.condition: Any = condition if controlnet is not None else None
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(
        self,
        image: torch.Tensor,
        noise_from: torch.Tensor,
        noise_to: torch.Tensor,
        embeds_from: torch.Tensor,
        embeds_to: torch.Tensor,
        previous_x0: torch.Tensor,
        previous_output: torch.Tensor,
        controls: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(output, x0, smoothed)``: show ``output``, feed back the other two."""
        rows = controls.reshape(-1, NUM_CONTROLS)  # one row of scalars per stream

        def per_image(column: Control) -> torch.Tensor:  # (streams, 1, 1, 1), float32
            return rows[:, column].reshape(-1, 1, 1, 1)

        # The scalars stay float32 (sqrt(a_t) = 0.068 at t=999 loses too much in half
        # precision, and x0 divides by it); each result is cast back to the model's dtype,
        # which a float32 (streams, 1, 1, 1) tensor would otherwise promote to float32.
        timestep = rows[:, Control.TIMESTEP]
        sqrt_alpha = per_image(Control.SQRT_ALPHA)
        sqrt_one_minus_alpha = per_image(Control.SQRT_ONE_MINUS_ALPHA)
        dtype = image.dtype

        mix = rows[:, Control.PROMPT_MIX].reshape(-1, 1, 1)
        embeds = _lerp(embeds_from, embeds_to, mix).to(embeds_from.dtype)
        noise = noise_from * per_image(Control.NOISE_FROM) + noise_to * per_image(Control.NOISE_TO)

        latents = self.vae.encode(image).latents * self.scaling_factor
        clean = _lerp(latents, previous_x0, per_image(Control.FEEDBACK))
        noisy = (sqrt_alpha * clean + sqrt_one_minus_alpha * noise).to(dtype)
        residuals = self._control(
            image, noisy, timestep, embeds, per_image(Control.CONTROLNET_SCALE)
        )
        eps = self.unet(
            noisy, timestep, encoder_hidden_states=embeds, return_dict=False, **residuals
        )[0]
        x0 = ((noisy - sqrt_one_minus_alpha * eps) / sqrt_alpha).to(dtype)

        decoded = self.vae.decode(x0 / self.scaling_factor).sample.clamp(-1.0, 1.0)
        smoothed = _lerp(decoded, previous_output, per_image(Control.SMOOTHING)).to(dtype)
        output = _lerp(smoothed, image, per_image(Control.BLEND)).to(dtype)
        return output, x0, smoothed

    def _control(
        self,
        image: torch.Tensor,
        noisy: torch.Tensor,
        timestep: torch.Tensor,
        embeds: torch.Tensor,
        scale: torch.Tensor,
    ) -> dict[str, Any]:
        """The ControlNet's residuals for the UNet call, scaled per stream; none without one."""
        if self.controlnet is None:
            return {}
        down, mid = self.controlnet(
            noisy,
            timestep,
            encoder_hidden_states=embeds,
            controlnet_cond=self.condition(image),
            return_dict=False,
        )
        return {
            "down_block_additional_residuals": [(r * scale).to(r.dtype) for r in down],
            "mid_block_additional_residual": (mid * scale).to(mid.dtype),
        }
