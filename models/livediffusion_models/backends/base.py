"""What every backend offers the engine, and the per-frame values it is given."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Backend", "FrameParams"]

Pixels = npt.NDArray[np.uint8]


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


class Backend(abc.ABC):
    """Runs frames through the model. ``step`` and ``set_*`` belong to one thread.

    ``encode_prompt`` may be called from another thread while frames run, so a new prompt is
    encoded without stalling the picture.
    """

    name: str

    @property
    @abc.abstractmethod
    def model_size(self) -> tuple[int, int]:
        """(height, width) the model runs at."""

    @abc.abstractmethod
    def encode_prompt(self, text: str) -> Any:
        """Text -> an embedding this backend's ``set_prompt`` accepts. Thread-safe."""

    @abc.abstractmethod
    def set_prompt(self, embedding: Any, *, from_mix: float = 1.0) -> None:
        """Start fading to ``embedding`` from whatever was showing at ``from_mix``.

        The engine then raises ``prompt_mix`` from 0 to 1. The first call sets the prompt
        outright.
        """

    @abc.abstractmethod
    def set_seed(self, seed: int, *, from_mix: float = 1.0) -> None:
        """Start fading to the fixed noise of ``seed``; like :meth:`set_prompt`."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the temporal state: the next frame uses no feedback and no smoothing."""

    @abc.abstractmethod
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        """Process one RGBA frame of any size into ``out`` (RGBA, any size)."""

    @abc.abstractmethod
    def passthrough(self, pixels: Pixels, *, out: Pixels) -> None:
        """Scale the input into ``out`` as the model path would frame it, with no model."""

    def warmup(self, *, frames: int = 2) -> float:
        """Run a few grey frames at the model size; returns the seconds it took.

        The first frames through a model pick kernels and fill allocator caches, and are
        several times slower than the rest: better before the show than on its first frames.
        Needs a prompt set; leaves the temporal state reset.
        """
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
