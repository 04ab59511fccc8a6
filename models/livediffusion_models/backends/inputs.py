"""The step's per-frame inputs that are not the picture, kept the same way by every backend.

Prompt and seed glides, the controls vector, the temporal state (previous x0 and output) and
the "fresh" flag after a reset are one piece of logic whether the step then runs in eager
torch, a CUDA graph or a Core ML program: each backend holds one :class:`StepInputs` and hands
its tensors to :class:`FrameStep` (or converts them for Core ML). All tensors are allocated
once and then updated in place, which is what a captured graph and a reused Core ML feed need.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import torch

from livediffusion_models.backends.base import Backend, Embedding, FrameParams, PromptSlot
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, Control

__all__ = ["StepInputs", "StepInputsBackend", "TextEncoder", "clamp01", "seed_weights"]


class StepInputs:
    """Noise and prompt glide endpoints, the controls vector and the temporal-state flag."""

    def __init__(
        self,
        *,
        latent_shape: tuple[int, int, int, int],
        embed_shape: tuple[int, int, int],
        image_shape: tuple[int, int, int, int],
        schedule: NoiseSchedule,
        device: torch.device,
        dtype: torch.dtype,
        seed: int = 0,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.schedule = schedule
        self.latent_shape = latent_shape
        self.embed_shape = embed_shape

        def zeros(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.zeros(shape, device=device, dtype=dtype)

        self.noise_from = zeros(latent_shape)
        self.noise_to = zeros(latent_shape)
        self.embeds_from = zeros(embed_shape)
        self.embeds_to = zeros(embed_shape)  # prompt A, or A morphed towards B
        self.prompt_a = zeros(embed_shape)
        self.prompt_b = zeros(embed_shape)
        self.has_b = False
        self.morph = 0.0
        self.previous_x0 = zeros(latent_shape)
        self.previous_output = zeros(image_shape)
        pin = device.type == "cuda"
        self._controls_host = torch.zeros(NUM_CONTROLS, dtype=torch.float32, pin_memory=pin)
        self._controls_np = self._controls_host.numpy()  # writes without torch's dispatch
        # float32 always: the timestep (up to 999) and sqrt(a_t) lose too much in half precision
        self.controls = (
            self._controls_host
            if device.type == "cpu"
            else torch.zeros(NUM_CONTROLS, dtype=torch.float32, device=device)
        )
        self.has_prompt = False
        self.fresh = True
        self._fill_noise(self.noise_to, seed)
        self.noise_from.copy_(self.noise_to)

    # -- prompts and seeds -------------------------------------------------------------------

    @torch.inference_mode()
    def set_prompt(
        self, embedding: Embedding, *, from_mix: float = 1.0, slot: PromptSlot = "a"
    ) -> None:
        """The first prompt is set outright; later ones glide from what is showing.

        The glide's target is prompt A morphed towards prompt B by :attr:`morph`, so changing
        either prompt fades, and a morph fader moves the target in place (one lerp, no glide).
        """
        embedding = torch.as_tensor(embedding).to(device=self.device, dtype=self.dtype)
        if tuple(embedding.shape) != self.embed_shape:
            raise ValueError(
                f"prompt embedding has shape {tuple(embedding.shape)}, "
                f"the model wants {self.embed_shape}"
            )
        target = self.prompt_a if slot == "a" else self.prompt_b
        if self.has_prompt:
            self.embeds_from.lerp_(self.embeds_to, clamp01(from_mix))
        target.copy_(embedding)
        self.has_b = self.has_b or slot == "b"
        self._mix_into(self.embeds_to)
        if not self.has_prompt and slot == "a":
            self.embeds_from.copy_(self.embeds_to)
            self.has_prompt = True

    def _mix_into(self, out: torch.Tensor) -> None:
        out.copy_(self.prompt_a)
        if self.has_b and self.morph > 0.0:
            out.lerp_(self.prompt_b, self.morph)

    @torch.inference_mode()
    def set_seed(self, seed: int, *, from_mix: float = 1.0) -> None:
        cos, sin = seed_weights(from_mix)
        self.noise_from.mul_(cos).add_(self.noise_to, alpha=sin)
        self._fill_noise(self.noise_to, seed)

    def _fill_noise(self, target: torch.Tensor, seed: int) -> None:
        # Drawn on the CPU: the same seed gives the same noise on every device and backend.
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(self.latent_shape, generator=generator, dtype=torch.float32)
        target.copy_(noise)

    # -- per frame ---------------------------------------------------------------------------

    def reset(self) -> None:
        self.fresh = True

    @torch.inference_mode()
    def clear_state(self) -> None:
        """Zero the temporal state and start afresh: after a frame that went NaN, a reset
        alone is not enough (feedback 0 still multiplies the NaNs by 0, which is NaN)."""
        self.previous_x0.zero_()
        self.previous_output.zero_()
        self.fresh = True

    def update_controls(self, params: FrameParams) -> torch.Tensor:
        """Write this frame's controls vector (one host write, one upload) and return it.

        Right after start or :meth:`reset` feedback and smoothing are forced to 0, so no frame
        is ever mixed with stale or empty temporal state. Call once per frame; it clears the
        fresh flag.
        """
        if not self.has_prompt:
            raise RuntimeError("set_prompt() must be called before the first frame")
        morph = clamp01(params.morph) if self.has_b else 0.0
        if morph != self.morph:
            self.morph = morph
            with torch.inference_mode():
                self._mix_into(self.embeds_to)
        level = self.schedule.at_strength(params.strength)
        cos, sin = seed_weights(params.seed_mix)
        host = self._controls_np
        host[Control.TIMESTEP] = level.timestep
        host[Control.SQRT_ALPHA] = level.sqrt_alpha
        host[Control.SQRT_ONE_MINUS_ALPHA] = level.sqrt_one_minus_alpha
        host[Control.FEEDBACK] = 0.0 if self.fresh else clamp01(params.feedback)
        host[Control.SMOOTHING] = 0.0 if self.fresh else clamp01(params.smoothing)
        host[Control.BLEND] = clamp01(params.blend)
        host[Control.PROMPT_MIX] = clamp01(params.prompt_mix)
        host[Control.NOISE_FROM] = cos
        host[Control.NOISE_TO] = sin
        if self.controls is not self._controls_host:
            self.controls.copy_(self._controls_host, non_blocking=True)
        self.fresh = False
        return self.controls

    def arguments(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:class:`FrameStep`'s inputs, in its order: ``frame_step(*inputs.arguments(image))``."""
        return (
            image,
            self.noise_from,
            self.noise_to,
            self.embeds_from,
            self.embeds_to,
            self.previous_x0,
            self.previous_output,
            self.controls,
        )

    def run(self, frame_step: Any, image: torch.Tensor) -> torch.Tensor:
        """One :class:`FrameStep` call on these inputs (after :meth:`update_controls`); keeps
        its x0 and smoothed output as the next frame's temporal state, returns the output."""
        output, x0, smoothed = frame_step(*self.arguments(image))
        self.previous_x0.copy_(x0)
        self.previous_output.copy_(smoothed)
        result: torch.Tensor = output
        return result


