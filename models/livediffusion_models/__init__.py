"""livediffusion's models: which ones exist, and loading their weights.

Importing this package is cheap (no torch): the CLI lists models and defaults through it.
Loading lives in ``livediffusion_models.weights``, imported only when a model is loaded.
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
