"""``livediffusion soak``: the whole pipeline for minutes or hours, counting what goes wrong.

Everything a show runs, in one process, over real NDI on this machine::

    test pattern --feeder--> NDI "ld-soak-in-*" --> serve (run_server: capture, tiny model,
    publish) --> NDI "ld-soak-out-*" --receiver--> counted

The model is ``--weights tiny`` on the CPU (the chosen model's architecture scaled down, see
``livediffusion_models.weights.tiny``): it paints nonsense in tens of milliseconds, so a soak
checks the plumbing (transports, engine threads, reconnects, memory), not the picture, and
needs no GPU and no download. ``restart_every`` stops the feeder's NDI sender and starts it
again every N seconds, so the server must find it again each time.

The report counts frames at every stage, the engine's errors and every exception, how many
feeder restarts the server recovered from, and the process's resident memory: after warm-up
(the first 10% of the run, and at least 20 frames), at the end, the growth between the two,
its slope and the peak. It passes when frames came through, nothing failed, every restart
was recovered from and memory grew by no more than ``max_growth_mb``.

Server counters not in ``run_server``'s interface (frames captured and published, dropped,
latency, the source's own reconnect count) are read from the running engine when it can be
found; the report says ``None`` for each one it could not read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import faulthandler
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from livediffusion.config import ServeConfig
from livediffusion.tools.measure import free_udp_port
from livediffusion_bridge import FrameSink, open_sink, open_source

__all__ = ["SoakReport", "format_report", "run_soak", "soak_command"]

log = logging.getLogger("livediffusion.tools.soak")

DEFAULT_MAX_GROWTH_MB = 50.0
PROGRESS_SECONDS = 5.0
RESTART_DOWN_SECONDS = 1.0
"""How long the feeder's sender stays away at each restart."""
RECOVERY_SECONDS = 15.0
"""A restart not recovered from within this long fails the soak (if the soak lasted that long)."""
CHECKPOINT_SECONDS = 60.0
"""How often a soak with a JSON file rewrites it with the figures so far."""
STARTUP_SECONDS = 180.0
"""The first frame must come back within this long (model build included)."""
STALL_SECONDS = 30.0
"""Longer than this with no frame back (feeder up) stops the soak as stalled."""
WARM_FRACTION = 0.1
WARM_MIN_FRAMES = 20
WARM_UNBOUNDED_SECONDS = 30.0
_TICK = 0.25
_STALE_STEPS = 3
"""Frames through the model after a sender left before one can be new (see step_started)."""
_SAMPLE_SECONDS = 1.0
_MAX_SAMPLES_KEPT = 2000
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


# -- the parts ----------------------------------------------------------------------------


class _ErrorLog(logging.Handler):
    """Counts warnings and errors logged by livediffusion's packages while the soak runs."""

    loggers = ("livediffusion", "livediffusion_bridge", "livediffusion_models")

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.errors: list[str] = []
        self.error_count = 0
        self.warnings = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == log.name:
            return  # the soak's own failures, counted where they happen
        if record.levelno >= logging.ERROR:
            self.error_count += 1
            if len(self.errors) < 10:
                message = (record.getMessage().splitlines() or [""])[0]
                if record.exc_info and record.exc_info[1] is not None:
                    message += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
                self.errors.append(f"{record.name}: {message}")
        else:
            self.warnings += 1

    @contextlib.contextmanager
    def attached(self) -> Iterator[_ErrorLog]:
        for name in self.loggers:
            logging.getLogger(name).addHandler(self)
        try:
            yield self
        finally:
            for name in self.loggers:
                logging.getLogger(name).removeHandler(self)


@dataclass
class _Restart:
    down: float
    up: float | None = None
    steps_since_down: int = 0
    recovered: float | None = None


