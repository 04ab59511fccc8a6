"""Fixtures the integration tests share across modules: Core ML conversions of the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conversions import SMALL

SETTINGS = (("fused", "macOS14"), ("fused", "macOS15"), ("stages", "macOS14"))
"""The (variant, target) pairs the Core ML backend and streams tests run: stateless fused,
stateful fused (macOS 15), and the three stage programs."""


@pytest.fixture(scope="session")
def converted_for(
    tmp_path_factory: pytest.TempPathFactory, shared_conversions: Any
) -> Callable[..., Any]:
    """``converted_for(variant, target)``: the smallest tiny model (``make_tiny_components``,
    named sdxs-512-0.9: the backend's wiring is the subject, not a family's blocks) at 64x64,
    each setting
    converted once per run for every xdist worker (tests/conversions.py) and copied into one
    cache for this session. Fetched when the fixture is made, before any test makes this
    process a Mac (session fixtures come before the function-scoped Mac stub): conversion
    runs on the real OS, and compiling the copy is left to ``load_programs`` on the stubbed
    Mac."""
    cache = tmp_path_factory.mktemp("coreml-backend-cache")
    done = {
        (variant, target): shared_conversions.get(cache, SMALL, variant=variant, target=target)
        for variant, target in SETTINGS
    }

    def get(variant: str, target: str) -> Any:
        return done[variant, target]

    return get
