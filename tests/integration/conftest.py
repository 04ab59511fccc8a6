"""Fixtures the integration tests share across modules: Core ML conversions of the tiny model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.fixture(scope="session")
def converted_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """``converted_for(variant, target)``: the tiny sdxs-512-0.9 converted for 64x64 once per
    setting for the whole session, in one cache (a conversion costs seconds to tens of
    seconds; every Core ML backend test reads the same few)."""
    from livediffusion_models.coreml.convert import convert
    from tinymodel import TINY_SIZE, make_tiny_family

    cache = tmp_path_factory.mktemp("coreml-backend-cache")
    done: dict[tuple[str, str], Any] = {}

    def get(variant: str, target: str) -> Any:
        if (variant, target) not in done:
            done[variant, target] = convert(
                make_tiny_family("sdxs-512-0.9"),
                model="sdxs-512-0.9",
                fingerprint="tiny",
                size=(TINY_SIZE, TINY_SIZE),
                variant=variant,  # type: ignore[arg-type]
                target=target,  # type: ignore[arg-type]
                cache_dir=cache,
                progress=lambda message: None,
            )
        return done[variant, target]

    return get
