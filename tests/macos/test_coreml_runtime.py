"""Core ML itself, on a Mac: converted programs against torch, the backend, bench and doctor.

Skipped elsewhere: the Core ML runtime exists only on macOS (coremltools' native module is
shipped only in its macOS wheels). Run on a Mac with ``./run test -m macos``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from livediffusion_models.coreml import PSNR_PASS_DB, Target, Variant, runtime_available

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(
        not runtime_available(), reason="needs macOS 14+ with the Core ML runtime (coremltools)"
    ),
]

TARGETS: list[Target] = ["macOS14", "macOS15"] if sys.platform == "darwin" else []


@pytest.mark.parametrize("target", TARGETS)
def test_core_ml_matches_torch_per_stage_and_fused(tmp_path: Path, target: Target) -> None:
    from livediffusion_models.coreml import macos_version
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
        target=target,
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
    from livediffusion_models.coreml import CoreMLSettings
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
    from livediffusion.bench import format_table, run_bench
    from livediffusion.config import ServeConfig

    config = ServeConfig(
        weights=str(tiny_folder), backend="coreml", size=(64, 64), cache_dir=str(tmp_path)
    )
    result = run_bench(config, frames=3, warmup=1)
    assert [s.name for s in result.stages] == ["pre", "step", "post", "frame"]
    assert all(s.ms_p50 > 0 for s in result.stages)
    assert "44.1 (22.7 FPS)" in format_table(result)  # the paper's frame, beside ours


def test_doctor_syphon_round_trip_passes() -> None:
    from livediffusion.config import ServeConfig
    from livediffusion.doctor import Context, run_checks

    results = {r.name: r for r in run_checks(Context(ServeConfig(), quick=True))}
    assert results["syphon round trip"].status == "PASS", results["syphon round trip"].detail
