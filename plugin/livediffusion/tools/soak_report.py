"""What a soak measures and says: this process's memory, and the report (its numbers, its
verdict and how it prints)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_MAX_GROWTH_MB", "SoakReport", "format_report", "rss_bytes"]

DEFAULT_MAX_GROWTH_MB = 50.0
"""Memory growth after warm-up above this fails a soak (``--max-growth``)."""
_MB = 1024 * 1024


# -- memory -------------------------------------------------------------------------------


def rss_bytes() -> int | None:
    """This process's resident memory now; None where it cannot be read."""
    try:
        if sys.platform == "linux":
            with open("/proc/self/statm", encoding="ascii") as statm:
                pages = int(statm.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        if sys.platform == "darwin":
            # no stdlib call gives the current RSS on macOS; ps does (in KiB)
            text = subprocess.run(
                ["ps", "-o", "rss=", "-p", str(os.getpid())],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return int(text.strip()) * 1024
        if sys.platform == "win32":
            return _windows_memory()[0]
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None
    return None


def peak_rss_bytes() -> int | None:
    """The operating system's high-water mark of this process's resident memory (model
    loading included); None where it cannot be read."""
    try:
        if sys.platform == "linux":
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # kB
            return None
        if sys.platform == "darwin":
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # bytes on macOS
        if sys.platform == "win32":
            return _windows_memory()[1]
    except (OSError, ValueError, IndexError):
        return None
    return None


def _windows_memory() -> tuple[int, int]:
    """(working set, peak working set) from GetProcessMemoryInfo."""
    if sys.platform != "win32":
        raise OSError("Windows only")
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [
            ("cb", wintypes.DWORD),
            ("PageFaultCount", wintypes.DWORD),
            ("PeakWorkingSetSize", ctypes.c_size_t),
            ("WorkingSetSize", ctypes.c_size_t),
            ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPagedPoolUsage", ctypes.c_size_t),
            ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
            ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
            ("PagefileUsage", ctypes.c_size_t),
            ("PeakPagefileUsage", ctypes.c_size_t),
        ]

    counters = Counters()
    counters.cb = ctypes.sizeof(Counters)
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    query = kernel32.K32GetProcessMemoryInfo
    query.argtypes = [wintypes.HANDLE, ctypes.POINTER(Counters), wintypes.DWORD]
    query.restype = wintypes.BOOL
    if not query(kernel32.GetCurrentProcess(), ctypes.byref(counters), counters.cb):
        raise OSError(ctypes.get_last_error(), "GetProcessMemoryInfo failed")
    return int(counters.WorkingSetSize), int(counters.PeakWorkingSetSize)


def _slope_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var <= 0:
        return None
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return 60.0 * cov / var


# -- the report ---------------------------------------------------------------------------


@dataclass
class SoakReport:
    """What one soak saw. Counts are totals over the run; ``None``: could not be read."""

    passed: bool = False
    reasons: list[str] = field(default_factory=list)
    """Why it failed (empty when it passed)."""
    started: str = ""
    """Local date and time the soak started, ISO 8601."""
    seconds: float = 0.0
    """From the first frame back to the end."""
    interrupted: bool = False
    model: str = ""
    size: int = 0
    source_fps: float = 0.0
    restart_every: float | None = None
    frames_target: int | None = None
    minutes_target: float | None = None

    frames_sent: int = 0
    """Pattern frames the feeder published into NDI."""
    frames_in: int | None = None
    """Frames the server captured (fewer than sent: NDI hands over the newest)."""
    frames_processed: int = 0
    """Frames that went through the model."""
    frames_out: int | None = None
    """Frames the server published."""
    fallback_out: int | None = None
    """Frames the server re-sent while its source was away (the last picture, so receivers
    keep one); received frames include these."""
    placeholder_out: int | None = None
    """Frames the server published before the model was ready (the input marked LOADING);
    received frames include these too."""
    frames_received: int = 0
    """Frames the receiver got back over NDI."""
    dropped: int | None = None
    """Captured frames the server replaced before the model took them (newest wins)."""
    output_fps: float = 0.0
    """Frames received per second."""
    server_output_fps: float | None = None
    latency_p50_ms: float | None = None
    """Server capture -> publish, recent frames."""
    latency_p99_ms: float | None = None

    errors: int = 0
    """``exceptions + engine_errors + logged_errors`` (one failure may count in two of them:
    the engine logs the frames it fails on); the soak passes only with none."""
    exceptions: int = 0
    """Exceptions out of run_server, the feeder or the receiver; threads that would not stop."""
    engine_errors: int | None = None
    """Frames the model failed on plus exceptions that stopped an engine thread."""
    logged_errors: int = 0
    """Records at ERROR or above from livediffusion's loggers."""
    error_messages: list[str] = field(default_factory=list)
    """The first few errors, one line each."""
    warnings: int = 0
    """Warnings logged (a lost source at each restart is expected)."""
    restarts: int = 0
    reconnects: int = 0
    """Restarts after which the server processed new frames again."""
    source_reconnects: int | None = None
    """The server source's own reconnect counter."""
    recovery_seconds_max: float | None = None
    """Longest time from a restarted sender to the next new frame through the model."""

    rss_start_mb: float | None = None
    rss_warm_mb: float | None = None
    rss_end_mb: float | None = None
    rss_peak_mb: float | None = None
    """Highest RSS sampled (about once a second) from the server's start to the end."""
    rss_high_water_mb: float | None = None
    """The OS's peak RSS for the whole process, model loading included."""
    growth_mb: float | None = None
    """``rss_end_mb - rss_warm_mb``."""
    growth_mb_per_min: float | None = None
    """Slope of RSS after warm-up (least squares)."""
    late_growth_mb_per_min: float | None = None
    """The same over the second half of the run after warm-up: allocators settle, so it
    falls well below the whole slope when nothing leaks, and stays as steep when something
    does."""
    max_growth_mb: float = DEFAULT_MAX_GROWTH_MB
    memory_note: str = ""
    memory_samples: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since start, RSS MB), about one a second (thinned on long runs)."""

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = self.verdict
        return data


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / _MB, 1)


def _num(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def format_report(report: SoakReport) -> str:
    r = report
    restarts = f"every {r.restart_every:g} s" if r.restart_every else "none"
    lines = [
        f"soak: {r.verdict}" + (" (interrupted)" if r.interrupted else ""),
        f"  run        {r.seconds:.1f} s, {r.model} tiny weights at {r.size}x{r.size}, "
        f"pattern at {r.source_fps:g} fps, restarts {restarts}",
        f"  frames     sent {r.frames_sent}, in {_count(r.frames_in)}, through the model "
        f"{r.frames_processed}, out {_count(r.frames_out)} (+{_count(r.fallback_out)} fallback, "
        f"+{_count(r.placeholder_out)} loading), "
        f"received {r.frames_received}; dropped {_count(r.dropped)}",
        f"  rate       {r.output_fps:.1f} fps received (server {_num(r.server_output_fps)} fps); "
        f"latency p50 {_num(r.latency_p50_ms, ' ms')}, p99 {_num(r.latency_p99_ms, ' ms')}",
        f"  restarts   {r.restarts}, recovered {r.reconnects} (source reconnects "
        f"{_count(r.source_reconnects)}), slowest recovery {_num(r.recovery_seconds_max, ' s')}",
        f"  errors     {r.errors} (exceptions {r.exceptions}, engine {_count(r.engine_errors)}, "
        f"logged {r.logged_errors}); warnings {r.warnings}",
        f"  memory     RSS {_num(r.rss_warm_mb, ' MB')} after warm-up, "
        f"{_num(r.rss_end_mb, ' MB')} at the end: growth {_num(r.growth_mb, ' MB')} "
        f"(bound {r.max_growth_mb:g} MB)",
        f"             slope {_num(r.growth_mb_per_min, ' MB/min', 2)} "
        f"(second half {_num(r.late_growth_mb_per_min, ' MB/min', 2)}); "
        f"peak {_num(r.rss_peak_mb, ' MB')} (process high-water "
        f"{_num(r.rss_high_water_mb, ' MB')}); {_num(r.rss_start_mb, ' MB')} before the model",
    ]
    if r.memory_note:
        lines.append(f"  note       {r.memory_note}")
    lines.extend(f"  error      {message}" for message in r.error_messages)
    lines.extend(f"  FAIL       {reason}" for reason in r.reasons)
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)