class _Counters:
    """Shared between the threads; one lock, touched a few times per frame."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.processed = 0
        self.received = 0
        self.first_received: float | None = None
        self.last_received: float | None = None
        self.restarts: list[_Restart] = []
        self.failures: list[str] = []
        self.feeder_up = True

    def fail(self, where: str, exc: BaseException) -> None:
        self.problem(f"{where}: {type(exc).__name__}: {exc}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.failures.append(text)

    def step_started(self, now: float) -> None:
        """A frame went into the model: it may be the first new one after a restart. The
        first two after a sender went away may still be old frames (one in the engine's
        input slot, one in the capture thread), so a recovery needs a third."""
        with self.lock:
            self.processed += 1
            for restart in self.restarts:
                if restart.recovered is not None:
                    continue
                restart.steps_since_down += 1
                if (
                    restart.up is not None
                    and now >= restart.up
                    and restart.steps_since_down >= _STALE_STEPS
                ):
                    restart.recovered = now


def _count_steps(backend: Any, counters: _Counters) -> None:
    """Wrap the backend's per-frame ``step`` so every frame through the model is counted."""
    original: Callable[..., Any] = backend.step

    def step(*args: Any, **kwargs: Any) -> Any:
        counters.step_started(time.monotonic())
        return original(*args, **kwargs)

    setattr(backend, "step", step)  # noqa: B010 (an instance attribute over the method)


class _Feeder:
    """Publishes the test pattern into NDI; closes and reopens the sender on schedule."""

    def __init__(
        self,
        *,
        name: str,
        size: int,
        fps: float,
        restart_every: float | None,
        counters: _Counters,
    ) -> None:
        self.sink_uri = f"ndi://{name}?fps={fps:g}"
        self.pattern_uri = f"test://pattern?size={size}x{size}&fps={fps:g}"
        self.restart_every = restart_every
        self.counters = counters
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-feeder", daemon=True)

    def _run(self) -> None:
        try:
            self._feed()
        except Exception as exc:
            log.exception("soak feeder failed")
            self.counters.fail("feeder", exc)

    def _feed(self) -> None:
        counters = self.counters
        every = self.restart_every or 0.0
        with open_source(self.pattern_uri) as pattern:
            sink = open_sink(self.sink_uri)
            try:
                next_restart: float | None = None
                while not self.stop.is_set():
                    now = time.monotonic()
                    if next_restart is None and every:
                        with counters.lock:
                            first = counters.first_received
                        # restarts count from the first frame back: before that the server
                        # is still finding the sender, and a restart would prove nothing
                        if first is not None:
                            next_restart = first + every
                    if next_restart is not None and now >= next_restart:
                        reopened = self._restart(sink)
                        if reopened is None:
                            break
                        sink = reopened
                        next_restart = time.monotonic() + every
                    frame = pattern.read(timeout=0.2)
                    if frame is None:
                        continue
                    sink.publish(frame.pixels)
                    with counters.lock:
                        counters.sent += 1
            finally:
                sink.close()  # safe twice

    def _restart(self, sink: FrameSink) -> FrameSink | None:
        """Close the sender, wait, open it again; None when stopped meanwhile."""
        counters = self.counters
        sink.close()
        restart = _Restart(down=time.monotonic())
        with counters.lock:
            counters.restarts.append(restart)
            counters.feeder_up = False
        if self.stop.wait(RESTART_DOWN_SECONDS):
            return None
        sink = open_sink(self.sink_uri)
        with counters.lock:
            restart.up = time.monotonic()
            counters.feeder_up = True
        return sink


class _Receiver:
    """Reads the server's NDI output and counts what comes back."""

    def __init__(self, name: str, counters: _Counters) -> None:
        self.uri = f"ndi://{name}"
        self.counters = counters
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-receiver", daemon=True)

    def _run(self) -> None:
        try:
            with open_source(self.uri) as source:
                while not self.stop.is_set():
                    frame = source.read(timeout=0.2)
                    if frame is None:
                        continue
                    now = time.monotonic()
                    with self.counters.lock:
                        self.counters.received += 1
                        if self.counters.first_received is None:
                            self.counters.first_received = now
                        self.counters.last_received = now
        except Exception as exc:
            log.exception("soak receiver failed")
            self.counters.fail("receiver", exc)


