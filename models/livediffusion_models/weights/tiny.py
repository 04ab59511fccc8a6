"""``--weights tiny``: a model's own architecture, scaled down, with seeded random weights.

**For soak tests, CI and demos only: it paints nonsense.** The modules are the very classes
the real model uses (diffusers ``UNet2DConditionModel`` and ``AutoencoderTiny``, transformers
``CLIPTextModel``) built from the model's shipped configs with only the sizes shrunk: the
UNet keeps its block types, mid block, cross-attention layout and linear projections but has
32-128 channels and one layer per block; the VAE keeps its four stages (8x down/up scaling,
4 latent channels) at 8 channels; the text encoder keeps the CLIP vocabulary (so the real
tokenizer works) but is 32 wide and 2 layers deep: about 5M parameters in all (3M in the
UNet), against about 670M for the real SDXS. A 64x64 frame takes tens of milliseconds on a
2-core CPU, so the whole pipeline (transports, engine threads, OSC, temporal smoothing) can
run for hours on a laptop or a CI runner, where ``random`` (the full-size architecture)
takes seconds per frame.

It loads exactly like ``random`` (no files, no network, the offline tokenizer, the shipped
noise schedule): ``load_model(spec, "tiny")`` gives a ``LoadedModel`` any backend accepts.
The prompt embedding is 32 wide, not ``spec.prompt_embed_dim``; nothing in the engine
depends on that width.
"""

from __future__ import annotations

from typing import Any

from livediffusion_models.registry import ModelSpec
from livediffusion_models.weights.build import _build_text_encoder
from livediffusion_models.weights.context import TINY

__all__ = ["TINY", "TINY_EMBED_DIM", "tiny_configs"]

TINY_EMBED_DIM = 32
"""Width of the tiny text encoder's hidden states = the tiny UNet's cross-attention dim."""

_NORM_GROUPS = 8
_HEADS = 4
_VAE_CHANNELS = 8


def _public(config: dict[str, Any]) -> dict[str, Any]:
    """Drop diffusers/transformers bookkeeping keys (``_class_name``, ``architectures``)."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}


def _per_block(value: Any, new: Any) -> Any:
    """``new`` in the shape ``value`` has: one per block for a list, else a single value."""
    return [new] * len(value) if isinstance(value, list | tuple) else new


def tiny_unet_config(spec: ModelSpec) -> dict[str, Any]:
    config = _public(spec.read_config("unet"))
    # a tenth of each width (320, 640, 1280 -> 32, 64, 128), whole norm groups, at least 32
    widths = [
        max(32, int(c) // 10 // _NORM_GROUPS * _NORM_GROUPS) for c in config["block_out_channels"]
    ]
    config.update(
        block_out_channels=widths,
        layers_per_block=1,
        transformer_layers_per_block=1,
        attention_head_dim=_per_block(config.get("attention_head_dim", _HEADS), _HEADS),
        num_attention_heads=None,
        cross_attention_dim=TINY_EMBED_DIM,
        norm_num_groups=_NORM_GROUPS,
        sample_size=spec.default_size // 8,
    )
    return config


def tiny_vae_config(spec: ModelSpec) -> dict[str, Any]:
    config = _public(spec.read_config("vae"))
    stages = len(config["encoder_block_out_channels"])  # keeps the 2**(stages-1) scale
    config.update(
        encoder_block_out_channels=[_VAE_CHANNELS] * stages,
        decoder_block_out_channels=[_VAE_CHANNELS] * len(config["decoder_block_out_channels"]),
        num_encoder_blocks=[1] * len(config["num_encoder_blocks"]),
        num_decoder_blocks=[1] * len(config["num_decoder_blocks"]),
    )
    return config


def tiny_text_encoder_config(spec: ModelSpec) -> dict[str, Any]:
    config = _public(spec.read_config("text_encoder"))
    config.update(
        hidden_size=TINY_EMBED_DIM,
        intermediate_size=2 * TINY_EMBED_DIM,
        num_hidden_layers=2,
        num_attention_heads=_HEADS,
        projection_dim=TINY_EMBED_DIM,
    )  # vocab_size, max_position_embeddings, hidden_act and the token ids stay the model's
    return config


def tiny_configs(spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """The three configs ``tiny`` builds from, keyed like the shipped ones (fresh copies)."""
    return {
        "unet": tiny_unet_config(spec),
        "vae": tiny_vae_config(spec),
        "text_encoder": tiny_text_encoder_config(spec),
    }


def _build_tiny(spec: ModelSpec, *, seed: int) -> tuple[Any, Any, Any]:
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    configs = tiny_configs(spec)
    # fork_rng: seeding must not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderTiny.from_config(configs["vae"])
        text_encoder = _build_text_encoder(configs["text_encoder"])
    return unet, vae, text_encoder
