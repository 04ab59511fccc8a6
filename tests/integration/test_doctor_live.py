"""``livediffusion doctor`` for real: NDI over loopback, the tiny model, the CLI, and the
Core ML path on a Mac stubbed below coremltools' Python (tests/coremlpython_stub.py)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livediffusion.config import ServeConfig
from livediffusion.tools.doctor import CHECKS, Context, run_checks, run_doctor
from livediffusion_models.coreml import CoreMLSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CHECK = dict(CHECKS)


def run(name: str, config: ServeConfig, *, quick: bool = False) -> tuple[str, str]:
    (result,) = run_checks(Context(config, quick=quick), ((name, CHECK[name]),))
    return result.status, result.detail


def test_ndi_round_trip_passes_here() -> None:
    pytest.importorskip("NDIlib")
    status, detail = run("ndi round trip", ServeConfig())
    assert status == "PASS", detail
    assert re.search(r"via ndi://127\.0\.0\.1:\d+ in \d+\.\d\d s", detail), detail


def test_ndi_round_trip_fails_when_the_picture_comes_back_flipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("NDIlib")
    from livediffusion_bridge import _ndi

    publish = _ndi.NdiSink.publish

    def upside_down(self: _ndi.NdiSink, pixels: np.ndarray) -> None:
        publish(self, np.ascontiguousarray(pixels[::-1]))

    monkeypatch.setattr(_ndi.NdiSink, "publish", upside_down)
    status, detail = run("ndi round trip", ServeConfig())
    assert status == "FAIL"
    assert "the picture came back upside down" in detail


def test_ndi_round_trip_fails_when_red_and_blue_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("NDIlib")
    from livediffusion_bridge import _ndi

    publish = _ndi.NdiSink.publish

    def swapped(self: _ndi.NdiSink, pixels: np.ndarray) -> None:
        publish(self, np.ascontiguousarray(pixels[..., (2, 1, 0, 3)]))

    monkeypatch.setattr(_ndi.NdiSink, "publish", swapped)
    status, detail = run("ndi round trip", ServeConfig())
    assert status == "FAIL" and "red and blue swapped" in detail


def test_quick_report_passes_here() -> None:
    pytest.importorskip("NDIlib")
    stream = io.StringIO()
    code = run_doctor(ServeConfig(weights="random"), quick=True, stream=stream)
    text = stream.getvalue()
    assert code == 0, text
    assert re.search(r"^PASS  ndi round trip ", text, re.MULTILINE), text
    assert re.search(r"^\d+ passed, 0 failed, \d+ skipped$", text, re.MULTILINE), text


def test_torch_one_frame_passes_with_the_tiny_model(tiny_folder: Path) -> None:
    config = ServeConfig(weights=str(tiny_folder), size=(64, 64), device="cpu")
    status, detail = run("torch one frame", config)
    assert status == "PASS", detail
    assert re.fullmatch(r"torch-cpu float32, 64x64, \d+ ms per frame \(.+ weights\)", detail)


def test_torch_one_frame_fails_on_a_flat_output(
    tiny_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livediffusion_models.backends import FrameParams
    from livediffusion_models.backends.torch_backend import TorchBackend

    def flat(
        self: TorchBackend, pixels: np.ndarray, params: FrameParams, *, out: np.ndarray
    ) -> None:
        out[...] = 255  # what a NaN frame looks like once clamped to pixels

    monkeypatch.setattr(TorchBackend, "step", flat)
    config = ServeConfig(weights=str(tiny_folder), size=(64, 64), device="cpu")
    status, detail = run("torch one frame", config)
    assert status == "FAIL" and "one flat colour" in detail


def test_a_missing_device_fails_the_torch_frame_with_its_sentence() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    status, detail = run("torch one frame", ServeConfig(device="cuda"))
    assert status == "FAIL" and "no CUDA GPU" in detail


def test_cli_doctor_quick_exits_zero_and_prints_the_summary() -> None:
    pytest.importorskip("NDIlib")
    script = Path(sys.executable).with_name("livediffusion")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "livediffusion"]
    done = subprocess.run(
        [*command, "doctor", "--quick"], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "paste this whole report into bug reports" in done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, 0 failed, \d+ skipped", last), last


# -- the Core ML path on a Mac (coremltools' real Python over the native stub) -------------------

COREML_ROWS = ("coreml convert", "coreml compile", "coreml load", "coreml frame vs torch")


def _coreml_report(world: Any, config: ServeConfig) -> tuple[int, str]:
    """Run doctor's Core ML rows, printed as ``livediffusion doctor`` prints them. The stub
    computes with the torch modules of the tiny model doctor converted (registered as soon as
    its convert row made the packages)."""
    from livediffusion.tools import doctor

    def convert_then_register(context: Context) -> Any:
        outcome = doctor._check_coreml_convert(context)
        run = context.scratch.get("coreml")
        if run is not None and run.converted is not None:
            world.register_converted(run.converted, run.model)
        return outcome

    rows = tuple(
        (name, convert_then_register if name == "coreml convert" else check)
        for name, check in CHECKS
        if name in ("python", "backend coreml", "backend choice", *COREML_ROWS)
    )
    stream = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(doctor, "CHECKS", rows)
        code = run_doctor(config, stream=stream)
    return code, stream.getvalue()


def test_doctor_goes_the_whole_core_ml_path_on_a_mac_one_row_per_step(
    coreml_mac: Any, shared_conversions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_conversions.route(monkeypatch)  # its conversion is made once for both tests here
    config = ServeConfig(
        weights="tiny", size=(64, 64), coreml=CoreMLSettings(specialization="fast-prediction")
    )
    code, text = _coreml_report(coreml_mac, config)
    print(text)  # what a Mac user pastes (shown with pytest -s)
    lines = {
        m.group(2).strip(): m
        for m in re.finditer(r"^(PASS|FAIL|SKIP)  (.+?)\s+(\d+\.\d\d) s  (.*)$", text, re.M)
    }
    assert code == 0, text
    assert [lines[name].group(1) for name in COREML_ROWS] == ["PASS"] * 4, text
    assert "fused fp16 macOS15 +states: step.mlpackage" in lines["coreml convert"].group(4)
    assert lines["coreml compile"].group(4) == "step.mlmodelc via coremltools' compile_model"
    assert "specializationStrategy=FastPrediction" in lines["coreml load"].group(4)
    assert re.match(r"PSNR fused \d+\.\d dB", lines["coreml frame vs torch"].group(4))
    assert sum(float(lines[name].group(3)) for name in COREML_ROWS) < 60.0  # under a minute
    assert lines["backend choice"].group(4) == "--backend auto picks coreml here"
    # one real compile and one load, and doctor's temporary cache is gone afterwards
    (compiled,) = coreml_mac.of_kind("compile")
    assert len(coreml_mac.of_kind("load")) == 1
    assert not Path(compiled.path).exists()


def test_a_broken_step_is_the_failed_row_and_the_rest_say_so(
    coreml_mac: Any, shared_conversions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a pasted report shows when compiling breaks (here: the temporary name coremltools
    refuses, the bug issue 14 found): the compile row fails with coremltools' own sentence."""
    from livediffusion_models.coreml import convert as convert_module

    shared_conversions.route(monkeypatch)

    monkeypatch.setattr(
        convert_module,
        "_compile_destination",
        lambda program: program.compiled.with_name(f".{program.compiled.name}.tmp-1"),
    )
    code, text = _coreml_report(coreml_mac, ServeConfig(weights="tiny", size=(64, 64)))
    assert code == 1
    assert re.search(r"^PASS  coreml convert ", text, re.M), text
    assert re.search(r'^FAIL  coreml compile .*"destination_path" parameter must have', text, re.M)
    for name in ("coreml load", "coreml frame vs torch"):
        assert re.search(rf"^SKIP  {name} .*the Core ML step above did not pass$", text, re.M)
