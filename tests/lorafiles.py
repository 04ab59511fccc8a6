"""LoRA files for tests, written the way the tools that make them write them.

``peft``: PEFT layers injected into a copy of the model (random factors, ``lora_alpha`` != ``r``
so the scaling matters), saved with diffusers' own ``save_lora_weights`` (the format of
``pytorch_lora_weights.safetensors``, with diffusers' adapter metadata in the header).

``kohya``: the same factors under kohya-ss/A1111 names, as model sites hand them out: one
``lora_unet_<module path with _>`` / ``lora_te_text_model_<...>`` prefix per layer, ``lora_down``
and ``lora_up`` weights and a scalar ``alpha`` (scaling = alpha / rank). Convolution LoRAs
(LoCon) keep their 4-D factors (3x3 down, 1x1 up for a 3x3 convolution), as kohya saves them.

Neither side is converted by hand in the product: these files are read by diffusers' loaders.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch

Format = Literal["peft", "kohya"]

UNET_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _factors(
    module: Any, targets: tuple[str, ...], *, rank: int, alpha: float, seed: int
) -> tuple[dict[str, torch.Tensor], Any]:
    """PEFT-format factors (``<module>.lora_A.weight``...) for ``targets`` of a copy of
    ``module``, random but fixed by ``seed``; and the LoraConfig used."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False
    )
    copied = copy.deepcopy(module)
    torch.manual_seed(seed)
    inject_adapter_in_model(config, copied)
    with torch.no_grad():  # B is random too: init_lora_weights=False leaves it so, kept small
        for name, param in copied.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    return get_peft_model_state_dict(copied), config


def _metadata(config: Any) -> dict[str, Any]:
    """The LoraConfig as diffusers stores it in the file's header, its sets (PEFT keeps
    ``target_modules`` as one) sorted: in the order they iterate, which follows the process's
    string hashing, the same LoRA would be other bytes in each process."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def _sort_header(path: Path) -> None:
    """Rewrite the safetensors header with its keys sorted, the tensors' bytes untouched.

    safetensors keeps the metadata in a hash map whose order changes from process to process;
    with that and ``_metadata``, the same LoRA is the same bytes (the same digest, the same
    Core ML cache key) in every pytest-xdist worker. Offsets in the header are relative to the
    data, so only the header changes, padded with spaces to 8 bytes as safetensors pads it.
    """
    import json
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + length :])


def write_lora(
    folder: Path,
    *,
    unet: Any,
    text_encoder: Any = None,
    fmt: Format = "peft",
    rank: int = 4,
    alpha: float = 2.0,
    seed: int = 0,
    unet_targets: tuple[str, ...] = UNET_TARGETS,
) -> Path:
    """Write one LoRA file for ``unet`` (and ``text_encoder`` if given); returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    unet_sd, unet_cfg = _factors(unet, unet_targets, rank=rank, alpha=alpha, seed=seed)
    text_sd: dict[str, torch.Tensor] = {}
    text_cfg = None
    if text_encoder is not None:
        text_sd, text_cfg = _factors(
            text_encoder, TEXT_TARGETS, rank=rank, alpha=alpha, seed=seed + 1
        )
    if fmt == "peft":
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        StableDiffusionLoraLoaderMixin.save_lora_weights(
            str(folder),
            unet_lora_layers=unet_sd,
            text_encoder_lora_layers=text_sd or None,
            unet_lora_adapter_metadata=_metadata(unet_cfg),
            text_encoder_lora_adapter_metadata=_metadata(text_cfg) if text_cfg else None,
        )
        path = folder / "pytorch_lora_weights.safetensors"
        _sort_header(path)
        return path
    import safetensors.torch

    kohya: dict[str, torch.Tensor] = {}
    for prefix, state in (("lora_unet_", unet_sd), ("lora_te_text_model_", text_sd)):
        for key, value in state.items():
            module, _, part = key.rpartition(".lora_")
            name = prefix + module.replace(".", "_")
            if part == "A.weight":
                kohya[f"{name}.lora_down.weight"] = value.contiguous()
                kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
            else:
                kohya[f"{name}.lora_up.weight"] = value.contiguous()
    path = folder / "style_kohya.safetensors"
    safetensors.torch.save_file(kohya, str(path), metadata={"ss_network_module": "networks.lora"})
    return path
