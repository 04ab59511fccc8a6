"""The benchmark's own parts: the frame number that survives NDI, the tables and the chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livediffusion.tools.bench_e2e import BITS, E2EResult, decode_number, encode_number, format_e2e
from livediffusion.tools.bench_modes import ModeTiming, format_modes
from livediffusion.tools.bench_plot import plot


@pytest.mark.parametrize("width", [128, 512, 1920])
def test_frame_numbers_survive_noise_like_ndis_compression(width: int) -> None:
    rng = np.random.default_rng(width)
    picture = rng.integers(0, 256, (width // 2 + 64, width, 4), dtype=np.uint8)
    for number in (0, 1, 5, 123_456, (1 << BITS) - 1):
        encode_number(picture, number)
        noisy = np.clip(picture.astype(int) + rng.integers(-40, 41, picture.shape), 0, 255)
        assert decode_number(noisy.astype(np.uint8)) == number


def test_a_picture_without_a_number_reads_as_none() -> None:
    grey = np.full((256, 512, 4), 128, dtype=np.uint8)
    assert decode_number(grey) is None
    encode_number(grey, 77)
    grey[20:24] = 0  # a block row broken: the complement check fails
    assert decode_number(grey) is None


def test_the_modes_table_gives_ratios_to_diffusers_and_names_skips() -> None:
    rows = [
        ModeTiming("diffusers", "reference", 25.0, 40.0, 25.0, 682.0, 1.4),
        ModeTiming("graph", "captured", 4.0, 4.2, 4.0, 682.0, 1.5),
        ModeTiming("compiled", "compiled", skipped="needs CUDA (cpu here)"),
    ]
    table = format_modes(rows)
    graph = next(line for line in table.splitlines() if line.startswith("graph"))
    assert "250.0" in graph and "6.25" in graph and "170.5" in graph  # FPS, x ref, TFLOP/s
    assert "compiled   skipped: needs CUDA" in table


def test_the_chart_is_a_png_with_one_bar_per_mode(tmp_path: Path) -> None:
    from PIL import Image

    rows = [
        ModeTiming("diffusers", "reference", 25.0, 40.0, 25.0),
        ModeTiming("graph", "captured", 4.0, 4.2, 4.0),
    ]
    e2e = E2EResult(10.0, 3000, 2250, 225.0, 10.9, 12.8, 15.5, 300.0, {}, 512, "torch-cuda")
    path = tmp_path / "chart.png"
    plot(rows, e2e, path, title="test")
    image = np.asarray(Image.open(path).convert("RGB"))
    bars = {
        colour: np.all(image == colour, axis=-1).sum()
        for colour in [(150, 150, 150), (220, 90, 40), (60, 160, 90)]
    }
    ratio = bars[(220, 90, 40)] / bars[(150, 150, 150)]  # bar areas: 250 fps against 40
    assert 250 / 40 * 0.9 < ratio < 250 / 40 * 1.1
    assert bars[(60, 160, 90)] > 0
    assert "225.0 frames/s" in format_e2e(e2e)


def test_the_stage_table_says_when_only_its_frame_row_is_the_compiled_path() -> None:
    from livediffusion.tools.bench import BenchResult, StageTiming, format_table

    stages = [StageTiming("unet", 3.0, 3.1, 3.0), StageTiming("frame", 4.0, 4.2, 4.1)]
    graph = BenchResult("torch-cuda float16 graph", "m", "w", (512, 512), 5, "x", "d", stages)
    eager = BenchResult("torch-cuda float16", "m", "w", (512, 512), 5, "x", "d", stages)
    assert "only the frame row is the compiled path" in format_table(graph)
    assert "compiled path" not in format_table(eager)


def test_bench_e2e_refuses_a_size_too_small_in_one_line_before_loading(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench --size 64 --e2e` loaded the weights, started NDI, failed in the feeder thread
    with a traceback and waited 90 s before exit 2."""
    import time

    from livediffusion.cli import main
    from livediffusion_models import weights

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the weights were loaded before the size was checked")

    monkeypatch.setattr(weights, "load_model", no_loading)
    started = time.monotonic()
    flags = [
        "--device",
        "cpu",
        "--size",
        "64",
        "--weights",
        "tiny",
        "--frames",
        "5",
        "--warmup",
        "1",
        "--e2e",
    ]
    code = main(["bench", *flags])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert "--e2e needs a model size of at least 80 pixels" in captured.err
    assert "got 64x64: use --size 128" in captured.err
    assert captured.out == ""
    assert elapsed < 5.0


def test_every_size_bench_e2e_accepts_carries_readable_numbers() -> None:
    from livediffusion.tools.bench_e2e import MIN_SIDE, check_size

    with pytest.raises(ValueError, match="square"):
        check_size((128, 256))
    for side in (MIN_SIDE - 1, 64):
        with pytest.raises(ValueError, match="at least"):
            check_size((side, side))
    for side in (MIN_SIDE, 128):
        check_size((side, side))
        picture = np.full((side, side, 4), 90, dtype=np.uint8)
        encode_number(picture, 654_321)
        assert decode_number(picture) == 654_321
