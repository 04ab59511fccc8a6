"""Shared fixtures: a tiny diffusers folder of the real classes, and backends built from it."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tinymodel.py

TINY_MODEL_SIZE = (64, 64)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinymodel import save_tiny_folder

    return save_tiny_folder(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def make_tiny_backend(tiny_folder: Path) -> Callable[..., Any]:
    """Build a fresh TorchBackend on the CPU from the tiny folder (the real loading path)."""
    from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    def make(**options: Any) -> TorchBackend:
        model = load_model(get_model("sdxs-512-0.9"), str(tiny_folder), progress=False)
        options.setdefault("size", TINY_MODEL_SIZE)
        options.setdefault("device", "cpu")
        return TorchBackend.from_components(model, TorchOptions(**options))

    return make


@pytest.fixture
def coreml_mac(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This process as an Apple Silicon Mac on macOS 15.3, with coremltools' native module
    stubbed (tests/coremlpython_stub.py) and its real Python layer running above it."""
    pytest.importorskip("coremltools", reason="the Core ML path needs coremltools")
    from coremlpython_stub import install

    return install(monkeypatch, tmp_path_factory.mktemp("coreml-native"))
