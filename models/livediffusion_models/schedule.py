"""Noise levels: how ``strength`` becomes a timestep and the two scalars the step needs.

The mapping follows diffusers' img2img with ``timestep_spacing="trailing"``: a strength of
``k/N`` starts at the same timestep diffusers picks for ``N`` steps at that strength, so
``strength=1.0`` is ``t=999`` (SDXS's only trained timestep) and ``strength=0.5`` is ``t=499``
(SD-Turbo's two-step img2img recipe). Every strength maps to a valid index: values are
clamped to ``[0, 1]`` before the lookup, so no control value can index out of range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NoiseLevel", "NoiseSchedule", "strength_to_timestep"]


def strength_to_timestep(strength: float, *, num_train_timesteps: int = 1000) -> int:
    """``t = clamp(round(strength * T) - 1, 0, T - 1)``; NaN is rejected, not clamped."""
    if math.isnan(strength):
        raise ValueError("strength is NaN")
    strength = min(max(strength, 0.0), 1.0)
    return min(max(round(strength * num_train_timesteps) - 1, 0), num_train_timesteps - 1)


@dataclass(frozen=True, slots=True)
class NoiseLevel:
    """What the frame step needs for one strength: ``noisy = a * clean + b * noise``."""

    timestep: int
    sqrt_alpha: float
    sqrt_one_minus_alpha: float


@dataclass(frozen=True, slots=True)
class NoiseSchedule:
    """The training schedule's cumulative alphas, read from a diffusers scheduler config."""

    alphas_cumprod: tuple[float, ...]

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Computed the way diffusers does (float32 torch), so parity tests hold to fp32."""
        import torch

        steps = int(config.get("num_train_timesteps", 1000))
        start = float(config.get("beta_start", 0.00085))
        end = float(config.get("beta_end", 0.012))
        kind = config.get("beta_schedule", "scaled_linear")
        if config.get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr schedules are not supported")
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"prediction_type {config.get('prediction_type')!r} is not supported; "
                "the one-step math expects epsilon prediction"
            )
        if kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
        elif kind == "linear":
            betas = torch.linspace(start, end, steps, dtype=torch.float32)
        else:
            raise ValueError(f"beta_schedule {kind!r} is not supported")
        cumprod = torch.cumprod(1.0 - betas, dim=0)
        return cls(alphas_cumprod=tuple(float(v) for v in cumprod))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def at_strength(self, strength: float) -> NoiseLevel:
        t = strength_to_timestep(strength, num_train_timesteps=self.num_train_timesteps)
        alpha = self.alphas_cumprod[t]
        return NoiseLevel(
            timestep=t, sqrt_alpha=math.sqrt(alpha), sqrt_one_minus_alpha=math.sqrt(1.0 - alpha)
        )
