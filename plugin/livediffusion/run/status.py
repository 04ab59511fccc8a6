"""Counters the engine bumps, and the one-line status a performer reads.

Rates come from the timestamps of the most recent frames (not from totals since start), so
the line reflects the last couple of seconds: a stall shows up as 0 fps at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Stats", "Status", "Summary", "format_status", "format_streams", "format_summary"]

_WINDOW_SECONDS = 2.0


class _Ring:
    """A fixed-size float ring: recording a value never allocates."""

    def __init__(self, size: int) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0

    def add(self, value: float) -> None:
        self._values[self._next] = value
        self._next = (self._next + 1) % len(self._values)
        self._count = min(self._count + 1, len(self._values))

    def values(self) -> np.ndarray:
        return self._values[: self._count].copy()


def _recent(times: np.ndarray, now: float) -> np.ndarray:
    """Which of ``times`` describe "now": the last two seconds, or for a slow pipeline
    (a frame every few seconds on a CPU) its last two frames while it is still on schedule."""
    mask = times >= now - _WINDOW_SECONDS
    if np.count_nonzero(mask) >= 2 or len(times) < 2:
        return mask
    last_two = np.partition(times, len(times) - 2)[-2:]
    previous, newest = float(last_two[0]), float(last_two[1])
    if newest > previous and now - newest <= 1.5 * (newest - previous):
        recent: np.ndarray = times >= previous
        return recent
    return mask


def _rate(times: np.ndarray, now: float) -> float:
    recent = times[_recent(times, now)]
    if len(recent) < 2:
        return 0.0
    span = max(float(recent.max() - recent.min()), now - float(recent.max()))
    return (len(recent) - 1) / span if span > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Status:
    input_fps: float
    output_fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    frames_in: int
    frames_out: int
    dropped: int
    backend: str


@dataclass(frozen=True, slots=True)
class Summary:
    """The whole run: for benchmarks and the last log line."""

    seconds: float
    frames_in: int
    frames_out: int
    dropped: int
    output_fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_frames: int  # how many recent frames the percentiles cover
    backend: str


class Stats:
    def __init__(self, *, backend: str = "", window: int = 512) -> None:
        self.backend = backend
        self._first_out: float | None = None
        self._last_out = 0.0
        self._lock = threading.Lock()
        self._in_times = _Ring(window)
        self._out_times = _Ring(window)
        self._latencies = _Ring(window)
        self._steps = _Ring(64)
        self.frames_in = 0
        self.frames_out = 0
        self.dropped = 0
        self.errors = 0  # frames the model failed on (skipped)
        self.fallback = 0  # fallback frames re-sent while the source was away
        self.steps = 0  # frames the model ran
        self.step_seconds = 0.0  # time spent in the model, all frames (device time on a GPU)

    def frame_in(self, now: float) -> None:
        with self._lock:
            self.frames_in += 1
            self._in_times.add(now)

    def frame_dropped(self, count: int = 1) -> None:
        with self._lock:
            self.dropped += count

    def frame_error(self) -> int:
        """Count a frame the model failed on; returns how many so far."""
        with self._lock:
            self.errors += 1
            return self.errors

    def fallback_out(self) -> None:
        with self._lock:
            self.fallback += 1

    def step_time(self, seconds: float) -> None:
        with self._lock:
            self._steps.add(seconds)
            self.steps += 1
            self.step_seconds += seconds

    def step_p50(self) -> float:
        """The typical time the model takes for a frame (0 before the first)."""
        with self._lock:
            steps = self._steps.values()
        return float(np.median(steps)) if len(steps) else 0.0

    def input_interval(self) -> float:
        """The typical time between input frames, from the recent ones (0 before two)."""
        with self._lock:
            times = self._in_times.values()
        if len(times) < 2:
            return 0.0
        return float(np.median(np.diff(np.sort(times))))

    def frame_out(self, now: float, latency: float) -> None:
        with self._lock:
            self.frames_out += 1
            if self._first_out is None:
                self._first_out = now
            self._last_out = now
            self._out_times.add(now)
            self._latencies.add(latency)

    def snapshot(self, now: float | None = None) -> Status:
        now = time.monotonic() if now is None else now
        with self._lock:
            in_times, out_times = self._in_times.values(), self._out_times.values()
            latencies = self._latencies.values()
            frames_in, frames_out, dropped = self.frames_in, self.frames_out, self.dropped
        recent = latencies[_recent(out_times, now)] if len(latencies) else latencies
        p50, p99 = np.percentile(recent * 1000, [50, 99]) if len(recent) else (0.0, 0.0)
        return Status(
            input_fps=_rate(in_times, now),
            output_fps=_rate(out_times, now),
            latency_p50_ms=float(p50),
            latency_p99_ms=float(p99),
            frames_in=frames_in,
            frames_out=frames_out,
            dropped=dropped,
            backend=self.backend,
        )

    def summary(self) -> Summary:
        """Output rate from the first to the last published frame; latency of recent frames."""
        with self._lock:
            latencies = self._latencies.values() * 1000
            first, last = self._first_out, self._last_out
            frames_in, frames_out, dropped = self.frames_in, self.frames_out, self.dropped
        seconds = 0.0 if first is None else last - first
        fps = (frames_out - 1) / seconds if seconds > 0 else 0.0
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (0.0, 0.0)
        return Summary(
            seconds=seconds,
            frames_in=frames_in,
            frames_out=frames_out,
            dropped=dropped,
            output_fps=fps,
            latency_p50_ms=float(p50),
            latency_p99_ms=float(p99),
            latency_frames=len(latencies),
            backend=self.backend,
        )


def format_summary(summary: Summary) -> str:
    return (
        f"{summary.frames_out} frames out in {summary.seconds:.1f} s "
        f"({summary.output_fps:.1f} fps), {summary.frames_in} in, {summary.dropped} dropped; "
        f"latency p50 {summary.latency_p50_ms:.1f} ms, p99 {summary.latency_p99_ms:.1f} ms "
        f"(last {summary.latency_frames} frames); {summary.backend}"
    )


def format_status(status: Status) -> str:
    return (
        f"in {status.input_fps:5.1f} fps | out {status.output_fps:5.1f} fps | "
        f"latency {status.latency_p50_ms:6.1f} ms (p99 {status.latency_p99_ms:6.1f}) | "
        f"dropped {status.dropped} | {status.backend}"
    )


def format_streams(streams: Sequence[tuple[str, Status]]) -> str:
    """The status line: :func:`format_status` for one stream; for several, each stream's
    rates and latency, then the total out and the backend, so the line stays one line."""
    if len(streams) == 1:
        return format_status(streams[0][1])
    parts = [
        f"{name} {status.input_fps:.0f}>{status.output_fps:.0f} fps {status.latency_p50_ms:.0f} ms"
        for name, status in streams
    ]
    total = sum(status.output_fps for _, status in streams)
    dropped = sum(status.dropped for _, status in streams)
    backend = streams[0][1].backend
    return f"{' | '.join(parts)} | out {total:.1f} fps | dropped {dropped} | {backend}"