class StepInputsBackend(Backend):
    """A backend whose prompts, seeds and resets are its :class:`StepInputs`' (every one)."""

    inputs: StepInputs

    def set_prompt(
        self, embedding: Embedding, *, from_mix: float = 1.0, slot: PromptSlot = "a"
    ) -> None:
        self.inputs.set_prompt(embedding, from_mix=from_mix, slot=slot)

    def set_seed(self, seed: int, *, from_mix: float = 1.0) -> None:
        self.inputs.set_seed(seed, from_mix=from_mix)

    def reset(self) -> None:
        self.inputs.reset()


class TextEncoder:
    """Prompt text -> hidden states with the torch text encoder, for every backend.

    Called from the prompt thread while frames run elsewhere, so one lock keeps two prompts
    from sharing the encoder at once.
    """

    def __init__(
        self, text_encoder: Any, tokenizer: Any, *, device: torch.device, tokens: int
    ) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.device = device
        self.tokens = tokens
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, text: str) -> Embedding:
        ids = self.tokenizer(
            text,
            padding="max_length",
            max_length=self.tokens,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with self._lock:
            hidden: torch.Tensor = self.text_encoder(ids.to(self.device))[0]
        return hidden


def clamp01(value: float) -> float:
    """Clamp to [0, 1]; NaN becomes 0 (a control value never poisons the picture)."""
    return 0.0 if not value > 0.0 else min(value, 1.0)


def seed_weights(mix: float) -> tuple[float, float]:
    """(cos, sin) of the glide angle, exact at both ends so a settled seed is exactly its noise."""
    mix = clamp01(mix)
    if mix >= 1.0:
        return 0.0, 1.0
    if mix <= 0.0:
        return 1.0, 0.0
    angle = mix * math.pi / 2
    return math.cos(angle), math.sin(angle)
