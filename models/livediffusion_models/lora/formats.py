"""The ways a LoRA file is laid out, read far enough to check it and to hand it to diffusers.

Key conversion is diffusers' (``lora_state_dict``); what is here is only what comes before it:
reading every tensor so damage shows as damage, the file's digest for cache keys, and PEFT's
own adapter folders, whose keys and config diffusers' loader takes once they sit under
``unet.`` as its own format does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from livediffusion_models.errors import LoraCorruptError, LoraFormatError
from livediffusion_models.weights.files import _read_safetensors_header

__all__ = ["digest", "first_line", "is_peft_adapter", "raw_keys", "read_peft_adapter"]


def digest(path: Path, config: Path | None = None) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    if config is not None:  # a PEFT adapter's scaling and targets live in its config
        sha.update(config.read_bytes())
    return sha.hexdigest()[:16]


def raw_keys(path: Path, name: str) -> list[str]:
    """Every tensor name in the file, after reading it whole (so damage shows here)."""
    try:
        if path.suffix == ".safetensors":
            _read_safetensors_header(path)
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                for key in keys:  # reads the data too: a damaged tensor fails now
                    f.get_tensor(key)
            return keys
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # OSError, a damaged header, safetensors' and pickle's errors
        raise LoraCorruptError(f"LoRA {name}: damaged file {path} ({first_line(error)})") from error
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping):
        raise LoraFormatError(f"LoRA {name}: {path} holds a {type(loaded).__name__}, no tensors")
    return [str(key) for key in loaded]


_PEFT_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."


def is_peft_adapter(path: Path) -> bool:
    return path.name.startswith("adapter_model.") and (path.parent / _PEFT_CONFIG).is_file()


def read_peft_adapter(
    path: Path, name: str
) -> tuple[dict[str, torch.Tensor], None, dict[str, Any]]:
    """A folder PEFT's own ``save_pretrained`` wrote: ``adapter_config.json`` (the LoraConfig)
    beside ``adapter_model.safetensors``/``.bin``, keys under ``base_model.model.`` (the
    SDXS authors ship their DreamShaper-Anime adapter so). Handed to diffusers' loader as its
    own format: the keys under ``unet.``, the config as its adapter metadata."""
    import json

    try:
        config = json.loads((path.parent / _PEFT_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LoraCorruptError(
            f"LoRA {name}: damaged {path.parent / _PEFT_CONFIG} ({first_line(error)})"
        ) from error
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else type(config).__name__
        raise LoraFormatError(f"LoRA {name}: a PEFT {kind} adapter, not a LoRA")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    else:
        tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {f"unet.{k.removeprefix(_PEFT_PREFIX)}": v for k, v in tensors.items()}
    metadata = {f"unet.{key}": value for key, value in config.items()}
    return state, None, metadata


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
