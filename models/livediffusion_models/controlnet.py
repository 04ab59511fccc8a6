"""Loading a ControlNet (diffusers ``ControlNetModel``) that fits the model's UNet.

``--controlnet`` is a registry name (``sdxs-sketch``, ``sd21-canny``: see
:data:`~livediffusion_models.registry.CONTROLNETS`), a hub id, a local folder (``config.json``
and ``diffusion_pytorch_model.safetensors``/``.bin``), or ``random``/``tiny``: a ControlNet
built from the UNet itself, as diffusers' ``ControlNetModel.from_unet`` builds one to train
(its encoder copied from the UNet, its output convolutions random here instead of zero so it
does steer), for tests and benchmarks without a download.

A ControlNet's residuals are added to the UNet's skip connections one for one, so it must have
the UNet's down blocks, widths and text width; one that does not is refused in one line naming
both (:class:`ControlNetMismatchError`), before any frame. diffusers' ``ControlNetModel`` always
has a mid block (0.42 refuses ``mid_block_type=None``); its mid residual is added where the
UNet's mid block would be, so SDXS UNets without one take it as diffusers 0.25, which the SDXS
authors used, did.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livediffusion_models.errors import ControlNetMismatchError, ModelError, WeightsNotFoundError
from livediffusion_models.lora.read import describe_base
from livediffusion_models.registry import CONTROLNETS, ConditionKind, ModelSpec
from livediffusion_models.weights.context import RANDOM, TINY, _Context
from livediffusion_models.weights.files import _check_safetensors, _find_weights, _is_hub_id
from livediffusion_models.weights.hub import _hub_snapshot, _progress_bars

__all__ = [
    "LoadedControlNet",
    "check_controlnet_fits",
    "controlnet_from_unet",
    "download_controlnet",
    "load_controlnet",
]


@dataclass(frozen=True)
class LoadedControlNet:
    """A ControlNet ready for ``FrameStep(unet, vae, controlnet)``, and how to feed it."""

    controlnet: Any
    """diffusers ``ControlNetModel``, eval mode, no gradients, on the CPU in the asked dtype."""
    name: str
    condition: ConditionKind
    default_scale: float
    fingerprint: str
    """16 hex digits that change with its weights (part of the Core ML cache key)."""


class _ControlNetContext(_Context):
    """Download messages for a ControlNet name the command that fetches it."""

    def command_for(self, repo_id: str | None = None) -> str:
        return f"livediffusion download --controlnet {repo_id or self.weights}"


def controlnet_from_unet(unet: Any, *, seed: int = 0) -> Any:
    """A ControlNet shaped for ``unet``, as ``ControlNetModel.from_unet`` builds one, with a
    mid block of its own and random (not zero) output convolutions."""
    import torch
    from diffusers import ControlNetModel

    config = unet.config
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=config.in_channels,
        flip_sin_to_cos=config.flip_sin_to_cos,
        freq_shift=config.freq_shift,
        down_block_types=config.down_block_types,
        only_cross_attention=config.only_cross_attention,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        downsample_padding=config.downsample_padding,
        mid_block_scale_factor=config.mid_block_scale_factor,
        act_fn=config.act_fn,
        norm_num_groups=config.norm_num_groups,
        norm_eps=config.norm_eps,
        cross_attention_dim=config.cross_attention_dim,
        transformer_layers_per_block=config.transformer_layers_per_block,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        use_linear_projection=config.use_linear_projection,
        upcast_attention=config.upcast_attention,
        resnet_time_scale_shift=config.resnet_time_scale_shift,
        mid_block_type=config.mid_block_type or "UNetMidBlock2DCrossAttn",
    )
    controlnet.conv_in.load_state_dict(unet.conv_in.state_dict())
    controlnet.time_embedding.load_state_dict(unet.time_embedding.state_dict())
    controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict())
    with torch.no_grad():
        zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
        zeroed.append(controlnet.controlnet_cond_embedding.conv_out)
        for conv in zeroed:
            conv.weight.normal_(0.0, 0.02)
            conv.bias.zero_()
    return controlnet.eval().requires_grad_(False)


def _blocks(config: Any) -> tuple[Any, ...]:
    """What must agree for the residuals to line up with the UNet's skip connections."""
    return (
        int(config.in_channels),
        tuple(config.block_out_channels),
        tuple(t.replace("CrossAttn", "") for t in config.down_block_types),
        int(config.layers_per_block)
        if isinstance(config.layers_per_block, int)
        else tuple(config.layers_per_block),
    )


