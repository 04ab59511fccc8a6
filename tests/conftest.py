"""Shared fixtures: a tiny diffusers folder of the real classes, and backends built from it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tinymodel.py

TINY_MODEL_SIZE = (64, 64)

# Seconds the slowest tests (by function name) take on a 2-core machine, rounded from
# `--durations=0`: with pytest-xdist they are handed out first, spread over the workers, so
# that no worker starts a long test while the others are nearly done. A test missing here
# counts as short; a wrong number costs some wall time, never a test. A test that reads a
# conversion another one here makes (doctor's broken compile, the ControlNet comparison) is left
# out on purpose: handed out first too, it would wait on that conversion's lock, idle.
SLOW_TESTS = {
    "test_the_real_sdxs_architecture_converts": 45,
    "test_a_soak_of_a_thousand_frames_with_feeder_restarts_passes": 32,
    "test_styles_are_one_package_with_a_function_each_sharing_base_weights": 30,
    "test_each_family_converts_with_the_declared_interface": 19,
    "test_converted_on_linux_found_compiled_loaded_and_run_on_a_mac": 20,
    "test_doctor_goes_the_whole_core_ml_path_on_a_mac_one_row_per_step": 19,
    "test_a_stop_is_clean_and_quick": 18,
    "test_a_baked_lora_is_part_of_the_key_and_of_the_weights_only": 18,
    "test_macos15_fused_keeps_the_temporal_state_as_core_ml_states": 10,
    "test_a_killed_server_comes_back_and_unload_leaves_none": 16,
    "test_a_controlnet_converts_into_the_fused_step_with_a_live_scale": 15,
    "test_a_stop_under_load_with_a_receiver_after_a_flood_is_quick": 13,
    "test_random_sdxs_is_the_real_architecture_and_runs": 12,
    "test_converting_on_a_mac_never_loads_the_fresh_program_into_core_ml": 12,
    "test_convert_writes_programs_to_the_cache_and_reuses_them": 11,
    "test_start_shows_a_real_server_that_takes_changes_and_stop_ends_it": 11,
    "test_a_sender_that_leaves_and_returns_at_another_size": 11,
    "test_a_soak_of_two_streams_restarts_each_feeder_and_counts_both": 10,
    "test_fp32_precision_keeps_float32_outputs": 10,
    "test_cli_serves_over_ndi_and_stops_on_sigterm": 9,
    "test_slow_frames_on_a_slow_machine_are_not_stalls_but_a_hang_is": 8,
    "test_the_exported_controlnet_step_equals_eager": 7,
    "test_the_exported_program_equals_the_eager_modules": 5,
}


def _expected_seconds(item: pytest.Item) -> float:
    return SLOW_TESTS.get(getattr(item, "originalname", item.name), 0.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, order the tests so that each worker's first share (``worksteal``
    hands worker ``i`` the ``i``-th of equal slices of this list) starts with its part of the
    slow tests, spread greedily by their seconds; the short tests follow in their usual order
    (so a module's tests stay together, those reading a shared conversion last), and the
    workers steal those from each other at the end. Without xdist the order is left alone."""
    worker = getattr(config, "workerinput", None)
    if worker is None or len(items) < 2:
        return
    workers = int(worker["workercount"])
    slow = sorted(
        (i for i in items if _expected_seconds(i) > 0), key=_expected_seconds, reverse=True
    )
    short = [i for i in items if not _expected_seconds(i)]
    # short tests that read a shared conversion last: by then a slow test has made it, and a
    # worker does not sit on the lock while the other converts
    short.sort(key=lambda item: "shared_conversions" in getattr(item, "fixturenames", ()))
    sizes, left = [], len(items)
    for n in range(workers):  # as worksteal slices the pending tests at the start
        sizes.append(left // (workers - n))
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    for item in slow:
        open_shares = [n for n in range(workers) if len(shares[n]) < sizes[n]]
        n = min(open_shares, key=lambda n: loads[n])
        shares[n].append(item)
        loads[n] += _expected_seconds(item)
    rest = iter(short)
    for n in range(workers):
        shares[n].extend(next(rest) for _ in range(sizes[n] - len(shares[n])))
    items[:] = [item for share in shares for item in share]


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, torch's intra-op threads share the cores with the other workers:
    each worker takes its share (one on a 2-core machine with 2 workers) instead of all of
    them, whose OpenMP threads would otherwise spin on cores the other workers need.
    Subprocesses a test starts (``livediffusion serve``) keep torch's own default."""
    worker = getattr(config, "workerinput", None)
    if worker is None:
        return
    import torch

    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(worker["workercount"])))


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
def shared_conversions(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tiny Core ML conversions made once per run for every xdist worker (tests/conversions.py)."""
    from conversions import SharedConversions

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is under the run's one
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
