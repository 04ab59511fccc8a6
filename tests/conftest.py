"""Shared fixtures: a tiny diffusers folder of the real classes, and backends built from it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def shared_conversions(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Any:
    """Tiny Core ML conversions made once per run for every xdist worker (tests/conversions.py)."""
    from conversions import SharedConversions

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # each worker has its own basetemp under the run's one
        root = root.parent
    return SharedConversions(root / "shared-coreml-conversions")


@pytest.fixture(scope="session")
def syphon_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """syphon-python 0.2.0's wheel, unpacked: its real Python, for the Syphon tests."""
    import syphon_wheel as wheels

    found = wheels.find()
    if found is None:  # an environment made before ./run fetched it: try the user cache
        try:
            found = wheels.fetch(wheels.cache_folder())
        except RuntimeError as exc:
            pytest.skip(f"{exc}; `./run test` fetches it (PyPI must be reachable once)")
    return wheels.unpack(found, tmp_path_factory.mktemp("syphon-python-0.2.0"))


@pytest.fixture
def syphon_mac(monkeypatch: pytest.MonkeyPatch, syphon_wheel: Path) -> Iterator[Callable[..., Any]]:
    """``syphon_mac(**options)`` imports syphon-python's real package over the stubbed native
    layer of tests/syphon_native.py and returns its ``World`` (a stubbed Mac)."""
    import syphon_native

    worlds: list[syphon_native.World] = []

    def install(**options: Any) -> syphon_native.World:
        world = syphon_native.install(monkeypatch, syphon_wheel, **options)
        worlds.append(world)
        return world

    yield install
    for world in worlds:
        world.shutdown()
        assert world.errors == [], world.errors  # nothing failed inside a message or callback


@pytest.fixture
def coreml_mac(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """This process as an Apple Silicon Mac on macOS 15.3, with coremltools' native module
    stubbed (tests/coremlpython_stub.py) and its real Python layer running above it."""
    pytest.importorskip("coremltools", reason="the Core ML path needs coremltools")
    from coremlpython_stub import install

    return install(monkeypatch, tmp_path_factory.mktemp("coreml-native"))
