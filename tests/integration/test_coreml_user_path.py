"""The whole way a user goes: ``convert`` on Linux, copy the folder, ``serve`` on a Mac.

On "Linux" (this machine as it is) ``livediffusion convert`` runs from the command line and
says where the folder goes on a Mac and what to run there. Then this process becomes a Mac
on macOS 15 (tests/coremlpython_stub.py: only coremltools' native module and the OS checks
are replaced) and builds the backend exactly as ``serve`` does (``--backend auto``): it must
find the copied folder without converting, compile it through coremltools' real
``compile_model``, load it as ``CompiledMLModel`` with the compute units and optimization hints
asked for, and run frames through the engine's threads.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livediffusion.backends import build_backend, choose_backend
from livediffusion.cli import main
from livediffusion.config import ServeConfig
from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine, EngineOptions
from livediffusion_bridge import memory, open_sink, open_source
from livediffusion_models.backends import FrameParams
from livediffusion_models.coreml import CoreMLSettings

pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "sdxs-512-0.9"


def _picture(seed: int, height: int = 48, width: int = 80) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def test_converted_on_linux_found_compiled_loaded_and_run_on_a_mac(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from coremlpython_stub import as_linux, install
    from livediffusion_models.coreml.programs import build_programs
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    linux_cache, mac_cache = tmp_path / "linux-cache", tmp_path / "mac-cache"

    # -- on Linux: livediffusion convert, as the README says ------------------------------
    command_line = f"convert --model {MODEL} --weights tiny --size 64 --cache-dir {linux_cache}"
    with pytest.MonkeyPatch.context() as linux:
        as_linux(linux)  # a no-op here; on the macOS CI job, the Linux half stays Linux
        code = main(command_line.split())
    assert code == 0
    printed = capsys.readouterr()
    folder = Path(printed.out.splitlines()[0])
    assert folder.parent.parent == linux_cache / "coreml"
    assert "-macOS14-" in folder.name  # auto off macOS: the target every Mac runs
    hints = printed.err
    where = re.search(r"~/Library/Caches/livediffusion/(coreml/\S+)/\n", hints)
    command = re.search(r"  (livediffusion serve .*)\n", hints)
    assert where is not None and command is not None, hints
    assert where.group(1) == f"coreml/{MODEL}/{folder.name}"
    assert command.group(1) == (
        f"livediffusion serve --backend coreml --model {MODEL} --weights tiny --size 64x64"
    )
    assert not any(linux_cache.rglob("*.mlmodelc"))  # nothing compiled off macOS

    # -- copy the folder to the Mac's cache, as printed -------------------------------------
    copied = mac_cache / where.group(1)
    shutil.copytree(folder, copied)

    # -- on a Mac (macOS 15.3, Apple Silicon): serve builds its backend ----------------------
    (tmp_path / "core-ml").mkdir()
    world = install(monkeypatch, tmp_path / "core-ml", macos=(15, 3))

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Mac converted again instead of using the copied folder")

    monkeypatch.setattr("livediffusion_models.coreml.convert._convert_one", no_conversion)
    # the numbers: the stub computes each program with the torch module it came from
    tiny = load_model(get_model(MODEL), "tiny", progress=False)
    for spec in build_programs(tiny.unet, tiny.vae, size=(64, 64), tokens=77, variant="fused"):
        world.register(copied / f"{spec.name}.mlpackage", spec.module.eval())

    settings = CoreMLSettings(low_precision_accumulation=True, specialization="fast-prediction")
    config = ServeConfig(
        model=MODEL, weights="tiny", size=(64, 64), cache_dir=str(mac_cache), coreml=settings
    )
    assert choose_backend(config.backend) == "coreml"  # auto on Apple Silicon with Core ML
    backend = build_backend(config)
    assert backend.name == "coreml-fused fp16 cpu_and_gpu"
    assert backend.converted.folder == copied  # found, not converted (auto on 15 takes 14)

    # compiled once through compile_model: into Core ML's temporary folder, moved beside the
    # package under its final name, nothing half-done left
    (compile_event,) = world.of_kind("compile")
    assert compile_event.path == str(copied / "step.mlpackage")
    assert sorted(p.name for p in copied.iterdir()) == [
        "manifest.json",
        "step.mlmodelc",
        "step.mlpackage",
    ]
    # loaded with the compute units and the hints asked for, as Core ML's strings
    (load_event,) = world.of_kind("load")
    assert load_event.path == str(copied / "step.mlmodelc")
    assert load_event.detail == {
        "compute_units": "CPU_AND_GPU",
        "hints": {
            "allowLowPrecisionAccumulationOnGPU": "True",
            "specializationStrategy": "FastPrediction",
        },
    }

    # -- frames through the engine's threads -------------------------------------------------
    memory.reset()
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        backend=backend,
        controls=ControlStore(Controls(prompt="a lighthouse", prompt_glide=0.0)),
        options=EngineOptions(),
    )
    engine.start()
    try:
        out = memory.channel("out")
        deadline = time.monotonic() + 120
        seed = 0
        while out.published_count < 5 and time.monotonic() < deadline:
            memory.channel("cam").push(_picture(seed))
            seed += 1
            time.sleep(0.05)
        frames = out.wait_published(5, timeout=5.0)
    finally:
        engine.stop()
        engine.source.close()
        engine.sink.close()
        memory.reset()
    assert engine.stats.errors == 0 and engine.stats.steps >= 5
    assert world.predictions(copied / "step.mlmodelc") >= engine.stats.steps  # + warm-up
    last = frames[-1].pixels
    assert last.shape == (48, 80, 4) and np.all(last[..., 3] == 255)
    assert last[..., :3].std() > 0

    # -- the next start loads what was compiled, without compiling again ----------------------
    again = build_backend(config)
    again.set_prompt(again.encode_prompt("a lighthouse"))
    out_pixels = np.zeros((48, 80, 4), dtype=np.uint8)
    again.step(_picture(0), FrameParams(), out=out_pixels)
    assert len(world.of_kind("compile")) == 1
    assert len(world.of_kind("load")) == 2