class _Memory:
    def __init__(self) -> None:
        self.start = rss_bytes()
        self.samples: list[tuple[float, float]] = []  # (seconds since t0, MB)
        self.warm_index: int | None = None
        self.note = (
            ""
            if self.start is not None
            else (f"resident memory cannot be read on {sys.platform}: memory not judged")
        )

    def sample(self, since: float) -> float | None:
        value = rss_bytes()
        if value is None:
            return None
        mb = value / _MB
        self.samples.append((since, mb))
        return mb

    def mark_warm(self) -> None:
        if self.warm_index is None and self.samples:
            self.warm_index = len(self.samples) - 1

    @property
    def warm_mb(self) -> float | None:
        return None if self.warm_index is None else self.samples[self.warm_index][1]

    @property
    def now_mb(self) -> float | None:
        return self.samples[-1][1] if self.samples else None

    def after_warm(self) -> list[tuple[float, float]]:
        return [] if self.warm_index is None else self.samples[self.warm_index :]

    def thinned(self) -> list[tuple[float, float]]:
        step = max(1, math.ceil(len(self.samples) / _MAX_SAMPLES_KEPT))
        kept = self.samples[::step]
        if self.samples and kept[-1] is not self.samples[-1]:
            kept.append(self.samples[-1])
        return [(round(t, 1), round(mb, 1)) for t, mb in kept]


# -- the run ------------------------------------------------------------------------------


def run_soak(
    *,
    frames: int | None,
    minutes: float | None,
    size: int = 64,
    source_fps: float = 60.0,
    restart_every: float | None = None,
    json_path: str | None = None,
    out: TextIO,
    max_growth_mb: float = DEFAULT_MAX_GROWTH_MB,
    model: str = "sdxs-512-0.9",
    progress_seconds: float = PROGRESS_SECONDS,
    torch_threads: int | None = 1,
) -> SoakReport:
    """Run the whole pipeline over NDI loopback until ``frames`` came back or ``minutes``
    passed (whichever is first; neither: until Ctrl-C), then print and return the report.

    ``torch_threads``: intra-op threads for the run (restored afterwards). The tiny model
    gains nothing from more, and on a small machine they fight the transport threads; None
    leaves torch's setting alone. Ctrl-C (or SIGTERM when run from the main thread) ends the
    soak early; the report still comes, marked interrupted.
    """
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be more than 0, got {minutes}")
    if restart_every is not None and restart_every <= RESTART_DOWN_SECONDS:
        raise ValueError(f"restart_every must be more than {RESTART_DOWN_SECONDS:g} s")
    if size % 64:
        raise ValueError(f"size must be a multiple of 64, got {size}")
    soak = _Soak(
        frames=frames,
        minutes=minutes,
        size=size,
        source_fps=source_fps,
        restart_every=restart_every,
        out=out,
        max_growth_mb=max_growth_mb,
        model=model,
        progress_seconds=progress_seconds,
        json_path=json_path,
    )
    with (
        _torch_threads(torch_threads),
        _sigterm_interrupts(),
        _crash_tracebacks(),
        soak.errors.attached(),
    ):
        try:
            soak.run()
        except KeyboardInterrupt:
            soak.interrupted = True
            out.write("\ninterrupted: stopping and reporting\n")
        finally:
            soak.shutdown()
    report = soak.report()
    out.write(format_report(report) + "\n")
    out.flush()
    if json_path:
        _write_json(json_path, report.to_json())
    return report


