"""Slots, buffer pool, glides, status counters and size parsing: the engine's small parts."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from livediffusion.config import default_sink, default_source, parse_size
from livediffusion.run.glide import Glide
from livediffusion.run.slots import BufferPool, LatestSlot
from livediffusion.run.status import Stats, format_status


def test_latest_slot_keeps_only_the_newest_and_reports_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is None
    assert slot.put(2) == 1  # 1 was never taken: dropped
    assert slot.take(timeout=0) == 2
    assert slot.take(timeout=0.01) is None


def test_latest_slot_wakes_a_waiting_consumer() -> None:
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    thread = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    thread.start()
    slot.put("frame")
    thread.join(5)
    assert got == ["frame"]


def test_buffer_pool_recycles_and_bounds_spares() -> None:
    pool = BufferPool(keep=2)
    a = pool.acquire((4, 4, 4))
    pool.release(a)
    assert pool.acquire((4, 4, 4)) is a
    assert pool.allocations == 1
    buffers = [pool.acquire((2, 2, 4)) for _ in range(5)]
    for b in buffers:
        pool.release(b)
    assert pool.allocations == 6
    # Only two spares were kept, and a spare of another shape is not handed out.
    c = pool.acquire((4, 4, 4))
    assert c.shape == (4, 4, 4)


def test_glide_runs_zero_to_one_smoothly() -> None:
    glide = Glide(2.0)
    assert glide.position(0.0) == 1.0  # settled before any change
    glide.restart(10.0)
    values = [glide.position(10.0 + t) for t in np.linspace(0, 2, 21)]
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert values[10] == pytest.approx(0.5)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert glide.position(100.0) == 1.0


def test_zero_glide_is_instant_and_negative_rejected() -> None:
    glide = Glide(0.0)
    glide.restart(0.0)
    assert glide.position(0.0) == 1.0
    with pytest.raises(ValueError):
        Glide(-1)


def test_stats_rates_and_latency_percentiles() -> None:
    stats = Stats(backend="torch-cpu float32")
    for i in range(31):  # 30 fps for one second
        t = 100.0 + i / 30
        stats.frame_in(t)
        stats.frame_out(t, latency=0.040 if i < 30 else 0.200)
    stats.frame_dropped(3)
    status = stats.snapshot(now=101.0)
    assert status.input_fps == pytest.approx(30.0, rel=0.01)
    assert status.output_fps == pytest.approx(30.0, rel=0.01)
    assert status.latency_p50_ms == pytest.approx(40.0)
    assert status.latency_p99_ms > 40.0
    assert status.dropped == 3
    line = format_status(status)
    assert "in  30.0 fps" in line and "dropped 3" in line and "torch-cpu" in line
    # A stall shows at once: nothing recent, no rate.
    assert stats.snapshot(now=110.0).output_fps == 0.0


def test_parse_size() -> None:
    assert parse_size("512") == (512, 512)
    assert parse_size("640x384", multiple_of=64) == (384, 640)
    assert parse_size("1920X1080") == (1080, 1920)
    for bad in ("", "abc", "0", "10x", "100000"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError, match="multiple of 64"):
        parse_size("500", multiple_of=64)


def test_platform_defaults() -> None:
    assert default_source("darwin").startswith("syphon://")
    assert default_sink("darwin").startswith("syphon://")
    assert default_source("linux").startswith("ndi://")
    assert default_sink("win32") == "ndi://livediffusion"


def test_summary_covers_the_whole_run() -> None:
    from livediffusion.run.status import format_summary

    stats = Stats(backend="b")
    assert stats.summary().output_fps == 0.0
    for i in range(101):
        stats.frame_in(i / 50)
        stats.frame_out(i / 50, latency=0.01 * (1 + i % 2))
    summary = stats.summary()
    assert summary.frames_out == 101
    assert summary.seconds == pytest.approx(2.0)
    assert summary.output_fps == pytest.approx(50.0)
    assert summary.latency_p50_ms == pytest.approx(10.0)  # 51 frames at 10 ms, 50 at 20 ms
    assert summary.latency_p99_ms == pytest.approx(20.0)
    assert "101 frames out" in format_summary(summary)


def test_a_slow_pipeline_shows_its_rate_and_a_stall_shows_zero() -> None:
    stats = Stats()
    for t in (0.0, 6.0, 12.0):  # a frame every 6 s (a big model on a CPU)
        stats.frame_out(t, latency=5.9)
    status = stats.snapshot(now=14.0)
    assert status.output_fps == pytest.approx(1 / 6, rel=0.01)
    assert status.latency_p50_ms == pytest.approx(5900.0)
    assert stats.snapshot(now=30.0).output_fps == 0.0  # three intervals late: stalled
