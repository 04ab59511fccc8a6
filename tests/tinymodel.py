"""Tiny models of the real classes, so the whole pipeline runs on a CPU in seconds.

Same diffusers/transformers classes as SDXS-512 (UNet2DConditionModel without a mid block,
AutoencoderTiny, CLIPTextModel with the real 49408-token vocabulary), only narrower and
shallower. ``save_tiny_folder`` writes them as a diffusers folder, so tests exercise the
same local-folder loading path a user's real weights take.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TINY_SIZE = 64  # pixels; latents are 8x8
TINY_EMBED_DIM = 32


@dataclass
class TinyModules:
    unet: Any
    vae: Any
    text_encoder: Any


def make_tiny_modules(seed: int = 0) -> TinyModules:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=TINY_EMBED_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TINY_EMBED_DIM,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TINY_EMBED_DIM,
        )
    )
    for module in (unet, vae, text_encoder):
        module.eval()
    return TinyModules(unet=unet, vae=vae, text_encoder=text_encoder)


def save_tiny_folder(
    path: str | Path,
    *,
    seed: int = 0,
    pad_token: str = "!",
    variant: str | None = None,
) -> Path:
    """Write ``make_tiny_modules(seed)`` as a diffusers folder and return it.

    Same layout as a hub snapshot (unet/, vae/, text_encoder/, tokenizer/, scheduler/,
    model_index.json), so loading it goes through the real local-folder path. ``variant``
    only names the files (e.g. ``*.fp16.safetensors``, weights stay float32): it exercises the
    loader's variant detection without changing outputs.
    """
    import json

    from livediffusion_models.registry import get_model
    from livediffusion_models.tokenizer import build_offline_tokenizer

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    modules = make_tiny_modules(seed)
    modules.unet.save_pretrained(root / "unet", variant=variant)
    modules.vae.save_pretrained(root / "vae", variant=variant)
    modules.text_encoder.save_pretrained(root / "text_encoder", variant=variant)
    build_offline_tokenizer(pad_token=pad_token).save_pretrained(root / "tokenizer")
    scheduler = get_model("sdxs-512-0.9").read_config("scheduler")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    model_index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": scheduler.get("_diffusers_version", "0.42.1"),
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderTiny"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return root


@dataclass
class TinyComponents:
    """What conversion and the backends read from a ``LoadedModel``, for a tiny family model."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]


def make_tiny_family(model: str, seed: int = 0) -> TinyComponents:
    """A tiny model of one registry family: the shipped UNet config, narrowed and shallowed.

    Keeps each family's own block types, mid block, attention layout and linear projections
    (what decides which ops a converter meets); shrinks widths and head counts, and has one
    layer per block as ``--weights tiny`` does (SD-Turbo's second layers would only repeat the
    same ops and double its conversion time).
    """
    from diffusers import UNet2DConditionModel

    from livediffusion_models.registry import get_model

    spec = get_model(model)
    config = spec.read_config("unet")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    widths = [max(32, c // 10) for c in config["block_out_channels"]]
    config.update(
        block_out_channels=widths,
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=TINY_EMBED_DIM,
        norm_num_groups=8,
        sample_size=TINY_SIZE // 8,
    )
    base = make_tiny_modules(seed)
    torch.manual_seed(seed)
    base.unet = UNet2DConditionModel.from_config(config).eval()
    return _components(model, base)


def make_tiny_components(seed: int = 0) -> TinyComponents:
    """The smallest model of the real classes (``make_tiny_modules``: one cross-attention
    down and up block, one plain pair), as conversion and the backends read it.

    For tests whose subject is not a family's block layout (LoRA styles, a ControlNet in the
    step, precision, what conversion asks of a Mac): its UNet is half the ops of a tiny
    family's, and a Core ML conversion of it takes well under half as long.
    """
    return _components("sdxs-512-0.9", make_tiny_modules(seed))


def _components(model: str, modules: TinyModules) -> TinyComponents:
    """``modules`` with ``model``'s offline tokenizer and scheduler, as a loaded model has them."""
    from livediffusion_models.registry import get_model
    from livediffusion_models.tokenizer import build_offline_tokenizer

    spec = get_model(model)
    return TinyComponents(
        unet=modules.unet,
        vae=modules.vae,
        text_encoder=modules.text_encoder,
        tokenizer=build_offline_tokenizer(pad_token=spec.pad_token),
        scheduler_config=spec.read_config("scheduler"),
    )
