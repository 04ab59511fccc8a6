"""Backends by name: the one table ``serve``, ``bench`` and ``doctor`` choose from.

Each row says what the backend needs before any weights are loaded (so a Linux user asking
for Core ML hears why in one sentence, not after a minute of loading), which dtype to load
weights in, and how to build it from loaded weights. ``auto`` is Core ML on Apple Silicon
when coremltools is installed (the paper's one effective speed-up on a Mac), else torch.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from livediffusion.config import ServeConfig
from livediffusion_models.backends import Backend

if TYPE_CHECKING:
    import torch

    from livediffusion_models.backends.cuda_graph import CompileMode
    from livediffusion_models.controlnet import LoadedControlNet
    from livediffusion_models.lora import LoraRequest
    from livediffusion_models.lora.read import WeightedLora
    from livediffusion_models.weights import LoadedModel

__all__ = [
    "BACKENDS",
    "BackendChoice",
    "build_backend",
    "choose_backend",
    "find_loras",
    "read_styles",
]

log = logging.getLogger("livediffusion")


@dataclass(frozen=True)
class BackendChoice:
    description: str
    check: Callable[[ServeConfig], None]
    """Raise with one sentence if this backend cannot run here; cheap, before any loading."""
    load_dtype: Callable[[ServeConfig], torch.dtype]
    build: Callable[[ServeConfig, LoadedModel], Backend]
    """Build it from loaded weights; the LoRAs and the ControlNet are read there
    (:func:`read_styles`), before the backend touches the modules."""


def _model_size(config: ServeConfig, model: LoadedModel) -> tuple[int, int]:
    return config.size or (model.spec.default_size, model.spec.default_size)


# -- torch --------------------------------------------------------------------------------


def _torch_check(config: ServeConfig) -> None:
    from livediffusion_models.backends.torch_backend import resolve_device

    resolve_device(config.device)


def _torch_dtype(config: ServeConfig) -> torch.dtype:
    from livediffusion_models.backends.torch_backend import resolve_device, resolve_dtype

    return resolve_dtype(config.dtype, resolve_device(config.device))


def _compile_mode(name: str) -> CompileMode:
    from livediffusion_models.backends.cuda_graph import COMPILE_MODES

    for mode in COMPILE_MODES:
        if mode == name:
            return mode
    raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {name!r}")


def _torch_build(config: ServeConfig, model: LoadedModel) -> Backend:
    from livediffusion_models.backends.torch_backend import (
        TorchBackend,
        TorchOptions,
        resolve_device,
    )
    from livediffusion_models.cache import cache_dir

    device = resolve_device(config.device)
    options = TorchOptions(
        size=_model_size(config, model),
        fit=config.fit,
        seed=config.controls.seed,
        device=device,
        dtype=_torch_dtype(config),
        compile=_compile_mode(config.compile),
        compile_cache=cache_dir(config.cache_dir) / "torch-compile",
        streams=len(config.stream_list()),
        **_torch_styles(config, model),
    )
    return TorchBackend.from_components(model, options)


# -- Core ML --------------------------------------------------------------------------------


def _coreml_check(config: ServeConfig) -> None:
    from livediffusion_models.coreml import check_hints, default_target
    from livediffusion_models.coreml.convert import resolve_stateful
    from livediffusion_models.coreml.runtime import require_runtime

    require_runtime()
    settings = config.coreml
    check_hints(settings)
    target = settings.target or default_target()
    resolve_stateful(settings.variant, settings.precision, target, settings.states)


def _coreml_dtype(config: ServeConfig) -> torch.dtype:
    import torch

    return torch.float32  # export traces in float32; the converter applies the precision


def _coreml_build(config: ServeConfig, model: LoadedModel) -> Backend:
    from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions

    options = CoreMLOptions(
        size=_model_size(config, model),
        fit=config.fit,
        seed=config.controls.seed,
        coreml=config.coreml,
        cache_dir=config.cache_dir,
        lora_styles=config.lora_styles,
        streams=len(config.stream_list()),
        **_coreml_styles(config, model),
    )
    log.info(
        "Core ML: %s programs (converted once per model, size and settings; "
        "the first conversion of a full-size model takes minutes)",
        config.coreml.variant,
    )
    return CoreMLBackend.from_components(model, options)


BACKENDS: Mapping[str, BackendChoice] = MappingProxyType(
    {
        "torch": BackendChoice(
            description="PyTorch on cuda, mps or cpu (--device)",
            check=_torch_check,
            load_dtype=_torch_dtype,
            build=_torch_build,
        ),
        "coreml": BackendChoice(
            description="Core ML on Apple Silicon (macOS 14+; pip install 'livediffusion[mac]')",
            check=_coreml_check,
            load_dtype=_coreml_dtype,
            build=_coreml_build,
        ),
    }
)


def choose_backend(name: str) -> str:
    """``auto`` -> coreml on Apple Silicon with a usable Core ML runtime, else torch."""
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(f"backend must be auto or one of {', '.join(BACKENDS)}, got {name!r}")
        return name
    from livediffusion_models.coreml import runtime_available

    if sys.platform == "darwin" and platform.machine() == "arm64" and runtime_available():
        return "coreml"
    return "torch"


def build_backend(config: ServeConfig) -> Backend:
    """Check the backend can run here, load the weights, build it."""
    import time

    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    name = choose_backend(config.backend)
    choice = BACKENDS[name]
    choice.check(config)
    spec = get_model(config.model)
    weights = config.weights or spec.hub_id
    dtype = choice.load_dtype(config)
    find_loras(config.lora, cache_dir=config.cache_dir)  # a typo said before a minute of loading
    log.info("loading %s (%s weights) for the %s backend", spec.name, weights, name)
    started = time.monotonic()
    model = load_model(spec, weights, cache_dir=config.cache_dir, progress=True, torch_dtype=dtype)
    backend = choice.build(config, model)
    height, width = backend.model_size
    log.info(
        "model ready in %.1f s: %s at %dx%d",
        time.monotonic() - started,
        backend.name,
        width,
        height,
    )
    return backend


# -- LoRAs and the ControlNet ----------------------------------------------------------------


def find_loras(requests: tuple[LoraRequest, ...], *, cache_dir: str | None) -> None:
    """Find (or fetch) every ``--lora`` file before the model loads: a missing one is said
    in one line at once. Reading and checking them against the model comes after."""
    if not requests:
        return
    from livediffusion_models.lora.files import resolve_lora

    for request in requests:
        resolve_lora(request.source, cache_dir=cache_dir)


def read_styles(
    config: ServeConfig, model: LoadedModel
) -> tuple[tuple[WeightedLora, ...], LoadedControlNet | None]:
    """Every ``--lora`` read and checked against ``model``, then the ``--controlnet``: all of
    them before any weight moves, so a bad one stops the start with its one line and nothing
    is applied half-way."""
    loras: tuple[WeightedLora, ...] = ()
    if config.lora:
        from livediffusion_models.lora.read import read_loras

        loras = read_loras(model, config.lora, cache_dir=config.cache_dir)
        for choice in loras:
            log.info("LoRA %s (%s) at %g", choice.lora.name, choice.lora.base, choice.weight)
    controlnet = None
    if config.controlnet is not None:
        from livediffusion_models.controlnet import load_controlnet

        controlnet = load_controlnet(
            config.controlnet,
            spec=model.spec,
            unet=model.unet,
            cache_dir=config.cache_dir,
            seed=config.controls.seed,
        )
        log.info("ControlNet %s (%s condition)", controlnet.name, controlnet.condition)
    return loras, controlnet


def _torch_styles(config: ServeConfig, model: LoadedModel) -> dict[str, Any]:
    if not config.lora and config.controlnet is None:
        return {}
    runtime = config.lora_runtime
    if runtime not in ("in-place", "peft"):
        raise ValueError(f"lora_runtime must be in-place or peft, got {runtime!r}")
    loras, controlnet = read_styles(config, model)
    return {"loras": loras, "controlnet": controlnet, "lora_runtime": runtime}


def _coreml_styles(config: ServeConfig, model: LoadedModel) -> dict[str, Any]:
    loras, controlnet = read_styles(config, model)
    return {"loras": loras, "controlnet": controlnet}
