"""What every backend offers the engine, the per-frame values it is given, and how it is built.

The seam is typed end to end so that a misspelt option or a wrong embedding fails in mypy, not
on stage: an embedding is a :data:`Embedding` (a torch tensor: every backend encodes prompts
with the torch text encoder, Core ML included), the modules come as :class:`ModelComponents`,
and the options as one frozen dataclass per backend (:class:`BackendOptions` and subclasses).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from livediffusion_models.imaging import FitMode
from livediffusion_models.lora import WeightChange

if TYPE_CHECKING:
    import torch

__all__ = [
    "Backend",
    "BackendOptions",
    "Embedding",
    "FrameParams",
    "ModelComponents",
    "Pixels",
    "PromptSlot",
]

Pixels: TypeAlias = npt.NDArray[np.uint8]

Embedding: TypeAlias = "torch.Tensor"
"""A prompt's text-encoder hidden states, ``(1, tokens, width)``, as ``encode_prompt`` made it."""

PromptSlot: TypeAlias = Literal["a", "b"]

StageTimer: TypeAlias = Callable[[], None]
"""Runs one stage of the last frame again and returns once the hardware has finished it."""


class ModelComponents(Protocol):
    """The loaded modules a backend is built from (``weights.LoadedModel`` is one)."""

    @property
    def unet(self) -> Any:
        """diffusers ``UNet2DConditionModel`` (diffusers ships no type information)."""

    @property
    def vae(self) -> Any:
        """diffusers ``AutoencoderTiny``."""

    @property
    def text_encoder(self) -> Any:
        """transformers ``CLIPTextModel``."""

    @property
    def tokenizer(self) -> Any:
        """transformers ``CLIPTokenizer``."""

    @property
    def scheduler_config(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendOptions:
    """What every backend is told: the model's resolution, how to fit pictures, the first seed."""

    size: tuple[int, int]
    """(height, width) the model runs at; a multiple of 64."""
    fit: FitMode = "crop"
    seed: int = 0
    streams: int = 1
    """How many streams the backend serves, each with its own prompts, seed and temporal state
    (:meth:`Backend.step_many`): one batch on torch, one program call after another on Core ML."""


@dataclass(frozen=True, slots=True)
class FrameParams:
    """One frame's control values, after the engine applied glides and clamping.

    ``prompt_mix`` and ``seed_mix`` run 0 -> 1 while a new prompt or seed fades in (see
    :meth:`Backend.set_prompt`); everything else is the performer's value as it is.
    """

    strength: float = 1.0
    feedback: float = 0.0
    smoothing: float = 0.0
    blend: float = 0.0
    prompt_mix: float = 1.0
    seed_mix: float = 1.0
    morph: float = 0.0
    """Prompt A -> B in embedding space (0 = A); ignored until a B prompt was set."""
    controlnet_scale: float = 1.0
    """How much the ControlNet steers (``/controlnet/scale``, 0..2, 0 = as if none); ignored
    without a ControlNet. Per stream, like every value here."""


class Backend(abc.ABC):
    """Runs frames through the model. ``step`` and ``set_*`` belong to one thread.

    ``encode_prompt`` may be called from another thread while frames run, so a new prompt is
    encoded without stalling the picture.

    A backend may serve several streams (:attr:`streams`): each has its own prompts, seed and
    temporal state, named by ``stream=k``, and :meth:`step_many` runs one frame of each stream
    that has one (in a single batch on torch; Core ML runs its batch-1 programs once per stream).
    """

    name: str

    @property
    def streams(self) -> int:
        """How many streams this backend holds state for (1 unless built for more)."""
        return 1

    @property
    def loras(self) -> tuple[str, ...]:
        """The LoRAs on the model, by name, in ``/lora/N`` order (N counts from 0).

        LoRA weights are global to the model: every stream shares the one UNet, so a weight
        change shows in every stream.
        """
        return ()

    @property
    def lora_weights(self) -> tuple[float, ...]:
        """The weight each LoRA runs at now (what ``/status`` echoes)."""
        return ()

    @property
    def lora_weights_live(self) -> bool:
        """Whether any weight can be set (torch), or only the baked styles (Core ML: a
        weight vector picks the nearest baked style, a cut rather than a crossfade)."""
        return False

    def set_lora_weights(self, weights: Sequence[float]) -> WeightChange:
        """Set every LoRA's weight (``/lora/N/on 0`` is weight 0); from the frame thread,
        between frames, like ``set_prompt``. Unchanged weights cost nothing.

        When the result says ``reencode_prompts``, a LoRA on the text encoder changed: encode
        the current prompts again and ``set_prompt`` them (``from_mix=1``).
        """
        if len(weights) != len(self.loras):
            raise ValueError(f"{len(weights)} LoRA weights for {len(self.loras)} LoRAs")
        return WeightChange(applied=False, reencode_prompts=False)

    @property
    @abc.abstractmethod
    def model_size(self) -> tuple[int, int]:
        """(height, width) the model runs at."""

    @abc.abstractmethod
    def encode_prompt(self, text: str) -> Embedding:
        """Text -> an embedding this backend's ``set_prompt`` accepts. Thread-safe."""

    @abc.abstractmethod
    def set_prompt(
        self,
        embedding: Embedding,
        *,
        from_mix: float = 1.0,
        slot: PromptSlot = "a",
        stream: int = 0,
    ) -> None:
        """Start fading to ``embedding`` from whatever was showing at ``from_mix``.

        The engine then raises ``prompt_mix`` from 0 to 1. The first call sets the prompt
        outright. ``slot``: prompt A, or prompt B that :attr:`FrameParams.morph` mixes in.
        """

    @abc.abstractmethod
    def set_seed(self, seed: int, *, from_mix: float = 1.0, stream: int = 0) -> None:
        """Start fading to the fixed noise of ``seed``; like :meth:`set_prompt`."""

    @abc.abstractmethod
    def reset(self, stream: int | None = None) -> None:
        """Forget the temporal state (of one stream, or of all): the next frame uses no
        feedback and no smoothing."""

    @abc.abstractmethod
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        """Process one RGBA frame of any size into ``out`` (RGBA, any size); stream 0."""

    def step_many(
        self,
        pixels: Sequence[Pixels | None],
        params: Sequence[FrameParams | None],
        *,
        out: Sequence[Pixels | None],
    ) -> list[Exception | None]:
        """One frame of every stream that has one (``pixels[k]`` None: stream ``k`` waits).

        Returns one entry per stream: None, or why that stream's frame failed (its ``out`` is
        then unspecified). A failure of one stream's picture (NaN) never fails the others.
        A backend of one stream runs :meth:`step`.
        """
        if len(pixels) != 1 or self.streams != 1:
            raise ValueError(f"{type(self).__name__} serves one stream, got {len(pixels)}")
        frame, values, target = pixels[0], params[0], out[0]
        if frame is None:
            return [None]
        if values is None or target is None:
            raise ValueError("a stream with a frame needs its params and out")
        try:
            self.step(frame, values, out=target)
        except Exception as exc:
            return [exc]
        return [None]

    @abc.abstractmethod
    def passthrough(self, pixels: Pixels, *, out: Pixels, stream: int = 0) -> None:
        """Scale the input into ``out`` as the model path would frame it, with no model."""

    @abc.abstractmethod
    def stage_timers(self) -> Mapping[str, StageTimer]:
        """The parts of a frame that ``livediffusion bench`` times one by one.

        Call after at least one :meth:`step`: each timer repeats its stage on that frame's
        buffers and waits for the hardware, so wall time around it is the stage's time.
        """

    @property
    def warmup_frames(self) -> int:
        """Grey frames :meth:`warmup` runs unless told otherwise."""
        return 2

    def warmup(self, *, frames: int | None = None) -> float:
        """Run a few grey frames at the model size; returns the seconds it took.

        The first frames through a model pick kernels and fill allocator caches, and are
        several times slower than the rest: better before the show than on its first frames.
        Needs a prompt set; leaves the temporal state reset.
        """
        if frames is None:
            frames = self.warmup_frames
        height, width = self.model_size
        pixels = np.full((height, width, 4), 128, dtype=np.uint8)
        out = np.empty_like(pixels)
        started = time.perf_counter()
        for _ in range(frames):
            self.step(pixels, FrameParams(), out=out)
        self.reset()
        return time.perf_counter() - started

    @abc.abstractmethod
    def close(self) -> None:
        """Release device memory. Safe to call twice."""
