"""Core ML itself, on a Mac: converted programs against torch, the backend, bench and doctor.

Skipped elsewhere: the Core ML runtime exists only on macOS (coremltools' native module is
shipped only in its macOS wheels). These tests never use tests/coremlpython_stub.py: each
checks that the native module it runs on is coremltools' own. Run on a Mac with
``.venv/bin/python -m pytest tests/macos -m macos`` (the macOS CI job does).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from livediffusion_models.coreml import (
    PSNR_PASS_DB,
    CoreMLSettings,
    Target,
    Variant,
    macos_version,
    runtime_available,
)

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(
        not runtime_available(), reason="needs macOS 14+ with the Core ML runtime (coremltools)"
    ),
]


@pytest.fixture(autouse=True)
def real_core_ml() -> Iterator[None]:
    """The native module is coremltools' compiled one, not the stub, before and after."""

    def check() -> None:
        native = sys.modules.get("coremltools.libcoremlpython")
        if native is None:
            import coremltools.libcoremlpython as native
        assert str(getattr(native, "__file__", "")).endswith(".so"), native

    check()
    yield
    check()


TARGETS: list[Target] = ["macOS14", "macOS15"] if sys.platform == "darwin" else []


@pytest.mark.parametrize("target", TARGETS)
def test_core_ml_matches_torch_per_stage_and_fused(tmp_path: Path, target: Target) -> None:
    from livediffusion_models.coreml.compare import compare_with_torch
    from tinymodel import make_tiny_family

    if target == "macOS15" and macos_version() < (15,):
        pytest.skip("macOS15 programs need macOS 15")
    components = make_tiny_family("sdxs-512-0.9")
    scores = compare_with_torch(
        components,
        model="sdxs-512-0.9",
        fingerprint="tiny",
        size=(64, 64),
        settings=CoreMLSettings(target=target),
        cache_dir=tmp_path,
    )
    assert set(scores) == {"encoder", "unet", "decoder", "fused"}
    assert min(scores.values()) >= PSNR_PASS_DB, scores


@pytest.mark.parametrize("variant", ["fused", "stages"])
def test_the_backend_runs_frames_from_the_loading_path(
    tiny_folder: Path, tmp_path: Path, variant: Variant
) -> None:
    from livediffusion_models.backends import FrameParams
    from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    model = load_model(get_model("sdxs-512-0.9"), str(tiny_folder), progress=False)
    options = CoreMLOptions(
        size=(64, 64), coreml=CoreMLSettings(variant=variant), cache_dir=str(tmp_path)
    )
    backend = CoreMLBackend.from_components(model, options)
    assert all(p.compiled.is_dir() for p in backend.converted.programs.values())
    backend.set_prompt(backend.encode_prompt("a lighthouse"))
    picture = np.random.default_rng(0).integers(0, 256, (72, 96, 4), dtype=np.uint8)
    out = np.zeros_like(picture)
    for _ in range(3):
        backend.step(picture, FrameParams(feedback=0.3, smoothing=0.3), out=out)
    assert np.all(out[..., 3] == 255)
    assert out[..., :3].std() > 0


def test_bench_runs_on_core_ml(tiny_folder: Path, tmp_path: Path) -> None:
    from livediffusion.config import ServeConfig
    from livediffusion.tools.bench import format_table, run_bench

    config = ServeConfig(
        weights=str(tiny_folder), backend="coreml", size=(64, 64), cache_dir=str(tmp_path)
    )
    result = run_bench(config, frames=3, warmup=1)
    assert [s.name for s in result.stages] == ["pre", "step", "post", "frame"]
    assert all(s.ms_p50 > 0 for s in result.stages)
    assert "44.1 (22.7 FPS)" in format_table(result)  # the paper's frame, beside ours


def test_doctor_syphon_round_trip_passes() -> None:
    from livediffusion.config import ServeConfig
    from livediffusion.tools.doctor import Context, run_checks

    results = {r.name: r for r in run_checks(Context(ServeConfig(), quick=True))}
    assert results["syphon round trip"].status == "PASS", results["syphon round trip"].detail


def test_optimization_hints_load_and_run_on_macos_15(tiny_folder: Path, tmp_path: Path) -> None:
    from livediffusion_models.backends import FrameParams
    from livediffusion_models.backends.coreml_backend import CoreMLBackend, CoreMLOptions
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    if macos_version() < (15,):
        pytest.skip("optimization hints need macOS 15")
    model = load_model(get_model("sdxs-512-0.9"), str(tiny_folder), progress=False)
    settings = CoreMLSettings(low_precision_accumulation=True, specialization="fast-prediction")
    backend = CoreMLBackend.from_components(
        model, CoreMLOptions(size=(64, 64), coreml=settings, cache_dir=str(tmp_path))
    )
    backend.set_prompt(backend.encode_prompt("a lighthouse"))
    out = np.zeros((64, 64, 4), dtype=np.uint8)
    backend.step(np.full((64, 64, 4), 128, dtype=np.uint8), FrameParams(), out=out)
    assert out[..., :3].std() > 0


def test_doctor_core_ml_rows_pass_one_step_each() -> None:
    from livediffusion.config import ServeConfig
    from livediffusion.tools.doctor import CHECKS, Context, run_checks

    names = ("coreml convert", "coreml compile", "coreml load", "coreml frame vs torch")
    rows = tuple(check for check in CHECKS if check[0] in names)
    results = list(run_checks(Context(ServeConfig(weights="tiny", size=(64, 64))), rows))
    assert [r.status for r in results] == ["PASS"] * 4, [(r.name, r.detail) for r in results]
    assert sum(r.seconds for r in results) < 60.0
