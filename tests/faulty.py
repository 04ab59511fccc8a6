"""A backend that wraps a real one and fails, or dawdles, on request: fault injection for
the engine's fault handling (the model itself is real)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from livediffusion_models.backends import Backend, FrameParams


class Faulty(Backend):
    """The real tiny backend, with faults injected into ``step`` on request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail = 0  # fail this many steps
        self.sleep = 0.0  # take this long per step
        self.steps = 0
        self.fail_streams: dict[int, int] = {}  # stream -> how many of its frames fail (NaN)
        self.resets: list[int | None] = []  # the stream of each reset() (None: all)

    @property
    def streams(self) -> int:
        streams: int = self.inner.streams
        return streams

    @property
    def model_size(self) -> tuple[int, int]:
        size: tuple[int, int] = self.inner.model_size
        return size

    def encode_prompt(self, text: str) -> Any:
        return self.inner.encode_prompt(text)

    def set_prompt(
        self, embedding: Any, *, from_mix: float = 1.0, slot: Any = "a", stream: int = 0
    ) -> None:
        self.inner.set_prompt(embedding, from_mix=from_mix, slot=slot, stream=stream)

    def set_seed(self, seed: int, *, from_mix: float = 1.0, stream: int = 0) -> None:
        self.inner.set_seed(seed, from_mix=from_mix, stream=stream)

    def reset(self, stream: int | None = None) -> None:
        self.resets.append(stream)
        self.inner.reset(stream)

    def step_many(
        self,
        pixels: Sequence[Any],
        params: Sequence[Any],
        *,
        out: Sequence[Any],
    ) -> list[Exception | None]:
        """The real batch, then the injected faults: a whole-batch failure (``fail``), or one
        stream's frame reported as NaN the way the torch backend reports it (its state
        cleared, the others untouched)."""
        from livediffusion_models.errors import NonFiniteFrameError

        if self.inner.streams == 1:
            return super().step_many(pixels, params, out=out)
        self.steps += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail > 0:
            self.fail -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        errors: list[Exception | None] = self.inner.step_many(pixels, params, out=out)
        for stream, left in list(self.fail_streams.items()):
            if left > 0 and pixels[stream] is not None:
                self.fail_streams[stream] = left - 1
                self.inner.reset(stream)
                errors[stream] = NonFiniteFrameError("injected NaN on one stream")
        return errors

    def step(self, pixels: Any, params: FrameParams, *, out: Any) -> None:
        self.steps += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail > 0:
            self.fail -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.inner.step(pixels, params, out=out)

    def passthrough(self, pixels: Any, *, out: Any, stream: int = 0) -> None:
        self.inner.passthrough(pixels, out=out, stream=stream)

    def stage_timers(self) -> Mapping[str, Callable[[], None]]:
        return {}

    def warmup(self, *, frames: int | None = None) -> float:
        """A slow machine is slow in its warm-up too: it runs the same step."""
        if frames is None:
            frames = self.inner.warmup_frames
        time.sleep(self.sleep * frames)
        return float(self.inner.warmup(frames=frames)) + self.sleep * frames

    def close(self) -> None:
        self.inner.close()
