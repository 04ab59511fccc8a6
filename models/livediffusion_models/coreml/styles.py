"""LoRAs in Core ML: baked into the program's weights, one mix or one function per style.

A Core ML program holds its weights as constants, so a LoRA is baked in at conversion: the
UNet's weights are set to ``W0 + sum_i w_i * delta_i`` (the same in-place stack the torch
backend uses) and the program is converted from them. That is one fixed mix of styles; its
digest and weights are part of the cache key, so another mix converts again.

With ``styles``, one package holds one *function* per style instead (coremltools 9's
multifunction programs, ``MultiFunctionDescriptor`` + ``save_multifunction``): ``base`` (no
LoRA) and ``lora<N>`` (LoRA N alone at its weight). ``save_multifunction`` deduplicates
identical constants across functions, so every weight no LoRA touches (the convolutions, the
norms, TAESD, the ControlNet) is stored once; each style adds only the layers its LoRA
changes. A Mac loads each function as its own model (``CompiledMLModel(..., function_name=)``)
and picks one per frame: switching style is a cut between frames at no cost, live; what it
cannot do is any weight between the baked ones (a crossfade is a cut at the midpoint), or a
mix not baked. Multifunction programs are specification 9 (macOS 15), and Core ML states
belong to one loaded function each, so styles use the stateless fused program (the temporal
state crosses in the feed, shared by every style: a switch keeps feedback and smoothing).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livediffusion_models.lora.read import WeightedLora
from livediffusion_models.lora.stack import LoraStack

__all__ = ["BASE", "Style", "baked_unet", "merge_functions", "nearest_style", "plan_styles"]

BASE = "base"


@dataclass(frozen=True)
class Style:
    """One program function: its name and the LoRA weights baked into it."""

    name: str
    weights: tuple[float, ...]


def plan_styles(loras: Sequence[WeightedLora], styles: bool) -> list[Style]:
    """The functions to convert: one mix (named "" = a plain single-function program), or
    ``base`` and one per LoRA alone at its weight."""
    weights = tuple(float(choice.weight) for choice in loras)
    if not styles:
        return [Style("", weights)]
    if not loras:
        raise ValueError("LoRA styles need at least one --lora")
    plan = [Style(BASE, (0.0,) * len(loras))]
    for index, weight in enumerate(weights):
        alone = tuple(weight if i == index else 0.0 for i in range(len(weights)))
        plan.append(Style(f"lora{index}", alone))
    return plan


def nearest_style(styles: Sequence[Style], weights: Sequence[float]) -> Style:
    """The baked style closest to ``weights`` (sum of absolute differences; the first on a
    tie), so a fader crossfading two LoRAs cuts from one to the other at the midpoint."""
    if not styles:
        raise ValueError("no styles")
    if any(len(style.weights) != len(weights) for style in styles):
        raise ValueError(f"{len(weights)} LoRA weights for {len(styles[0].weights)} LoRAs")
    return min(
        styles,
        key=lambda s: sum(abs(a - float(b)) for a, b in zip(s.weights, weights, strict=True)),
    )


@contextmanager
def baked_unet(unet: Any, loras: Sequence[WeightedLora]) -> Iterator[Callable[[Style], None]]:
    """Yields ``bake(style)``, which sets ``unet``'s weights to that style's mix; on exit the
    UNet's own weights are back (the components are the caller's, and stay so)."""
    stack = LoraStack(unet=unet, only="unet")
    try:
        for choice in loras:
            stack.add(choice.lora, weight=0.0)

        def bake(style: Style) -> None:
            stack.set_weights(style.weights)

        yield bake
    finally:
        stack.clear()


def merge_functions(parts: Sequence[tuple[str, Path]], destination: Path) -> None:
    """Write one multifunction package from single-function ones (their ``main`` each, under
    its style's name; the first is the default), then delete the parts."""
    from coremltools.models.utils import MultiFunctionDescriptor, save_multifunction

    descriptor = MultiFunctionDescriptor()
    for name, package in parts:
        descriptor.add_function(str(package), "main", name)
    descriptor.default_function_name = parts[0][0]
    save_multifunction(descriptor, str(destination))
    for _, package in parts:
        shutil.rmtree(package, ignore_errors=True)
