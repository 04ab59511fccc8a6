"""LoRA and ControlNet files for the commands: fetching them ahead of a show (``download``),
and a random LoRA of the right shapes for ``bench --weights random --lora random``.

A random LoRA is written the way diffusers writes one (``save_lora_weights``, PEFT keys) and
then read back through the same loaders as any user's file, so the bench measures the path a
real LoRA takes: its cost depends on which layers it touches and its rank, not on its values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RANDOM_LORA", "download_styles", "write_random_lora"]

RANDOM_LORA = "random"
"""``bench --lora random``: a LoRA made here for the model's own UNet."""

_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
"""The layers kohya's trainer and diffusers' examples train by default: the transformer
blocks' attention, projections and feed-forward."""


def download_styles(
    spec: Any,
    loras: Sequence[Any],
    controlnet: str | None,
    *,
    cache_dir: str | os.PathLike[str] | None,
) -> list[Path]:
    """Fetch each hub ``--lora`` (local ones are checked to exist) and the ``--controlnet``
    into the cache; the paths, in order."""
    from livediffusion_models.lora.files import resolve_lora

    paths = [resolve_lora(request.source, cache_dir=cache_dir) for request in loras]
    if controlnet is not None:
        from livediffusion_models.controlnet import download_controlnet

        paths.append(download_controlnet(controlnet, spec=spec, cache_dir=cache_dir))
    return paths


def write_random_lora(
    unet: Any, folder: str | os.PathLike[str], *, rank: int = 16, seed: int = 0
) -> Path:
    """A LoRA of ``rank`` on the usual layers of ``unet``, random factors, saved with diffusers'
    ``save_lora_weights`` into ``folder``; returns the file."""
    import torch
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(_TARGETS):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
            continue
        out_features, in_features = int(weight.shape[0]), int(weight.shape[1])
        kernel = tuple(weight.shape[2:])
        down = torch.randn((rank, in_features, *kernel), generator=generator)
        up = torch.randn((out_features, rank, *(1 for _ in kernel)), generator=generator)
        layers[f"{name}.lora_A.weight"] = down / (in_features * max(1, len(kernel))) ** 0.5
        layers[f"{name}.lora_B.weight"] = up * 0.01
    if not layers:
        raise ValueError("this UNet has none of the layers a LoRA usually trains")
    Path(folder).mkdir(parents=True, exist_ok=True)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(folder), unet_lora_layers=layers, weight_name="random.safetensors"
    )
    return Path(folder) / "random.safetensors"