def _write_json(path: str, data: dict[str, Any]) -> None:
    """Whole or not at all: a crash mid-write must not leave half a file."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")
    os.replace(partial, path)


@contextlib.contextmanager
def _crash_tracebacks() -> Iterator[None]:
    """A native crash (an abort inside a transport's library) takes the report with it;
    faulthandler at least prints every thread's Python stack on the way out."""
    if faulthandler.is_enabled():
        yield
        return
    try:
        faulthandler.enable(all_threads=True)
    except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor
        yield
        return
    try:
        yield
    finally:
        faulthandler.disable()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the soak like Ctrl-C (only the main thread may install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Soak:
    def __init__(
        self,
        *,
        frames: int | None,
        minutes: float | None,
        size: int,
        source_fps: float,
        restart_every: float | None,
        out: TextIO,
        max_growth_mb: float,
        model: str,
        progress_seconds: float,
        json_path: str | None = None,
    ) -> None:
        self.json_path = json_path
        self.frames = frames
        self.minutes = minutes
        self.size = size
        self.source_fps = source_fps
        self.restart_every = restart_every
        self.out = out
        self.max_growth_mb = max_growth_mb
        self.model = model
        self.progress_seconds = progress_seconds
        self.started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.t0 = time.monotonic()
        tag = f"{os.getpid()}-{os.urandom(3).hex()}"
        self.in_name = f"ld-soak-in-{tag}"
        self.out_name = f"ld-soak-out-{tag}"
        self.counters = _Counters()
        self.errors = _ErrorLog()
        self.memory = _Memory()
        self.interrupted = False
        self.stalled = ""
        self.backend: Any = None
        self.engine: Any = None
        self.server_stop = threading.Event()
        self.server_thread: threading.Thread | None = None
        self.server_codes: list[int] = []
        self.feeder = _Feeder(
            name=self.in_name,
            size=size,
            fps=source_fps,
            restart_every=restart_every,
            counters=self.counters,
        )
        self.receiver = _Receiver(self.out_name, self.counters)
        self.end: float | None = None
        self.final_summary: Any = None
        self._shut = False

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -- start, watch, stop -------------------------------------------------------------

    def run(self) -> None:
        from livediffusion.backends import build_backend

        config = ServeConfig(
            source=f"ndi://{self.in_name}",
            sink=f"ndi://{self.out_name}?fps={self.source_fps:g}",
            model=self.model,
            weights="tiny",
            backend="torch",
            device="cpu",
            size=(self.size, self.size),
            osc_port=free_udp_port(),
            status_interval=3600.0,  # the soak prints its own progress
        )
        target = []
        if self.frames is not None:
            target.append(f"{self.frames} frames")
        if self.minutes is not None:
            target.append(f"{self.minutes:g} min")
        self.say(
            f"soak: {self.model} tiny weights on the CPU at {self.size}x{self.size}, "
            f"NDI {self.in_name} -> serve -> {self.out_name}; until "
            f"{' or '.join(target) or 'Ctrl-C'}"
            + (f"; feeder restarts every {self.restart_every:g} s" if self.restart_every else "")
        )
        self.backend = build_backend(config)
        _count_steps(self.backend, self.counters)
        self.receiver.thread.start()
        self.server_thread = threading.Thread(
            target=self._serve, args=(config,), name="soak-server", daemon=True
        )
        self.server_thread.start()
        self.feeder.thread.start()
        self._watch()

    def _serve(self, config: ServeConfig) -> None:
        from livediffusion.run.server import run_server

        with open(os.devnull, "w", encoding="utf-8") as status:
            try:
                self.server_codes.append(
                    run_server(
                        config,
                        backend=self.backend,
                        stop=self.server_stop,
                        status_stream=status,
                        on_engine=self._engine_ready,
                    )
                )
            except Exception as exc:
                log.exception("run_server raised")
                self.counters.fail("server", exc)

    def _engine_ready(self, engine: Any) -> None:
        self.engine = engine

    def _warm(self, received: int, elapsed: float) -> bool:
        """Warm-up is over after 10% of the run (by frames or by time, whichever target is
        nearer; 30 s for a run until Ctrl-C) and at least 20 frames back."""
        if received < WARM_MIN_FRAMES:
            return False
        done = []
        if self.frames is not None:
            done.append(received / self.frames)
        if self.minutes is not None:
            done.append(elapsed / (self.minutes * 60.0))
        if not done:
            return elapsed >= WARM_UNBOUNDED_SECONDS
        return max(done) >= WARM_FRACTION

    def _watch(self) -> None:
        counters = self.counters
        started = time.monotonic()
        next_sample = started
        next_checkpoint = started + CHECKPOINT_SECONDS
        next_progress = started + self.progress_seconds
        while True:
            now = time.monotonic()
            with counters.lock:
                received, first, last = (
                    counters.received,
                    counters.first_received,
                    counters.last_received,
                )
                failed, feeder_up = bool(counters.failures), counters.feeder_up
                changes = [r.up or r.down for r in counters.restarts]
            if failed or self.server_thread is None or not self.server_thread.is_alive():
                break
            if now >= next_sample:
                self.memory.sample(now - self.t0)
                next_sample = now + _SAMPLE_SECONDS
            if first is None:
                if now - started > STARTUP_SECONDS:
                    self.stalled = f"no frame came back within {STARTUP_SECONDS:g} s"
                    break
                if now >= next_progress and now > started:
                    self.say(f"[starting] waiting for the first frame back: {now - started:.0f} s")
                    next_progress = now + self.progress_seconds
            else:
                elapsed = now - first
                if self.memory.warm_index is None and self._warm(received, elapsed):
                    self.memory.sample(now - self.t0)
                    self.memory.mark_warm()
                quiet_since = max([last or first, *changes])
                if feeder_up and now - quiet_since > STALL_SECONDS:
                    self.stalled = f"no frame came back for {STALL_SECONDS:g} s"
                    break
                if self.frames is not None and received >= self.frames:
                    break
                if self.minutes is not None and elapsed >= self.minutes * 60.0:
                    break
                if now >= next_progress:
                    self.say(self._progress(elapsed))
                    next_progress = now + self.progress_seconds
                if self.json_path and now >= next_checkpoint:
                    self._checkpoint()
                    next_checkpoint = now + CHECKPOINT_SECONDS
            time.sleep(_TICK)

    def _progress(self, elapsed: float) -> str:
        c = self.counters
        with c.lock:
            sent, processed, received = c.sent, c.processed, c.received
            restarts = len(c.restarts)
            recovered = sum(r.recovered is not None for r in c.restarts)
        now_mb, warm_mb = self.memory.now_mb, self.memory.warm_mb
        rate = received / elapsed if elapsed > 0 else 0.0
        memory = "rss n/a" if now_mb is None else f"rss {now_mb:.1f} MB"
        if now_mb is not None and warm_mb is not None:
            memory += f" ({now_mb - warm_mb:+.1f} since warm-up)"
        elif now_mb is not None:
            memory += " (warming up)"
        errors = self.errors.error_count + len(c.failures)
        return (
            f"[{elapsed:7.1f} s] received {received} ({rate:.1f} fps) | model {processed} | "
            f"sent {sent} | restarts {restarts}, recovered {recovered} | errors {errors} | "
            f"{memory}"
        )

    def shutdown(self) -> None:
        if self._shut:
            return
        self._shut = True
        self.end = time.monotonic()
        if self.memory.samples or self.memory.start is not None:
            self.memory.sample(self.end - self.t0)  # the end, while everything still runs
        self.feeder.stop.set()
        self.server_stop.set()
        self.receiver.stop.set()
        for thread in (self.feeder.thread, self.server_thread, self.receiver.thread):
            if thread is not None and thread.is_alive():
                thread.join(10.0)
                if thread.is_alive():
                    self.counters.problem(f"{thread.name} did not stop within 10 s")
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.final_summary = self.engine.stats.summary()
        if self.server_thread is None and self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()  # built, never handed to the server

    # -- the report ---------------------------------------------------------------------

    def _checkpoint(self) -> None:
        """The report so far, in the JSON file, marked RUNNING: what a crash leaves behind."""
        assert self.json_path is not None
        try:
            data = self.report().to_json()
            data.update(
                verdict="RUNNING", passed=False, reasons=["still running", *data["reasons"]]
            )
            _write_json(self.json_path, data)
        except Exception as exc:
            log.warning("could not write the interim report to %s: %s", self.json_path, exc)

    def report(self) -> SoakReport:
        c = self.counters
        end = self.end or time.monotonic()
        r = SoakReport(
            started=self.started,
            interrupted=self.interrupted,
            model=self.model,
            size=self.size,
            source_fps=self.source_fps,
            restart_every=self.restart_every,
            frames_target=self.frames,
            minutes_target=self.minutes,
            max_growth_mb=self.max_growth_mb,
        )
        with c.lock:
            r.frames_sent, r.frames_processed, r.frames_received = c.sent, c.processed, c.received
            first, last = c.first_received, c.last_received
            restarts = list(c.restarts)
            failures = list(c.failures)
        r.seconds = 0.0 if first is None else round(end - first, 1)
        if first is not None and last is not None and last > first:
            r.output_fps = round((r.frames_received - 1) / (last - first), 2)
        self._engine_figures(r)

        r.restarts = len(restarts)
        recovered = [x for x in restarts if x.recovered is not None]
        r.reconnects = len(recovered)
        recoveries = [x.recovered - x.up for x in recovered if x.recovered and x.up]
        r.recovery_seconds_max = round(max(recoveries), 2) if recoveries else None
        unrecovered = [
            x for x in restarts if x.recovered is None and x.down + RECOVERY_SECONDS < end
        ]

        r.exceptions = len(failures)
        if self.server_codes and self.server_codes[0] != 0:
            r.exceptions += 1
            failures.append(f"run_server exited with {self.server_codes[0]}")
        r.logged_errors = self.errors.error_count
        r.errors = r.exceptions + (r.engine_errors or 0) + r.logged_errors
        r.error_messages = (failures + self.errors.errors)[:10]
        r.warnings = self.errors.warnings
        self._memory_figures(r)

        reasons = r.reasons
        if r.frames_received == 0:
            reasons.append("no frame came back through the pipeline")
        if self.stalled:
            reasons.append(self.stalled)
        if r.errors:
            reasons.append(f"{r.errors} error(s)")
        if unrecovered:
            reasons.append(
                f"{len(unrecovered)} feeder restart(s) not recovered from "
                f"within {RECOVERY_SECONDS:g} s"
            )
        if r.growth_mb is None and self.memory.start is not None:
            reasons.append("ended before warm-up: memory growth not measured")
        elif r.growth_mb is not None and r.growth_mb > r.max_growth_mb:
            reasons.append(
                f"memory grew {r.growth_mb:.1f} MB after warm-up (bound {r.max_growth_mb:g} MB)"
            )
        r.passed = not reasons
        return r

    def _engine_figures(self, r: SoakReport) -> None:
        engine, summary = self.engine, self.final_summary
        if engine is None:
            return
        if summary is None:  # still running: the figures so far
            with contextlib.suppress(Exception):
                summary = engine.stats.summary()
        with contextlib.suppress(Exception):
            source_reconnects = getattr(engine.source, "reconnects", None)
            r.source_reconnects = None if source_reconnects is None else int(source_reconnects)
        with contextlib.suppress(Exception):
            failed_frames = getattr(engine.stats, "errors", 0)  # frames skipped after a failure
            r.engine_errors = int(failed_frames) + len(engine.errors)
        with contextlib.suppress(Exception):
            fallback = getattr(engine.stats, "fallback", None)
            r.fallback_out = None if fallback is None else int(fallback)
        with contextlib.suppress(Exception):
            placeholders = getattr(engine, "placeholders", None)
            r.placeholder_out = None if placeholders is None else int(placeholders)
        if summary is None:
            return
        with contextlib.suppress(Exception):
            r.frames_in = int(summary.frames_in)
            r.frames_out = int(summary.frames_out)
            r.dropped = int(summary.dropped)
            r.server_output_fps = round(float(summary.output_fps), 2)
            r.latency_p50_ms = round(float(summary.latency_p50_ms), 1)
            r.latency_p99_ms = round(float(summary.latency_p99_ms), 1)

    def _memory_figures(self, r: SoakReport) -> None:
        memory = self.memory
        r.memory_note = memory.note
        r.rss_start_mb = _mb(memory.start)
        r.rss_high_water_mb = _mb(peak_rss_bytes())
        r.memory_samples = memory.thinned()
        if not memory.samples:
            return
        r.rss_peak_mb = round(max(mb for _, mb in memory.samples), 1)
        if r.rss_high_water_mb is not None:  # the kernel updates its mark lazily
            r.rss_high_water_mb = max(r.rss_high_water_mb, r.rss_peak_mb)
        r.rss_end_mb = round(memory.samples[-1][1], 1)
        warm = memory.warm_mb
        if warm is None:
            return
        r.rss_warm_mb = round(warm, 1)
        r.growth_mb = round(memory.samples[-1][1] - warm, 1)
        after = memory.after_warm()
        slope = _slope_per_minute(after)
        r.growth_mb_per_min = None if slope is None else round(slope, 3)
        late = _slope_per_minute(after[len(after) // 2 :])
        r.late_growth_mb_per_min = None if late is None else round(late, 3)


# -- the command --------------------------------------------------------------------------


def soak_command(args: argparse.Namespace) -> int:
    """``livediffusion soak``: 0 when the soak passed, 1 when it failed."""
    report = run_soak(
        frames=args.frames,
        minutes=args.minutes,
        size=args.size,
        source_fps=args.fps,
        restart_every=args.restart_every,
        json_path=args.json,
        out=sys.stdout,
        max_growth_mb=args.max_growth_mb,
        model=getattr(args, "model", None) or "sdxs-512-0.9",
    )
    return 0 if report.passed else 1