def check_controlnet_fits(controlnet: Any, unet: Any, *, name: str, model: str) -> None:
    """One line naming both when ``controlnet``'s residuals cannot go into ``unet``."""
    ours, theirs = unet.config, controlnet.config
    ours_width, theirs_width = int(ours.cross_attention_dim), int(theirs.cross_attention_dim)
    if theirs_width != ours_width:
        raise ControlNetMismatchError(
            f"ControlNet {name} is for {describe_base(theirs_width)} and {model} is "
            f"{describe_base(ours_width)}: pick one made for this model (livediffusion models)"
        )
    if _blocks(theirs) != _blocks(ours):
        raise ControlNetMismatchError(
            f"ControlNet {name} has other blocks than {model}'s UNet (widths "
            f"{list(theirs.block_out_channels)}, {len(theirs.down_block_types)} down blocks; "
            f"{model}: {list(ours.block_out_channels)}, {len(ours.down_block_types)}): its "
            "residuals cannot be added"
        )


def _fingerprint(folder: Path, files: tuple[Path, ...]) -> str:
    digest = hashlib.sha256(b"livediffusion-controlnet-1")
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in files:
        resolved = path.resolve()
        stat = resolved.stat()
        digest.update(f"{path.name}:{stat.st_size}:{resolved.name}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_controlnet(
    source: str,
    *,
    spec: ModelSpec,
    unet: Any,
    condition: ConditionKind | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = True,
    progress: bool = True,
    seed: int = 0,
) -> LoadedControlNet:
    """Load ``source`` for ``spec``'s ``unet`` and check it fits; float32 on the CPU (the
    backend moves it with the UNet). ``condition`` None: the registry's, else canny."""
    import torch
    from diffusers import ControlNetModel

    known = CONTROLNETS.get(source)
    kind: ConditionKind = condition or (known.condition if known else "canny")
    scale = known.default_scale if known else 1.0
    if source in (RANDOM, TINY):
        controlnet = controlnet_from_unet(unet, seed=seed)
        # without diffusers' "_use_default_values": a list it makes from a set, in an order
        # that changes from process to process, so the same ControlNet had another
        # fingerprint (and missed its Core ML conversion in the cache) in each run
        shape = {k: v for k, v in controlnet.config.items() if k != "_use_default_values"}
        config = json.dumps(shape, sort_keys=True, default=str)
        fingerprint = hashlib.sha256(f"{source}:{seed}:{config}".encode()).hexdigest()[:16]
        name = f"{source} ControlNet"
    else:
        if known is not None and spec.name not in known.models:
            raise ControlNetMismatchError(
                f"ControlNet {source} is made for {', '.join(known.models)}, not {spec.name}"
            )
        repo = known.hub_id if known else source
        folder = Path(repo).expanduser()
        if not folder.is_dir():
            if not _is_hub_id(repo):
                raise WeightsNotFoundError(
                    f"ControlNet {source}",
                    looked_in=[str(folder)],
                    fix="pass a registry name (livediffusion models), a hub id or a folder "
                    "with config.json and diffusion_pytorch_model.safetensors",
                )
            ctx = _ControlNetContext(
                spec=spec, weights=repo, cache_dir=cache_dir, allow_download=allow_download
            )
            with _progress_bars(progress):
                folder = _hub_snapshot(repo, required=("",), wanted=("",), ctx=ctx)
        weights = _find_weights(folder)
        if weights is None or not (folder / "config.json").is_file():
            raise WeightsNotFoundError(
                f"ControlNet {source} (config.json and weights)",
                looked_in=[str(folder)],
                fix="a diffusers ControlNet folder holds config.json and "
                "diffusion_pytorch_model.safetensors (or .bin)",
            )
        _check_safetensors(
            weights, fix_for=lambda path: f"delete {path} and fetch ControlNet {source} again"
        )
        try:
            with _progress_bars(progress):
                controlnet = ControlNetModel.from_pretrained(
                    str(folder),
                    torch_dtype=torch.float32,
                    use_safetensors=weights.safetensors,
                    variant=weights.variant,
                )
        except Exception as error:
            raise ModelError(
                f"ControlNet {source}: diffusers cannot load {folder} "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
            ) from error
        controlnet.eval().requires_grad_(False)
        fingerprint = _fingerprint(folder, weights.files)
        name = source
    check_controlnet_fits(controlnet, unet, name=name, model=spec.name)
    return LoadedControlNet(
        controlnet=controlnet,
        name=name,
        condition=kind,
        default_scale=scale,
        fingerprint=fingerprint,
    )


def download_controlnet(
    source: str,
    *,
    spec: ModelSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Fetch a registry or hub ControlNet into the cache ahead of a show; its folder."""
    known = CONTROLNETS.get(source)
    repo = known.hub_id if known else source
    if not _is_hub_id(repo):
        raise ModelError(f"ControlNet {source}: not a registry name or hub id to download")
    ctx = _ControlNetContext(spec=spec, weights=repo, cache_dir=cache_dir, allow_download=True)
    with _progress_bars(progress):
        return _hub_snapshot(repo, required=("",), wanted=("",), ctx=ctx)
