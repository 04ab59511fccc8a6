"""The LoRA weights the performer set, brought to the model between frames.

OSC and MIDI only change the :class:`~livediffusion.control.styles.StyleStore`; the frame
thread calls :meth:`LoraWeights.apply` before each frame, so the weights are never rewritten
while a frame runs. Each LoRA's weight glides like every numeric value (``/glide`` seconds, a
preset recall's own time). A change goes through ``backend.set_lora_weights`` (in place on
torch: no recompile, no re-capture; the nearest baked style on Core ML); when a LoRA on the
text encoder moved, the prompts are encoded again. While nothing moves, a frame costs one
integer comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from livediffusion.control.styles import StyleStore
from livediffusion.run.glide import Ramp
from livediffusion_models.backends import Backend

__all__ = ["LoraWeights"]

log = logging.getLogger(__name__)

_LOG_EVERY = 10.0  # seconds between debug lines about weight changes


class LoraWeights:
    def __init__(
        self,
        styles: StyleStore,
        backend: Backend,
        *,
        glide: Callable[[], float],
        reencode: Callable[[], None],
    ) -> None:
        """``glide``: ``/glide`` now; ``reencode``: encode the prompts again and hand them to
        the backend (the engine's, which knows the prompts)."""
        self._styles = styles
        self._backend = backend
        self._glide = glide
        self._reencode = reencode
        started = tuple(backend.lora_weights)
        if len(started) != len(styles):
            raise RuntimeError(
                f"the model holds {len(started)} LoRAs and the controls {len(styles)}"
            )
        self._ramps = [Ramp(weight) for weight in started]
        self._applied = started
        self._seen = -1  # the store's version last looked at: the first frame looks
        self._moving = False
        styles.applied = started
        self._changes = 0  # since the last debug line
        self._spent = 0.0
        self._said = 0.0

    @property
    def active(self) -> bool:
        return bool(self._ramps)

    def apply(self, now: float) -> bool:
        """Bring the model's weights one frame closer to the performer's; True when they
        changed (the next frame will look different with the same input)."""
        version = self._styles.version
        if not self._ramps or (version == self._seen and not self._moving):
            return False
        self._seen = version
        override = self._styles.glide_override()
        seconds = self._glide() if override is None else override
        targets = self._styles.snapshot()
        weights = tuple(
            ramp.follow(target.effective, now, seconds)
            for ramp, target in zip(self._ramps, targets, strict=True)
        )
        self._moving = any(
            weight != target.effective for weight, target in zip(weights, targets, strict=True)
        )
        if weights == self._applied:
            return False
        started = time.perf_counter()
        try:
            change = self._backend.set_lora_weights(weights)
            if change.reencode_prompts:
                self._reencode()
        except Exception:  # a bug or the device: say it, keep the frames flowing
            log.exception("could not set the LoRA weights to %s", _shown(weights))
            self._applied = weights  # not again every frame: the next change tries anew
            return False
        self._applied = weights
        self._styles.applied = tuple(self._backend.lora_weights)
        self._said_about(time.perf_counter() - started, now, change.reencode_prompts)
        return change.applied

    def _said_about(self, seconds: float, now: float, reencoded: bool) -> None:
        """A debug line about the cost of changes, at most every few seconds, never per
        frame: a crossfade changes the weights on every frame it lasts."""
        self._changes += 1
        self._spent += seconds
        if now - self._said < _LOG_EVERY:
            return
        log.debug(
            "LoRA weights %s: %d change(s), %.2f ms each on average%s",
            _shown(self._styles.applied),
            self._changes,
            1000.0 * self._spent / self._changes,
            " (prompts encoded again)" if reencoded else "",
        )
        self._changes = 0
        self._spent = 0.0
        self._said = now


def _shown(weights: tuple[float, ...]) -> str:
    return " ".join(f"{weight:.3g}" for weight in weights)
