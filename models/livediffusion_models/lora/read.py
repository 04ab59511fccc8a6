"""Reading a LoRA file with diffusers' own loaders, and checking it fits, before any weight moves.

The file goes through exactly the calls ``pipeline.load_lora_weights`` makes
(``StableDiffusionLoraLoaderMixin.lora_state_dict``, then ``load_lora_into_unet`` and
``load_lora_into_text_encoder``), so kohya/A1111 key names, old diffusers attention-processor
names and the diffusers/PEFT format are all converted by the code diffusers maintains. The
target of those calls is not the running model but a *hollow* copy of it: the same classes
built from the same configs, every weight a zero-stride tensor of the right shape and no
storage. PEFT injects its LoRA layers there, with the file's factors, scaling and alphas, and
each layer's ``get_delta_weight`` is then the exact delta diffusers' ``fuse_lora`` would add.

What is checked before anything is applied, each failure one line that names the file:

A folder PEFT's own ``save_pretrained`` wrote (``adapter_config.json`` + ``adapter_model.*``)
goes the same way: its keys and config are handed to diffusers' loader as diffusers' format.

* the file reads at all (:class:`LoraCorruptError`): the safetensors header against the file's
  size, then every tensor;
* it is a LoRA livediffusion can blend (:class:`LoraFormatError`): lora tensors only, no DoRA
  (its magnitude normalisation is not a weight delta you can scale);
* it was made for this base (:class:`LoraBaseMismatchError`): the cross-attention width its
  ``attn2.to_k`` factors expect (768 for SD 1.x, 1024 for SD 2.x, 2048 for SDXL) and the text
  width, then that every layer it names exists in this model with the same shape.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from livediffusion_models.errors import (
    LoraBaseMismatchError,
    LoraCorruptError,
    LoraFormatError,
)
from livediffusion_models.lora import LoraRequest
from livediffusion_models.lora.files import resolve_lora
from livediffusion_models.lora.formats import (
    digest,
    first_line,
    is_peft_adapter,
    raw_keys,
    read_peft_adapter,
)

__all__ = [
    "Component",
    "LoraFile",
    "LoraLayer",
    "WeightedLora",
    "describe_base",
    "read_lora",
    "read_loras",
]

Component = Literal["unet", "text_encoder"]
_ADAPTER = "livediffusion"
_BASES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


def describe_base(cross_attention_dim: int) -> str:
    """A model family from its cross-attention width: what LoRA sites call the base."""
    name = _BASES.get(cross_attention_dim)
    width = f"{cross_attention_dim}-wide cross-attention"
    return f"{name} ({width})" if name else f"a model with {width}"


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """One layer a LoRA changes: where it is, and PEFT's layer that knows its delta."""

    component: Component
    module: str
    """The module's path inside its component (``down_blocks.0.attentions.0.proj_in``)."""
    tuner: Any
    """PEFT's LoRA layer (in the hollow copy), holding this LoRA's factors and scaling."""

    def deltas(self) -> dict[str, torch.Tensor]:
        """Parameter name -> what weight 1 adds to it (float32, on the CPU).

        ``get_delta_weight`` is PEFT's (``B @ A * scaling``, convolutions and fan-in-fan-out
        handled there); a LoRA trained with a bias on ``B`` also moves the layer's bias, as
        PEFT's ``merge`` does.
        """
        tuner = self.tuner
        with torch.no_grad():
            out = {"weight": tuner.get_delta_weight(_ADAPTER).float()}
            if getattr(tuner, "lora_bias", {}).get(_ADAPTER, False):
                bias = tuner.lora_B[_ADAPTER].bias
                out["bias"] = (bias * tuner.scaling[_ADAPTER]).float()
        return out


@dataclass(frozen=True, eq=False)
class LoraFile:
    """A LoRA read and checked against one model; nothing applied yet."""

    name: str
    """How the performer knows it: the file's stem, or the hub id."""
    source: str
    """What was asked for (``--lora`` value without the weight)."""
    path: Path
    digest: str
    """16 hex digits of the file's SHA-256: a cache key (Core ML bakes LoRAs in)."""
    base: str
    """What the LoRA was made for, as far as its shapes tell (:func:`describe_base`)."""
    layers: tuple[LoraLayer, ...]

    @property
    def touches_text_encoder(self) -> bool:
        return any(layer.component == "text_encoder" for layer in self.layers)

    def components(self) -> frozenset[Component]:
        return frozenset(layer.component for layer in self.layers)


