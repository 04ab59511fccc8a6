"""``livediffusion doctor`` for real: NDI over loopback, the tiny model, the CLI."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from livediffusion.config import ServeConfig
from livediffusion.doctor import CHECKS, Context, run_checks, run_doctor

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
