"""The models livediffusion knows how to run, and where their parts come from.

This module is imported by the CLI just to list names and defaults, so it must stay cheap:
no torch, no diffusers. Each model ships its own diffusers-style configs under
``configs/<name>/`` so a model can be built (random weights, or weights without a
config.json) with no network; a real config.json on disk always wins over these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from livediffusion_models.errors import UnknownModelError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; the package supports 3.10
    from importlib.resources.abc import Traversable

Lineage = Literal["sd1", "sd2"]
Component = Literal["unet", "vae", "text_encoder", "scheduler"]
ConditionKind = Literal["canny", "sketch"]
CONDITIONS: tuple[ConditionKind, ...] = ("canny", "sketch")

TAESD_HUB_ID = "madebyollin/taesd"
"""Tiny autoencoder for the SD1/SD2 latent space (both lineages share it).

The engine math (no scaling factor, one-call encode/decode) assumes an AutoencoderTiny, so this
replaces any full AutoencoderKL a repository ships. Its files sit at the repository root.
"""

_CONFIG_FILES: Mapping[str, str] = MappingProxyType(
    {
        "unet": "unet/config.json",
        "vae": "vae/config.json",
        "text_encoder": "text_encoder/config.json",
        "scheduler": "scheduler/scheduler_config.json",
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to find, build and drive one model; no weights."""

    name: str
    description: str
    hub_id: str
    """Hub repository with unet/ (and usually text_encoder/, tokenizer/, scheduler/, vae/)."""
    lineage: Lineage
    text_encoder_hub_id: str
    """Hub repository whose text_encoder/ and tokenizer/ are used if the weights lack them."""
    vae_hub_id: str | None
    """Where the AutoencoderTiny comes from (files at that repo's root); None: ``hub_id``'s vae/."""
    pad_token: str
    """Prompt padding token: SD2 (OpenCLIP) models were trained padding with "!", SD1 with EOS."""
    prompt_embed_dim: int
    """Width of the text encoder's hidden states = the UNet's cross-attention dim."""
    default_strength: float
    """Img2img strength the model was made for (1.0: SDXS only knows t=999)."""
    default_size: int = 512
    config_name: str = ""
    """Folder under ``configs/``; defaults to ``name``."""

    @property
    def config_dir(self) -> Traversable:
        """The shipped configs; a Traversable because the package may live in a zip."""
        return files("livediffusion_models") / "configs" / (self.config_name or self.name)

    def read_config(self, component: Component) -> dict[str, Any]:
        """Return a fresh copy of a shipped config (callers may mutate it)."""
        try:
            relative = _CONFIG_FILES[component]
        except KeyError:
            raise ValueError(
                f"no shipped config for {component!r}; one of {', '.join(_CONFIG_FILES)}"
            ) from None
        node = self.config_dir
        for part in relative.split("/"):
            node = node / part
        config: dict[str, Any] = json.loads(node.read_text(encoding="utf-8"))
        return config

    @property
    def taesd_hub_id(self) -> str:
        """Fallback AutoencoderTiny when a weights folder only has a full AutoencoderKL."""
        return self.vae_hub_id or TAESD_HUB_ID


_SPECS = (
    ModelSpec(
        name="sdxs-512-0.9",
        description="SDXS-512 0.9: one-step SD2.1-base distillation with TAESD; fastest.",
        hub_id="IDKiro/sdxs-512-0.9",
        lineage="sd2",
        text_encoder_hub_id="IDKiro/sdxs-512-0.9",
        vae_hub_id=None,
        pad_token="!",
        prompt_embed_dim=1024,
        default_strength=1.0,
    ),
    ModelSpec(
        name="sdxs-512-dreamshaper",
        description="SDXS-512 DreamShaper: one-step SD1.5 (DreamShaper) distillation with TAESD.",
        hub_id="IDKiro/sdxs-512-dreamshaper",
        lineage="sd1",
        text_encoder_hub_id="IDKiro/sdxs-512-dreamshaper",
        vae_hub_id=None,
        pad_token="<|endoftext|>",
        prompt_embed_dim=768,
        default_strength=1.0,
    ),
    ModelSpec(
        name="sd-turbo",
        description="SD-Turbo: SD2.1 adversarial distillation (2.6x the UNet of SDXS), with TAESD.",
        hub_id="stabilityai/sd-turbo",
        lineage="sd2",
        text_encoder_hub_id="stabilityai/sd-turbo",
        vae_hub_id=TAESD_HUB_ID,
        pad_token="!",
        prompt_embed_dim=1024,
        default_strength=0.5,
    ),
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
"""All known models by name, in the order the CLI lists them."""

DEFAULT_MODEL = "sdxs-512-0.9"


def get_model(name: str) -> ModelSpec:
    """Look a model up by name; the error lists the names that do exist."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name, MODELS) from None


@dataclass(frozen=True)
class ControlNetSpec:
    """A ControlNet known to fit shipped models, and the condition it was trained on.

    docs/models.md records where each entry comes from and what was looked for and not found.
    """

    name: str
    description: str
    hub_id: str
    models: tuple[str, ...]
    """The registry models whose UNet it fits (its blocks and text width)."""
    condition: ConditionKind
    default_scale: float
    """Where ``/controlnet/scale`` starts (the authors' or a known demo's default)."""


_CONTROLNETS = (
    ControlNetSpec(
        name="sdxs-sketch",
        description="SDXS-512-DreamShaper sketch ControlNet, by the SDXS authors: dark strokes "
        "on white, here the input's edges drawn that way.",
        hub_id="IDKiro/sdxs-512-dreamshaper-sketch",
        models=("sdxs-512-dreamshaper",),
        condition="sketch",
        default_scale=0.8,
    ),
    ControlNetSpec(
        name="sd21-canny",
        description="SD 2.1 canny ControlNet (thibaud), as real-time SD-Turbo demos pair it.",
        hub_id="thibaud/controlnet-sd21-canny-diffusers",
        models=("sd-turbo",),
        condition="canny",
        default_scale=0.5,
    ),
)

CONTROLNETS: Mapping[str, ControlNetSpec] = MappingProxyType({c.name: c for c in _CONTROLNETS})
"""Known ControlNets by name (``--controlnet NAME``); a hub id or folder also works."""


def controlnets_for(model: str) -> tuple[ControlNetSpec, ...]:
    """The known ControlNets that fit ``model`` (none for sdxs-512-0.9: see docs/models.md)."""
    return tuple(c for c in _CONTROLNETS if model in c.models)
