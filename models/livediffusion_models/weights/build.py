"""Building torch modules: from a resolved plan's folders, or random from the shipped configs.

A folder's own config.json wins; without one the shipped config builds the module and the
weights must fit it exactly (strict load). Every module comes back ready for inference.
torch, diffusers and transformers are imported inside the functions, only when loading.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livediffusion_models.errors import ModelError, WeightsCorruptError, WeightsNotFoundError
from livediffusion_models.registry import ModelSpec
from livediffusion_models.weights.context import _Context
from livediffusion_models.weights.files import _CONFIG_NAME, _find_weights, _read_json, _WeightFiles
from livediffusion_models.weights.plan import _Part, _Plan

if TYPE_CHECKING:
    import torch


def _check_files(weights: _WeightFiles, ctx: _Context) -> None:
    """Catch truncated safetensors up front, with the file name (loaders report it vaguely)."""
    if not weights.safetensors:
        return
    from safetensors import safe_open

    for path in weights.files:
        if not path.name.endswith(".safetensors"):
            continue  # a shard index (JSON)
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError has no stable import path
            raise WeightsCorruptError(
                path, fix=ctx.corrupt_fix(path), reason=str(error) or type(error).__name__
            ) from error


def _load_state_dict(weights: _WeightFiles, ctx: _Context) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {}
    for path in weights.files:
        try:
            if path.name.endswith(".json"):
                continue
            if weights.safetensors:
                from safetensors.torch import load_file

                state.update(load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:
            raise WeightsCorruptError(path, fix=ctx.corrupt_fix(path), reason=str(error)) from error
    return state


def _finish(module: Any, dtype: torch.dtype) -> Any:
    """Inference only: eval mode, no autograd bookkeeping, one dtype for the whole model."""
    import torch

    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        if getattr(module, "_keep_in_fp32_modules", None):
            module.to(dtype=dtype)
        else:
            # diffusers 0.42's ModelMixin.to warns about fp32-only modules on every dtype cast,
            # even when the list is empty (as for these models); nothing to keep, so skip it
            torch.nn.Module.to(module, dtype=dtype)
    module.eval()
    module.requires_grad_(False)
    return module


def _from_folder(
    part: _Part,
    *,
    load: Callable[[Path, _WeightFiles], Any],
    build: Callable[[], Any],
    drop_keys: Sequence[str] = (),
    ctx: _Context,
) -> Any:
    """Load one module: the folder's own config when present, else the shipped one + strict load."""
    weights = _find_weights(part.folder)
    if weights is None:  # resolution checked this; a file vanished since
        raise WeightsNotFoundError(
            f"weights in {part.folder}", looked_in=[part.folder], fix=ctx.command_for()
        )
    _check_files(weights, ctx)
    config = part.folder / _CONFIG_NAME
    if config.is_file():
        _read_json(config, fix=ctx.corrupt_fix(config))
        try:
            return load(part.folder, weights)
        except OSError as error:
            if "Unable to load weights" not in str(error):
                raise
            raise WeightsCorruptError(
                weights.files[0], fix=ctx.corrupt_fix(weights.files[0]), reason=str(error)
            ) from error
    module = build()
    state = _load_state_dict(weights, ctx)
    for key in drop_keys:
        state.pop(key, None)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(
            f"the weights in {part.folder} do not fit the shipped {ctx.spec.name} config "
            f"and the folder has no {_CONFIG_NAME} of its own: {error}"
        ) from error
    return module


def _accelerate_available() -> bool:
    """diffusers warns loudly without accelerate unless told not to try low-memory loading."""
    from importlib.util import find_spec

    return find_spec("accelerate") is not None


def _transformers_dtype_kwarg() -> str:
    """transformers 5 renamed ``torch_dtype`` to ``dtype`` (and warns about the old name)."""
    import transformers

    major = int(transformers.__version__.split(".", 1)[0])
    return "dtype" if major >= 5 else "torch_dtype"


def _build_random(spec: ModelSpec, *, seed: int) -> tuple[Any, Any, Any]:
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    # fork_rng: seeding must not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(spec.read_config("unet"))
        vae = AutoencoderTiny.from_config(spec.read_config("vae"))
        text_encoder = _build_text_encoder(spec.read_config("text_encoder"))
    return unet, vae, text_encoder


def _build_text_encoder(config: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    values = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    return CLIPTextModel(CLIPTextConfig(**values))


def _load_from_plan(plan: _Plan, *, ctx: _Context, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel

    spec = ctx.spec
    low_mem = _accelerate_available()
    te_dtype_kwarg = _transformers_dtype_kwarg()

    def diffusers_loader(cls: Any) -> Callable[[Path, _WeightFiles], Any]:
        def load(folder: Path, weights: _WeightFiles) -> Any:
            return cls.from_pretrained(
                folder,
                variant=weights.variant,
                use_safetensors=weights.safetensors,
                torch_dtype=dtype,
                local_files_only=True,
                low_cpu_mem_usage=low_mem,
            )

        return load

    def text_encoder_loader(folder: Path, weights: _WeightFiles) -> Any:
        return CLIPTextModel.from_pretrained(
            folder,
            variant=weights.variant,
            use_safetensors=weights.safetensors,
            local_files_only=True,
            **{te_dtype_kwarg: dtype},
        )

    unet = _from_folder(
        plan.unet,
        load=diffusers_loader(UNet2DConditionModel),
        build=lambda: UNet2DConditionModel.from_config(spec.read_config("unet")),
        ctx=ctx,
    )
    vae = _from_folder(
        plan.vae,
        load=diffusers_loader(AutoencoderTiny),
        build=lambda: AutoencoderTiny.from_config(spec.read_config("vae")),
        ctx=ctx,
    )
    text_encoder = _from_folder(
        plan.text_encoder,
        load=text_encoder_loader,
        build=lambda: _build_text_encoder(spec.read_config("text_encoder")),
        # older transformers saved this buffer; newer ones recreate it and reject the key
        drop_keys=("text_model.embeddings.position_ids",),
        ctx=ctx,
    )
    return unet, vae, text_encoder


def _load_tokenizer(part: _Part | None, spec: ModelSpec, ctx: _Context) -> Any:
    from livediffusion_models.tokenizer import build_offline_tokenizer

    if part is None:
        return build_offline_tokenizer(pad_token=spec.pad_token)
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(part.folder, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise WeightsCorruptError(
            part.folder, fix=ctx.corrupt_fix(part.folder / "vocab.json"), reason=str(error)
        ) from error
