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
from collections.abc import Sequence
from typing import Any

import torch

from livediffusion_models.backends.base import Backend, Embedding, FrameParams, PromptSlot
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, Control

__all__ = [
    "StepInputs",
    "StepInputsBackend",
    "TextEncoder",
    "clamp",
    "clamp01",
    "seed_weights",
]


class StepInputs:
    """Noise and prompt glide endpoints, the controls, the temporal state and its flags.

    ``streams`` rows, one per stream: every tensor's first dimension is the stream, and every
    per-stream call names its row (``stream=k``). One stream is the common case and costs
    nothing extra; with several, a stream without a new frame this time is *inactive*: its row
    still runs through the batched step (a captured graph has a fixed batch) but its temporal
    state is kept as it was, so it continues exactly where it stopped.
    """

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
        streams: int = 1,
    ) -> None:
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        self.device = device
        self.dtype = dtype
        self.schedule = schedule
        self.streams = streams
        self.latent_shape = (1, *latent_shape[1:])  # one stream's
        self.embed_shape = (1, *embed_shape[1:])

        def zeros(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.zeros((streams, *shape[1:]), device=device, dtype=dtype)

        self.noise_from = zeros(latent_shape)
        self.noise_to = zeros(latent_shape)
        self.embeds_from = zeros(embed_shape)
        self.embeds_to = zeros(embed_shape)  # prompt A, or A morphed towards B
        self.prompt_a = zeros(embed_shape)
        self.prompt_b = zeros(embed_shape)
        self.previous_x0 = zeros(latent_shape)
        self.previous_output = zeros(image_shape)
        self.has_b = [False] * streams
        self.morph = [0.0] * streams
        self.has_prompt = [False] * streams
        self.fresh = [True] * streams
        pin = device.type == "cuda"
        self._controls_host = torch.zeros(
            (streams, NUM_CONTROLS), dtype=torch.float32, pin_memory=pin
        )
        self._controls_np = self._controls_host.numpy()  # writes without torch's dispatch
        # float32 always: the timestep (up to 999) and sqrt(a_t) lose too much in half precision
        rows = (
            self._controls_host
            if device.type == "cpu"
            else torch.zeros((streams, NUM_CONTROLS), dtype=torch.float32, device=device)
        )
        self._controls_rows = rows
        # one stream: the plain (NUM_CONTROLS,) vector, as the Core ML programs take it
        self.controls = rows[0] if streams == 1 else rows
        # which rows take this frame's results into their temporal state (several streams only)
        self._active_host = torch.ones((streams, 1, 1, 1), dtype=torch.bool, pin_memory=pin)
        self._active_np = self._active_host.numpy()
        self.active = (
            self._active_host
            if device.type == "cpu"
            else torch.ones((streams, 1, 1, 1), dtype=torch.bool, device=device)
        )
        for stream in range(streams):
            self._fill_noise(self.noise_to[stream : stream + 1], seed)
        self.noise_from.copy_(self.noise_to)

    def _check(self, stream: int) -> None:
        if not 0 <= stream < self.streams:
            raise IndexError(f"stream {stream} does not exist (0..{self.streams - 1})")

    # -- prompts and seeds -------------------------------------------------------------------

    @torch.inference_mode()
    def set_prompt(
        self,
        embedding: Embedding,
        *,
        from_mix: float = 1.0,
        slot: PromptSlot = "a",
        stream: int = 0,
    ) -> None:
        """The first prompt is set outright; later ones glide from what is showing.

        The glide's target is prompt A morphed towards prompt B by :attr:`morph`, so changing
        either prompt fades, and a morph fader moves the target in place (one lerp, no glide).
        """
        self._check(stream)
        embedding = torch.as_tensor(embedding).to(device=self.device, dtype=self.dtype)
        if tuple(embedding.shape) != self.embed_shape:
            raise ValueError(
                f"prompt embedding has shape {tuple(embedding.shape)}, "
                f"the model wants {self.embed_shape}"
            )
        row = slice(stream, stream + 1)
        target = (self.prompt_a if slot == "a" else self.prompt_b)[row]
        if self.has_prompt[stream]:
            self.embeds_from[row].lerp_(self.embeds_to[row], clamp01(from_mix))
        target.copy_(embedding)
        self.has_b[stream] = self.has_b[stream] or slot == "b"
        self._mix_into(stream)
        if not self.has_prompt[stream] and slot == "a":
            self.embeds_from[row].copy_(self.embeds_to[row])
            self.has_prompt[stream] = True

    def _mix_into(self, stream: int) -> None:
        row = slice(stream, stream + 1)
        out = self.embeds_to[row]
        out.copy_(self.prompt_a[row])
        if self.has_b[stream] and self.morph[stream] > 0.0:
            out.lerp_(self.prompt_b[row], self.morph[stream])

    @torch.inference_mode()
    def set_seed(self, seed: int, *, from_mix: float = 1.0, stream: int = 0) -> None:
        self._check(stream)
        row = slice(stream, stream + 1)
        cos, sin = seed_weights(from_mix)
        self.noise_from[row].mul_(cos).add_(self.noise_to[row], alpha=sin)
        self._fill_noise(self.noise_to[row], seed)

    def _fill_noise(self, target: torch.Tensor, seed: int) -> None:
        # Drawn on the CPU: the same seed gives the same noise on every device and backend.
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(self.latent_shape, generator=generator, dtype=torch.float32)
        target.copy_(noise)

    # -- per frame ---------------------------------------------------------------------------

    def reset(self, stream: int | None = None) -> None:
        """Forget one stream's temporal state (``None``: every stream's) from the next frame."""
        for row in range(self.streams) if stream is None else (stream,):
            self._check(row)
            self.fresh[row] = True

    @torch.inference_mode()
    def clear_state(self, stream: int | None = None) -> None:
        """Zero the temporal state and start afresh: after a frame that went NaN, a reset
        alone is not enough (feedback 0 still multiplies the NaNs by 0, which is NaN)."""
        rows = range(self.streams) if stream is None else (stream,)
        for row in rows:
            self._check(row)
            self.previous_x0[row].zero_()
            self.previous_output[row].zero_()
            self.fresh[row] = True

    def update_controls(self, params: FrameParams) -> torch.Tensor:
        """One stream's frame: :meth:`update_rows` with that stream's values."""
        return self.update_rows((params,))

    def update_rows(self, params: Sequence[FrameParams | None]) -> torch.Tensor:
        """Write this frame's controls (one host write, one upload) and return them.

        ``params[k]`` is stream ``k``'s values, or None for a stream without a new frame: its
        row keeps its last values and its temporal state is left untouched by :meth:`run`.
        Right after start or :meth:`reset` feedback and smoothing are forced to 0, so no frame
        is ever mixed with stale or empty temporal state. Call once per frame; it clears the
        fresh flag of every active stream.
        """
        if len(params) != self.streams:
            raise ValueError(f"{len(params)} streams' values for {self.streams} streams")
        host = self._controls_np
        for stream, values in enumerate(params):
            self._active_np[stream] = values is not None
            if values is None:
                continue
            if not self.has_prompt[stream]:
                raise RuntimeError(f"set_prompt(stream={stream}) must come before its first frame")
            morph = clamp01(values.morph) if self.has_b[stream] else 0.0
            if morph != self.morph[stream]:
                self.morph[stream] = morph
                with torch.inference_mode():
                    self._mix_into(stream)
            level = self.schedule.at_strength(values.strength)
            cos, sin = seed_weights(values.seed_mix)
            fresh = self.fresh[stream]
            row = host[stream]
            row[Control.TIMESTEP] = level.timestep
            row[Control.SQRT_ALPHA] = level.sqrt_alpha
            row[Control.SQRT_ONE_MINUS_ALPHA] = level.sqrt_one_minus_alpha
            row[Control.FEEDBACK] = 0.0 if fresh else clamp01(values.feedback)
            row[Control.SMOOTHING] = 0.0 if fresh else clamp01(values.smoothing)
            row[Control.BLEND] = clamp01(values.blend)
            row[Control.PROMPT_MIX] = clamp01(values.prompt_mix)
            row[Control.NOISE_FROM] = cos
            row[Control.NOISE_TO] = sin
            row[Control.CONTROLNET_SCALE] = clamp(values.controlnet_scale, 0.0, 2.0)
            self.fresh[stream] = False
        if self._controls_rows is not self._controls_host:
            self._controls_rows.copy_(self._controls_host, non_blocking=True)
            if self.streams > 1:
                self.active.copy_(self._active_host, non_blocking=True)
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
        """One :class:`FrameStep` call on these inputs (after :meth:`update_rows`); keeps
        its x0 and smoothed output as the next frame's temporal state, returns the output.

        With several streams an inactive row's state is kept (``where``, inside whatever graph
        captures this call), so the batch never needs re-capturing when a stream waits.
        """
        output, x0, smoothed = frame_step(*self.arguments(image))
        if self.streams == 1:
            self.previous_x0.copy_(x0)
            self.previous_output.copy_(smoothed)
        else:
            self.previous_x0.copy_(torch.where(self.active, x0, self.previous_x0))
            self.previous_output.copy_(torch.where(self.active, smoothed, self.previous_output))
        result: torch.Tensor = output
        return result


class StepInputsBackend(Backend):
    """A backend whose prompts, seeds and resets are its :class:`StepInputs`' (every one)."""

    inputs: StepInputs

    @property
    def streams(self) -> int:
        return self.inputs.streams

    def set_prompt(
        self,
        embedding: Embedding,
        *,
        from_mix: float = 1.0,
        slot: PromptSlot = "a",
        stream: int = 0,
    ) -> None:
        self.inputs.set_prompt(embedding, from_mix=from_mix, slot=slot, stream=stream)

    def set_seed(self, seed: int, *, from_mix: float = 1.0, stream: int = 0) -> None:
        self.inputs.set_seed(seed, from_mix=from_mix, stream=stream)

    def reset(self, stream: int | None = None) -> None:
        self.inputs.reset(stream)


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

    @property
    def lock(self) -> threading.Lock:
        """Held while encoding; a text-encoder LoRA change holds it too, so an encoding
        never sees half-rewritten weights."""
        return self._lock

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
    return clamp(value, 0.0, 1.0)


def clamp(value: float, low: float, high: float) -> float:
    """Clamp to [low, high]; NaN becomes ``low``."""
    return low if not value > low else min(value, high)


def seed_weights(mix: float) -> tuple[float, float]:
    """(cos, sin) of the glide angle, exact at both ends so a settled seed is exactly its noise."""
    mix = clamp01(mix)
    if mix >= 1.0:
        return 0.0, 1.0
    if mix <= 0.0:
        return 1.0, 0.0
    angle = mix * math.pi / 2
    return math.cos(angle), math.sin(angle)