@contextmanager
def _quiet() -> Iterator[None]:
    """diffusers and PEFT log every key they convert and warn about what we check ourselves."""
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft", "transformers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    from livediffusion_models.weights.hub import _progress_bars

    try:
        with warnings.catch_warnings(), _progress_bars(False):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _hollow(module: nn.Module) -> nn.Module:
    """The same classes and shapes as ``module``, built from its config, holding no data.

    Built on the meta device (no memory), then every parameter becomes a zero-stride CPU
    tensor of its shape: PEFT sees real shapes, dtypes and a real device to put the LoRA
    factors on, and the whole copy of a 330M-parameter UNet costs a few kilobytes.
    """
    config = module.config
    cls: Any = type(module)
    with torch.device("meta"):
        # diffusers models are built with from_config, transformers models from their config
        hollow: nn.Module = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    for sub in hollow.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                empty = torch.zeros((), dtype=torch.float32).expand(param.shape)
                sub._parameters[name] = nn.Parameter(empty, requires_grad=False)
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None:
                sub._buffers[name] = torch.zeros((), dtype=buffer.dtype).expand(buffer.shape)
    return hollow


def _is_down(key: str) -> bool:
    return key.endswith(("lora_A.weight", "down.weight"))


def _width(state_dict: Mapping[str, torch.Tensor], prefix: str, *parts: str) -> int | None:
    """The input width of the first LoRA down-projection under ``prefix`` whose key has
    every one of ``parts``: what the layer it was trained on took in."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and _is_down(key) and all(p in key for p in parts):
            return int(value.shape[-1])
    return None


def _lora_base(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, int | None, int | None]:
    cross = _width(state_dict, "unet.", "attn2", "to_k") or _width(
        state_dict, "unet.", "attn2", "to_v"
    )
    text = _width(state_dict, "text_encoder.", "q_proj")
    if any(k.startswith("text_encoder_2.") for k in state_dict):
        return "SDXL (two text encoders)", cross, text
    if cross is not None:
        return describe_base(cross), cross, text
    if text is not None and text in _BASES:
        return describe_base(text), cross, text
    return "another model", cross, text


def _expected_modules(
    state_dict: Mapping[str, torch.Tensor], component: Component, hollow: nn.Module
) -> set[str]:
    """The module names diffusers will target in ``component``, converted the way
    ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` convert them."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    prefix = f"{component}."
    part = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if not part:
        return set()
    if component == "unet":
        if "lora_A" not in next(iter(part)):
            part = convert_unet_state_dict_to_peft(part)
    else:
        part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        if not hasattr(hollow, "text_model"):
            part = {k.removeprefix("text_model."): v for k, v in part.items()}
    return {k.split(".lora_")[0] for k in part if ".lora_" in k}


def _tuners(hollow: nn.Module) -> dict[str, Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {
        name: module
        for name, module in hollow.named_modules()
        if isinstance(module, BaseTunerLayer) and _ADAPTER in getattr(module, "scaling", {})
    }


def read_lora(
    source: str,
    *,
    unet: Any,
    text_encoder: Any = None,
    model: str = "this model",
    cache_dir: str | None = None,
    allow_download: bool = True,
) -> LoraFile:
    """Find, read and check one LoRA against ``unet`` (and ``text_encoder``), touching neither.

    ``model`` names the model in messages (``sdxs-512-0.9``). Raises a
    :class:`~livediffusion_models.errors.LoraError` subclass, one line, on any problem.
    """
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

    path = resolve_lora(source, cache_dir=cache_dir, allow_download=allow_download)
    given = Path(source).expanduser()
    name = path.stem if given.is_file() else given.name if given.is_dir() else source
    keys = raw_keys(path, name)
    if any("dora_scale" in k or "lora_magnitude_vector" in k for k in keys):
        raise LoraFormatError(
            f"LoRA {name} is a DoRA: its magnitude scaling is not a weight delta, so it cannot "
            "be blended live; use a plain LoRA"
        )
    with _quiet():
        try:
            if is_peft_adapter(path):
                state_dict, alphas, metadata = read_peft_adapter(path, name)
            else:
                state_dict, alphas, metadata = Loader.lora_state_dict(
                    str(path.parent),
                    weight_name=path.name,
                    local_files_only=True,
                    use_safetensors=path.suffix == ".safetensors" or None,
                    return_lora_metadata=True,
                )
        except (LoraCorruptError, LoraFormatError):
            raise
        except Exception as error:  # diffusers' converters raise ValueError/KeyError/...
            raise LoraFormatError(
                f"LoRA {name}: diffusers cannot read it as a LoRA ({first_line(error)})"
            ) from error
    if not state_dict or not all("lora" in k for k in state_dict):
        other = next((k for k in state_dict if "lora" not in k), "nothing")
        raise LoraFormatError(
            f"LoRA {name} is not a LoRA file ({len(keys)} tensors, e.g. {other!r}): "
            "a full checkpoint or another kind of adapter?"
        )

    unet_width = int(unet.config.cross_attention_dim)
    model_base = f"{model} is {describe_base(unet_width)}"
    base, cross, text = _lora_base(state_dict)
    if cross is not None and cross != unet_width:
        raise LoraBaseMismatchError(
            f"LoRA {name} is for {base} and {model_base}: use a LoRA made for "
            f"{_BASES.get(unet_width, 'this model')}"
        )
    te_keys = any(k.startswith("text_encoder.") for k in state_dict)
    if text_encoder is not None and text is not None:
        hidden = int(text_encoder.config.hidden_size)
        if text != hidden:
            raise LoraBaseMismatchError(
                f"LoRA {name} is for {base} (text encoder {text} wide) and {model_base} "
                f"(text encoder {hidden} wide): use a LoRA made for this model's base"
            )
    if base.startswith("SDXL"):
        raise LoraBaseMismatchError(f"LoRA {name} is for {base} and {model_base}")

    hollow_unet = _hollow(unet)
    hollow_text = _hollow(text_encoder) if text_encoder is not None and te_keys else None
    with _quiet():
        try:
            Loader.load_lora_into_unet(
                state_dict,
                network_alphas=alphas,
                unet=hollow_unet,
                adapter_name=_ADAPTER,
                metadata=metadata,
                low_cpu_mem_usage=True,
            )
            if hollow_text is not None:
                Loader.load_lora_into_text_encoder(
                    state_dict,
                    network_alphas=alphas,
                    text_encoder=hollow_text,
                    adapter_name=_ADAPTER,
                    metadata=metadata,
                    low_cpu_mem_usage=True,
                )
        except Exception as error:
            if "not found in the base model" in str(error):  # PEFT: no target matched at all
                raise LoraBaseMismatchError(
                    f"LoRA {name} is for {base} with other blocks and {model_base}: none of its "
                    f"layers is in {model}"
                ) from error
            if "size mismatch" in str(error):
                raise LoraBaseMismatchError(
                    f"LoRA {name} is for {base} with other layer sizes and {model_base} "
                    f"({first_line(error)})"
                ) from error
            raise LoraFormatError(
                f"LoRA {name}: diffusers cannot apply it ({first_line(error)})"
            ) from error

    layers: list[LoraLayer] = []
    parts: list[tuple[Component, nn.Module | None]] = [
        ("unet", hollow_unet),
        ("text_encoder", hollow_text),
    ]
    for component, hollow in parts:
        if hollow is None:
            continue
        found = _tuners(hollow)
        missing = sorted(_expected_modules(state_dict, component, hollow) - set(found))
        if missing:
            expected = len(missing) + len(found)
            raise LoraBaseMismatchError(
                f"LoRA {name} is for {base} with other blocks and {model_base}: "
                f"{len(missing)} of its {expected} {component} layers are not in {model} "
                f"(e.g. {missing[0]})"
            )
        for module, tuner in sorted(found.items()):
            if getattr(tuner, "use_dora", {}).get(_ADAPTER, False):
                raise LoraFormatError(f"LoRA {name} is a DoRA: it cannot be blended live")
            layers.append(LoraLayer(component=component, module=module, tuner=tuner))
    if te_keys and text_encoder is None:
        raise LoraFormatError(
            f"LoRA {name} also changes the text encoder, and none was given to apply it to"
        )
    if not layers:
        raise LoraFormatError(f"LoRA {name} changes no layer of {model}")
    return LoraFile(
        name=name,
        source=source,
        path=path,
        digest=digest(path, path.parent / "adapter_config.json" if is_peft_adapter(path) else None),
        base=base,
        layers=tuple(layers),
    )


@dataclass(frozen=True, eq=False)
class WeightedLora:
    """A checked LoRA and the weight it starts at: what a backend's options carry."""

    lora: LoraFile
    weight: float = 1.0


def read_loras(
    components: Any,
    requests: Iterable[LoraRequest],
    *,
    cache_dir: str | None = None,
    allow_download: bool = True,
) -> tuple[WeightedLora, ...]:
    """Every ``--lora`` of a start, read and checked against ``components`` (a
    ``LoadedModel``) before any backend is built: the first bad one raises its one line."""
    spec = getattr(components, "spec", None)
    model = spec.name if spec is not None else "this model"
    return tuple(
        WeightedLora(
            read_lora(
                request.source,
                unet=components.unet,
                text_encoder=components.text_encoder,
                model=model,
                cache_dir=cache_dir,
                allow_download=allow_download,
            ),
            request.weight,
        )
        for request in requests
    )
