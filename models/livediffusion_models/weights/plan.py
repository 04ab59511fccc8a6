"""Resolution: where each part of a model comes from, and the messages when it cannot.

A ``--weights`` value becomes a ``_Plan`` (one folder per part) before anything is loaded.
The weights' own files are checked first, so a damaged file is reported as such, not as a
part to fetch; parts the weights lack are then found in the caches or downloaded. Every
failure names what was wanted, where we looked and the command that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from livediffusion_models.errors import ModelError, WeightsNotFoundError
from livediffusion_models.weights.context import (
    _Context,
)
from livediffusion_models.weights.files import (
    _CONFIG_NAME,
    _SCHEDULER_CONFIG_NAME,
    _WEIGHT_COMPONENTS,
    _check_safetensors,
    _find_weights,
    _has_tokenizer,
    _is_hub_id,
    _read_json,
)
from livediffusion_models.weights.hub import _hub_snapshot

_HUB_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# --------------------------------------------------------------------------------------------
# Messages


# --------------------------------------------------------------------------------------------
# Resolution: where each part comes from


@dataclass(frozen=True)
class _Part:
    folder: Path
    """The component folder (``.../unet`` or a TAESD repo root)."""
    origin: str


@dataclass(frozen=True)
class _Plan:
    main: Path
    unet: _Part
    vae: _Part
    text_encoder: _Part
    tokenizer: _Part | None
    """None: build the offline tokenizer."""
    scheduler_config: Path | None
    """None: the shipped config."""


def _origin(root: Path, hub_id: str | None) -> str:
    return f"hub {hub_id} ({root})" if hub_id else str(root)


def _describe(part: _Part) -> str:
    if (part.folder / _CONFIG_NAME).is_file():
        return part.origin
    return f"{part.origin} (shipped config)"


def _is_tiny_vae(folder: Path, ctx: _Context) -> bool:
    config = folder / _CONFIG_NAME
    if not config.is_file() or _find_weights(folder) is None:
        return False
    return _read_json(config, fix=ctx.corrupt_fix(config)).get("_class_name") == "AutoencoderTiny"


def _check_own_files(main: Path, ctx: _Context) -> None:
    """Read every config and safetensors header the weights themselves would supply.

    Done before any missing part is looked for: a folder with a damaged unet/ and no
    text_encoder/ must say "damaged file", not send the user to download a text encoder.
    Headers only, so this costs milliseconds even for gigabytes of weights.
    """
    for component in _WEIGHT_COMPONENTS:
        config = main / component / _CONFIG_NAME
        if config.is_file():
            _read_json(config, fix=ctx.corrupt_fix(config))
    scheduler = main / _SCHEDULER_CONFIG_NAME
    if scheduler.is_file():
        _read_json(scheduler, fix=ctx.corrupt_fix(scheduler))
    for component in _WEIGHT_COMPONENTS:
        folder = main / component
        if component == "vae" and not _is_tiny_vae(folder, ctx):
            continue  # a full AutoencoderKL is passed over, so its files do not matter
        weights = _find_weights(folder)
        if weights is not None:
            _check_safetensors(weights, fix_for=ctx.corrupt_fix)


def _plan(ctx: _Context) -> _Plan:
    spec = ctx.spec
    weights = ctx.weights
    main_hub: str | None = None
    local = Path(weights).expanduser()
    if local.is_dir():
        main = local.absolute()
        _check_own_files(main, ctx)
        if _find_weights(main / "unet") is None:
            raise WeightsNotFoundError(
                f"UNet weights for {spec.name} in {main}",
                looked_in=[main / "unet"],
                fix=(
                    "point --weights at a diffusers folder (unet/, vae/, text_encoder/, "
                    f"tokenizer/, scheduler/), or run `{ctx.model_command()}` and leave "
                    "--weights out, or pass --weights random"
                ),
                reason="no unet/ folder with diffusion_pytorch_model weights",
            )
    elif local.exists():
        raise ModelError(
            f"{local} is a file; pass a diffusers folder (unet/, vae/, text_encoder/, ...) "
            "as --weights: single-file checkpoints are not supported"
        )
    elif _is_hub_id(weights):
        main_hub = weights
        wanted = [s for s in _HUB_SUBFOLDERS if not (s == "vae" and spec.vae_hub_id)]
        # the spec's own repo is known to be complete; any other repo need only have a UNet
        required = ["unet"]
        if weights == spec.hub_id:
            required += [s for s in ("text_encoder", "vae") if s in wanted]
        main = _hub_snapshot(weights, required=required, wanted=wanted, ctx=ctx)
        _check_own_files(main, ctx)
    else:
        raise WeightsNotFoundError(
            f"weights folder {weights}",
            looked_in=[local.absolute()],
            fix=(
                "check the path, or pass a hub id (owner/name) or --weights random; "
                f"to use {spec.name}'s own weights, run `{ctx.model_command()}` "
                "and leave --weights out"
            ),
            reason="no such folder, and not a hub id",
        )

    unet = _Part(main / "unet", _origin(main, main_hub))

    # text encoder, and its tokenizer next to it when there is one
    if _find_weights(main / "text_encoder") is not None:
        te_root, te_hub = main, main_hub
    else:
        te_root = _hub_snapshot(
            spec.text_encoder_hub_id,
            required=("text_encoder",),
            wanted=("tokenizer",),
            ctx=ctx,
        )
        te_hub = spec.text_encoder_hub_id
    text_encoder = _Part(te_root / "text_encoder", _origin(te_root, te_hub))
    tokenizer: _Part | None = None
    for root, hub in ((main, main_hub), (te_root, te_hub)):
        if _has_tokenizer(root / "tokenizer"):
            tokenizer = _Part(root / "tokenizer", _origin(root, hub))
            break

    # VAE: must be an AutoencoderTiny; a full AutoencoderKL in vae/ is passed over
    if _is_tiny_vae(main / "vae", ctx):
        vae = _Part(main / "vae", _origin(main, main_hub))
    else:
        taesd = spec.taesd_hub_id
        vae_root = _hub_snapshot(taesd, required=("",), wanted=(), ctx=ctx)
        if not _is_tiny_vae(vae_root, ctx):
            raise ModelError(f"{taesd} ({vae_root}) does not hold an AutoencoderTiny")
        vae = _Part(vae_root, _origin(vae_root, taesd))

    scheduler = main / _SCHEDULER_CONFIG_NAME
    return _Plan(
        main=main,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler if scheduler.is_file() else None,
    )
