"""livediffusion's models: which ones exist, loading their weights, and running them.

Here: the registry and its shipped configs, the offline tokenizer, the noise schedule and
``step.FrameStep`` (the frame's math); ``weights`` loads a model, ``lora`` and ``controlnet``
add to it, ``backends`` run it (torch, CUDA graphs, Core ML) and ``coreml`` converts it.

Importing this package is cheap (no torch): the CLI lists models and defaults through it.
Loading lives in ``livediffusion_models.weights``, imported only when a model is loaded.

May import: the standard library, numpy and the model libraries (torch, diffusers,
transformers, huggingface_hub, coremltools), each in the module that needs it, never here.
Never ``livediffusion_bridge`` or ``livediffusion`` (import-linter checks this).
"""

from __future__ import annotations

from livediffusion_models.errors import (
    ModelError,
    UnknownModelError,
    WeightsCorruptError,
    WeightsNotFoundError,
)
from livediffusion_models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_model

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "ModelError",
    "ModelSpec",
    "UnknownModelError",
    "WeightsCorruptError",
    "WeightsNotFoundError",
    "get_model",
]
