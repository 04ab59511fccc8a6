"""The commands around serving: convert, bench, and serve's backend choice, as a user runs them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from livediffusion.cli import main
from loopback import free_udp_port

pytestmark = pytest.mark.integration


def test_convert_writes_programs_to_the_cache_and_reuses_them(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("coremltools", reason="conversion needs coremltools")
    argv = ["convert", "--weights", str(tiny_folder), "--size", "64", "--cache-dir", str(tmp_path)]
    assert main([*argv, "--variant", "stages"]) == 0
    out, err = capsys.readouterr()
    folder = Path(out.splitlines()[0])
    assert folder.parent == tmp_path / "coreml" / "sdxs-512-0.9"
    assert (folder / "manifest.json").is_file()
    assert [line.strip() for line in out.splitlines()[1:]] == [
        "encoder.mlpackage",
        "unet.mlpackage",
        "decoder.mlpackage",
    ]
    if sys.platform != "darwin":  # where it goes on a Mac, and the exact command there
        assert f"~/Library/Caches/livediffusion/coreml/sdxs-512-0.9/{folder.name}/" in err
        assert f"--weights {tiny_folder} --size 64x64 --variant stages\n" in err
    started = time.monotonic()
    assert main([*argv, "--variant", "stages"]) == 0
    assert time.monotonic() - started < 15  # loads the weights, converts nothing
    assert Path(capsys.readouterr().out.splitlines()[0]) == folder


def test_convert_without_coremltools_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livediffusion_models import coreml

    monkeypatch.setattr(coreml, "coremltools_version", lambda: None)
    assert main(["convert", "--weights", "random"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "livediffusion[mac]"' in err
    assert len(err.strip().splitlines()) == 1


def test_bench_prints_each_stage_beside_the_paper_and_writes_json(
    tiny_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    argv = ["bench", "--backend", "torch", "--weights", str(tiny_folder), "--size", "64"]
    argv += ["--device", "cpu", "--frames", "3", "--warmup", "1", "--json", str(report)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line[:1].isalpha()}
    for stage in ("pre", "encode", "unet", "decode", "post", "frame"):
        assert stage in rows, table
    assert "24.4" in rows["unet"]  # the paper's M3 Ultra UNet, beside ours
    assert "44.1 (22.7 FPS)" in rows["frame"]
    data = json.loads(report.read_text())
    assert data["backend"] == "torch-cpu float32"
    assert data["size"] == [64, 64]
    assert [s["name"] for s in data["stages"]] == [
        "pre",
        "encode",
        "unet",
        "decode",
        "post",
        "frame",
    ]
    assert all(s["ms_p50"] > 0 and s["fps"] > 0 for s in data["stages"])


def test_serve_with_coreml_off_macos_fails_at_once_in_one_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from livediffusion_models.coreml import runtime_available

    if runtime_available():
        pytest.skip("this machine can run Core ML")
    started = time.monotonic()
    code = main(
        [
            "serve", "--backend", "coreml", "--weights", "random",
            "--source", "test://pattern", "--sink", "memory://coreml-refused",
            "--osc-port", str(free_udp_port()),
        ]
    )  # fmt: skip
    assert code == 2
    assert time.monotonic() - started < 10  # before loading any weights
    err = capsys.readouterr().err
    assert "livediffusion: error: the Core ML runtime needs macOS" in err
    assert "`livediffusion convert`" in err


def test_auto_picks_torch_off_apple_silicon() -> None:
    from livediffusion.backends import choose_backend
    from livediffusion_models.coreml import runtime_available

    if runtime_available():
        pytest.skip("this machine can run Core ML")
    assert choose_backend("auto") == "torch"
    with pytest.raises(ValueError, match="backend must be auto or one of torch, coreml"):
        choose_backend("tensorrt")


def test_contradictory_core_ml_options_fail_before_loading_weights(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("coremltools", reason="convert needs coremltools")
    started = time.monotonic()
    code = main(["convert", "--weights", "random", "--states", "on", "--target", "macOS14"])
    assert code == 2
    assert time.monotonic() - started < 5  # the real architecture takes ~20 s to build
    err = capsys.readouterr().err.strip()
    assert err == "livediffusion: error: Core ML states need --variant fused and --target macOS15"
