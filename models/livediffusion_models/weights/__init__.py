"""Turn a ``--weights`` value into ready-to-run modules.

``weights`` is one of:

* ``"random"``: the exact architecture from the shipped configs, seeded; no files, no network.
  For tests, benchmarks and trying the pipeline before a 1 GB download.
* ``"tiny"``: the same architecture scaled down to a few million parameters (see
  ``weights.tiny``), seeded; tens of milliseconds per 64x64 frame on a CPU, so soak runs, CI
  and demos exercise the whole pipeline fast. It paints nonsense.
* a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``): its own config.json files win over the shipped ones.
* a hub id (``owner/name``): looked up in the livediffusion cache (and the default
  huggingface_hub cache) first, so it works offline once downloaded; downloaded otherwise.

Parts a source lacks are filled in explicitly, and the result says where each came from: the
VAE must be an AutoencoderTiny (the engine math assumes TAESD), so a full AutoencoderKL is
replaced by the spec's TAESD repo; a missing tokenizer is built offline; a missing scheduler
config is the shipped one.

The work is split by job: ``files`` (picking weight files in a folder), ``hub`` (caches and
downloads), ``plan`` (where each part comes from, and the messages), ``build`` (torch
modules) and ``fingerprint`` (a cache key for the loaded weights). Loading imports torch,
diffusers and transformers; importing this package does not, but import it only when loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livediffusion_models.errors import ModelError
from livediffusion_models.registry import ModelSpec
from livediffusion_models.weights.build import (
    _build_random,
    _build_text_encoder,
    _finish,
    _load_from_plan,
    _load_tokenizer,
)
from livediffusion_models.weights.context import (
    _BUILT,
    RANDOM,
    TINY,
    _context,
    download_command,
)
from livediffusion_models.weights.files import _read_json
from livediffusion_models.weights.fingerprint import (
    plan_fingerprint,
    random_fingerprint,
    tiny_fingerprint,
)
from livediffusion_models.weights.hub import _progress_bars, _select_hub_files
from livediffusion_models.weights.plan import _describe, _plan
from livediffusion_models.weights.tiny import _build_tiny

if TYPE_CHECKING:
    import torch

__all__ = [
    "RANDOM",
    "TINY",
    "LoadedModel",
    "_build_text_encoder",
    "_select_hub_files",
    "download",
    "download_command",
    "load_model",
]


@dataclass(frozen=True)
class LoadedModel:
    """The modules of one model, in eval mode with gradients off, plus where they came from."""

    spec: ModelSpec
    unet: Any
    """diffusers ``UNet2DConditionModel``."""
    vae: Any
    """diffusers ``AutoencoderTiny`` (always: the engine math assumes TAESD)."""
    text_encoder: Any
    """transformers ``CLIPTextModel``."""
    tokenizer: Any
    """transformers ``CLIPTokenizer``."""
    scheduler_config: dict[str, Any]
    """For ``<SchedulerClass>.from_config``; the engine reads only the noise schedule from it."""
    source: str
    """Human-readable provenance of every part, for logs and ``--verbose``."""
    fingerprint: str
    """16 hex digits that change whenever the loaded weights may have (see ``fingerprint``);
    a cache key for work derived from them. Not dtype or device: key on those separately."""


def load_model(
    spec: ModelSpec,
    weights: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    allow_download: bool = True,
) -> LoadedModel:
    """Load ``spec``'s modules from ``weights`` ("random", "tiny", a folder or a hub id).

    ``weights=None`` means the spec's own hub repo. Modules come back on the CPU in
    ``torch_dtype`` (float32 by default: fp16 files are upcast so CPU runs work), in eval mode
    with gradients off. ``seed`` only matters for "random" and "tiny". ``allow_download=False``
    never touches the network (a cache miss raises WeightsNotFoundError at once).
    """
    import torch

    dtype = torch_dtype if torch_dtype is not None else torch.float32
    weights = spec.hub_id if weights is None else weights
    ctx = _context(spec, weights, cache_dir, allow_download)

    if weights in _BUILT:
        from livediffusion_models.tokenizer import build_offline_tokenizer

        if weights == TINY:
            unet, vae, text_encoder = _build_tiny(spec, seed=seed)
            source = (
                f"tiny random weights (seed {seed}): the {spec.name} architecture scaled down, "
                "for soak runs, CI and demos (it paints nonsense)"
            )
            fingerprint = tiny_fingerprint(spec, seed=seed)
        else:
            unet, vae, text_encoder = _build_random(spec, seed=seed)
            source = f"random weights (seed {seed}) with the shipped {spec.name} configs"
            fingerprint = random_fingerprint(spec, seed=seed)
        return LoadedModel(
            spec=spec,
            unet=_finish(unet, dtype),
            vae=_finish(vae, dtype),
            text_encoder=_finish(text_encoder, dtype),
            tokenizer=build_offline_tokenizer(pad_token=spec.pad_token),
            scheduler_config=spec.read_config("scheduler"),
            source=source,
            fingerprint=fingerprint,
        )

    with _progress_bars(progress):
        plan = _plan(ctx)
        unet, vae, text_encoder = _load_from_plan(plan, ctx=ctx, dtype=dtype)
        tokenizer = _load_tokenizer(plan.tokenizer, spec, ctx)
    if plan.scheduler_config is not None:
        scheduler_config = _read_json(
            plan.scheduler_config, fix=ctx.corrupt_fix(plan.scheduler_config)
        )
        scheduler_origin = str(plan.scheduler_config.parent)
    else:
        scheduler_config = spec.read_config("scheduler")
        scheduler_origin = f"shipped {spec.name} config"
    source = "; ".join(
        (
            f"unet: {_describe(plan.unet)}",
            f"vae: {_describe(plan.vae)}",
            f"text_encoder: {_describe(plan.text_encoder)}",
            f"tokenizer: {plan.tokenizer.origin if plan.tokenizer else 'built offline'}",
            f"scheduler: {scheduler_origin}",
        )
    )
    return LoadedModel(
        spec=spec,
        unet=_finish(unet, dtype),
        vae=_finish(vae, dtype),
        text_encoder=_finish(text_encoder, dtype),
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=source,
        fingerprint=plan_fingerprint(plan, spec),
    )


def download(
    spec: ModelSpec,
    weights: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Fetch everything ``load_model(spec, weights)`` needs into the cache; return the main folder.

    ``weights=None`` means the spec's hub repo; a local folder gets only its missing parts
    (e.g. TAESD for a folder with a full AutoencoderKL). Nothing is loaded into memory.
    """
    weights = spec.hub_id if weights is None else weights
    if weights in _BUILT:
        raise ModelError(f"--weights {weights} needs no download")
    ctx = _context(spec, weights, cache_dir, allow_download=True)
    with _progress_bars(progress):
        return _plan(ctx).main
