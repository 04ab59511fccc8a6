"""``livediffusion soak``: the whole pipeline over real NDI loopback with tiny weights."""

from __future__ import annotations

import _thread
import argparse
import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livediffusion.tools.soak import run_soak, soak_command
from livediffusion.tools.soak_report import DEFAULT_MAX_GROWTH_MB, format_report

pytestmark = pytest.mark.integration
pytest.importorskip("NDIlib", reason="ndi-python (the NDI runtime) is not installed")


def _soak_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("soak-") and t.is_alive()]


def test_a_soak_of_a_thousand_frames_with_feeder_restarts_passes(tmp_path: Path) -> None:
    out = io.StringIO()
    json_path = tmp_path / "soak.json"
    # 1200 frames at 60 fps: 20 s, two feeder restarts (the 100k-frame soak is `livediffusion
    # soak` on the GPU: docs/benchmarks.md); 2000 frames here cost 30 s more of every run
    report = run_soak(
        frames=1200,
        minutes=None,
        size=64,
        source_fps=60.0,
        restart_every=8.0,
        json_path=str(json_path),
        out=out,
    )
    text = out.getvalue()
    assert report.passed, text
    assert "soak: PASS" in text
    assert "received" in text.split("soak: PASS")[0]  # progress lines came first

    # frames made it all the way, and nothing failed
    assert report.frames_received >= 1200
    assert report.errors == 0, report.error_messages
    assert report.exceptions == 0 and report.logged_errors == 0
    assert report.engine_errors in (0, None)

    # after warm-up the process did not grow beyond a small bound (measured here: under 1 MB)
    assert report.growth_mb is not None and report.growth_mb < 20.0, text

    # the feeder's sender went away at least once and the server found it again
    assert report.restarts >= 1
    assert report.reconnects >= 1
    assert report.reconnects <= report.restarts
    assert report.recovery_seconds_max is not None and report.recovery_seconds_max < 15

    # every stage saw no more than the one before it
    assert report.frames_processed <= report.frames_sent
    if report.frames_in is not None:
        assert report.frames_processed <= report.frames_in <= report.frames_sent
        assert report.dropped is not None and report.dropped <= report.frames_in
    if report.frames_out is not None:
        assert report.frames_out <= report.frames_processed
        resent = report.fallback_out or 0  # the last picture, re-sent while the source is away
        loading = report.placeholder_out or 0  # the input marked LOADING, before the model
        assert report.placeholder_out is not None
        assert report.frames_received <= report.frames_out + resent + loading
    assert report.output_fps > 0

    # memory: measured after warm-up and at the end, and within the bound
    assert report.max_growth_mb == DEFAULT_MAX_GROWTH_MB
    assert report.rss_warm_mb is not None and report.rss_end_mb is not None
    assert report.growth_mb is not None
    assert report.growth_mb == pytest.approx(report.rss_end_mb - report.rss_warm_mb, abs=0.15)
    assert report.growth_mb < report.max_growth_mb
    assert report.rss_peak_mb is not None and report.rss_peak_mb >= report.rss_end_mb

    saved = json.loads(json_path.read_text())
    assert saved["verdict"] == "PASS"
    assert saved["frames_received"] == report.frames_received
    assert saved["memory_samples"]
    assert _soak_threads() == []


@pytest.fixture
def python_handles_ctrl_c() -> Iterator[None]:
    """Ctrl-C reaches Python as KeyboardInterrupt, as in a terminal. A process a shell starts
    in the background without job control (``cmd &`` in a script, nohup) inherits SIGINT
    ignored, and then ``_thread.interrupt_main()`` does nothing at all: the soak would run
    until the test's timeout."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("python_handles_ctrl_c")
def test_interrupt_stops_cleanly_and_still_reports() -> None:
    """Ctrl-C mid-run: everything stops and the report still comes, marked interrupted."""
    out = io.StringIO()

    def interrupt_once_frames_flow() -> None:
        deadline = time.monotonic() + 120
        while "received" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        _thread.interrupt_main()  # what Ctrl-C does to the main thread

    threading.Thread(target=interrupt_once_frames_flow, daemon=True).start()
    started = time.monotonic()
    report = run_soak(frames=None, minutes=None, out=out, json_path=None, progress_seconds=0.5)
    assert time.monotonic() - started < 120
    assert report.interrupted
    assert report.frames_received > 0
    assert report.errors == 0, report.error_messages
    # a run until Ctrl-C warms up for 30 s: stopped before that, memory is not judged
    assert not report.passed
    assert any("warm-up" in reason for reason in report.reasons)
    assert out.getvalue().rstrip().endswith(format_report(report).splitlines()[-1])
    assert "soak: FAIL (interrupted)" in out.getvalue()
    assert _soak_threads() == []


def test_command_rejects_nonsense_before_starting_anything() -> None:
    args = argparse.Namespace(
        frames=0, minutes=None, size=64, fps=60.0, restart_every=None, json=None,
        max_growth_mb=50.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="frames"):
        soak_command(args)
    args.frames, args.restart_every = 10, 0.5
    with pytest.raises(ValueError, match="restart_every"):
        soak_command(args)
    args.restart_every, args.size = None, 100
    with pytest.raises(ValueError, match="multiple of 64"):
        soak_command(args)


def test_a_soak_of_two_streams_restarts_each_feeder_and_counts_both(tmp_path: Path) -> None:
    out = io.StringIO()
    report = run_soak(
        frames=400, minutes=None, size=64, source_fps=30.0, restart_every=4.0, out=out,
        streams=2,
    )  # fmt: skip
    text = out.getvalue()
    assert report.passed, text
    assert "and 1 more such pairs" in text
    assert report.errors == 0 and report.engine_errors in (0, None)
    # each feeder went away and its own stream's frames proved it came back
    assert report.restarts >= 2
    assert report.recovery_seconds_max is not None and report.recovery_seconds_max < 15
    assert report.frames_in is not None and report.frames_in <= report.frames_sent
    assert report.frames_processed <= report.frames_sent
    assert _soak_threads() == []
