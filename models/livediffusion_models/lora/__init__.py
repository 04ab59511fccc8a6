"""LoRA styles: read with diffusers' own loaders, applied as in-place weight updates.

A LoRA changes a model by a low-rank delta on some of its weights: ``W = W0 + w * delta``.
livediffusion reads the file with diffusers' own loaders (``lora_state_dict`` and the
``load_lora_into_*`` calls, whose key conversions for kohya/A1111 and diffusers/PEFT files
diffusers maintains) into a *hollow* copy of the model (the same modules, weights of the right
shape but no storage), asks PEFT for each layer's delta (``get_delta_weight``), and checks
everything before the real model is touched. Then :class:`.stack.LoraStack` keeps, on the
device, the base weight of every touched layer and each LoRA's delta, and a weight change
recomputes ``W = W0 + sum_i w_i * delta_i`` *in place*: the same tensors the
module (and a captured CUDA graph, and a compiled model) read, so there is nothing to re-trace
and nothing per frame.

LoRA weights are global to the model: every stream shares the one UNet, so every stream sees
the same styles. A LoRA that touches the text encoder changes what prompts encode to: after
such a weight change the prompts must be encoded again (:class:`WeightChange` says so).

Importing this package is cheap (no torch): the CLI parses ``--lora`` values with
:class:`LoraRequest`. The work lives in ``files`` (where a LoRA is), ``formats`` (reading a
file far enough to check it), ``read`` (diffusers' parsing and the checks), ``stack``
(in-place weights) and ``peft_runtime`` (the unfused PEFT alternative, kept for measuring
which costs less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LoraRequest", "WeightChange"]


@dataclass(frozen=True, slots=True)
class LoraRequest:
    """One ``--lora PATH|HUB_ID[:WEIGHT]`` (or one ``[[lora]]`` table of the config file)."""

    source: str
    """A ``.safetensors`` (or ``.bin``/``.pt``) file, a folder holding one, or a hub id
    (``owner/name`` or ``owner/name/file.safetensors``)."""
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> LoraRequest:
        """``PATH[:WEIGHT]``: the weight is what follows the last ``:`` when it is a number,
        so ``C:\\styles\\ink.safetensors`` stays a path and ``ink.safetensors:0.7`` is 0.7."""
        text = text.strip()
        source, sep, tail = text.rpartition(":")
        if sep and source:
            try:
                weight = float(tail)
            except ValueError:
                pass
            else:
                if not math.isfinite(weight):
                    raise ValueError(f"LoRA weight must be a finite number, got {tail!r}")
                return cls(source=source, weight=weight)
        if not text:
            raise ValueError("a LoRA needs a file, folder or hub id")
        return cls(source=text)


@dataclass(frozen=True, slots=True)
class WeightChange:
    """What a LoRA weight change did."""

    applied: bool
    """Whether any weight changed at all (False: the same weights as before, nothing done)."""
    reencode_prompts: bool
    """Whether the text encoder's weights changed: encode the prompts again to see it."""
