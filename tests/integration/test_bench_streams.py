"""``bench --streams`` and ``bench --e2e --streams``, for real on this CPU with the tiny model:
the batched step timed per count, and N NDI pairs served end to end by one process (each
stream's numbered frames read back by its own host process). CPU numbers say nothing about
speed (docs/benchmarks.md has the H200's); these check that the commands measure what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livediffusion.cli import main

pytestmark = pytest.mark.integration


def test_bench_streams_times_each_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "bench.json"
    argv = ["bench", "--weights", "tiny", "--device", "cpu", "--size", "64"]
    code = main(
        [*argv, "--streams", "1,3", "--frames", "5", "--warmup", "1", "--json", str(report)]
    )
    assert code == 0
    rows = json.loads(report.read_text())["streams"]
    assert [row["streams"] for row in rows] == [1, 3]
    for row in rows:
        assert row["batch_ms_p50"] > 0 and row["batch_ms_p99"] >= row["batch_ms_p50"]
        assert row["fps"] == pytest.approx(row["streams"] * 1000 / row["batch_ms_mean"])
        assert row["peak_gb"] is None  # no GPU here: nothing pretended
    table = capsys.readouterr().out
    assert "streams batched through one step" in table


@pytest.mark.parametrize("text", ["0", "17", "two", "1,,4"])
def test_bench_streams_refuses_bad_counts(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--weights", "tiny", "--streams", text]) == 2
    error = capsys.readouterr().err.strip()
    assert "--streams takes counts from 1 to 16" in error and error.count("\n") == 0


def test_bench_e2e_streams_serves_n_ndi_pairs(tmp_path: Path) -> None:
    pytest.importorskip("NDIlib")
    report = tmp_path / "e2e.json"
    argv = ["bench", "--weights", "tiny", "--device", "cpu", "--size", "128", "--e2e"]
    code = main(
        [*argv, "--streams", "2", "--e2e-seconds", "2", "--e2e-fps", "20", "--json", str(report)]
    )
    assert code == 0
    e2e = json.loads(report.read_text())["e2e"]
    assert e2e["streams"] == 2 and len(e2e["per_stream"]) == 2
    for stream in e2e["per_stream"]:  # every pair's numbered frames came back through it
        assert stream["fps"] > 2 and 0 < stream["latency_p50_ms"] < 5000
    assert e2e["received"] <= e2e["sent"]
    assert e2e["server"]["frames_out"] > 0
