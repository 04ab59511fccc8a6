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
import datetime
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from livediffusion.config import MAX_STREAMS, ServeConfig, StreamConfig
from livediffusion.tools.measure import free_udp_port
from livediffusion.tools.soak_report import (
    DEFAULT_MAX_GROWTH_MB,
    SoakReport,
    _mb,
    _slope_per_minute,
    format_report,
    peak_rss_bytes,
)
from livediffusion.tools.soak_rig import (
    _SAMPLE_SECONDS,
    RESTART_DOWN_SECONDS,
    _count_steps,
    _Counters,
    _ErrorLog,
    _Feeder,
    _Memory,
    _Receiver,
)

__all__ = ["run_soak", "soak_command"]

log = logging.getLogger("livediffusion.tools.soak")

PROGRESS_SECONDS = 5.0
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
    streams: int = 1,
) -> SoakReport:
    """Run the whole pipeline over NDI loopback until ``frames`` came back or ``minutes``
    passed (whichever is first; neither: until Ctrl-C), then print and return the report.

    ``torch_threads``: intra-op threads for the run (restored afterwards). The tiny model
    gains nothing from more, and on a small machine they fight the transport threads; None
    leaves torch's setting alone. Ctrl-C (or SIGTERM when run from the main thread) ends the
    soak early; the report still comes, marked interrupted. ``streams``: that many NDI pairs
    (each with its own feeder, restarts and receiver) through the one batched model; the
    counts are of all of them together.
    """
    if frames is not None and frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    if minutes is not None and minutes <= 0:
        raise ValueError(f"minutes must be more than 0, got {minutes}")
    if restart_every is not None and restart_every <= RESTART_DOWN_SECONDS:
        raise ValueError(f"restart_every must be more than {RESTART_DOWN_SECONDS:g} s")
    if size % 64:
        raise ValueError(f"size must be a multiple of 64, got {size}")
    if not 1 <= streams <= MAX_STREAMS:
        raise ValueError(f"streams must be 1..{MAX_STREAMS}, got {streams}")
    soak = _Soak(
        streams=streams,
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
        streams: int = 1,
    ) -> None:
        self.streams = streams
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
        self.names = [
            (
                f"ld-soak-in-{tag}" + (f"-{k}" if k else ""),
                f"ld-soak-out-{tag}" + (f"-{k}" if k else ""),
            )
            for k in range(streams)
        ]
        self.in_name, self.out_name = self.names[0]
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
        self.feeders = [
            _Feeder(
                name=source,
                size=size,
                fps=source_fps,
                restart_every=restart_every,
                counters=self.counters,
                stream=k,
            )
            for k, (source, _) in enumerate(self.names)
        ]
        self.receivers = [_Receiver(sink, self.counters) for _, sink in self.names]
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
            streams=tuple(
                StreamConfig(f"s{k}", f"ndi://{source}", f"ndi://{sink}?fps={self.source_fps:g}")
                for k, (source, sink) in enumerate(self.names)
            )
            if self.streams > 1
            else (),
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
            f"NDI {self.in_name} -> serve -> {self.out_name}"
            + (f" and {self.streams - 1} more such pairs" if self.streams > 1 else "")
            + "; until "
            f"{' or '.join(target) or 'Ctrl-C'}"
            + (f"; feeder restarts every {self.restart_every:g} s" if self.restart_every else "")
        )
        self.backend = build_backend(config)
        _count_steps(self.backend, self.counters)
        for receiver in self.receivers:
            receiver.thread.start()
        self.server_thread = threading.Thread(
            target=self._serve, args=(config,), name="soak-server", daemon=True
        )
        self.server_thread.start()
        for feeder in self.feeders:
            feeder.thread.start()
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
        for feeder in self.feeders:
            feeder.stop.set()
        self.server_stop.set()
        for receiver in self.receivers:
            receiver.stop.set()
        threads = [
            *(feeder.thread for feeder in self.feeders),
            self.server_thread,
            *(receiver.thread for receiver in self.receivers),
        ]
        for thread in threads:
            if thread is not None and thread.is_alive():
                thread.join(10.0)
                if thread.is_alive():
                    self.counters.problem(f"{thread.name} did not stop within 10 s")
        if self.engine is not None:
            with contextlib.suppress(Exception):
                self.final_summary = [lane.stats.summary() for lane in self.engine.lanes]
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
        lanes = engine.lanes  # every stream's figures, summed
        if summary is None:  # still running: the figures so far
            with contextlib.suppress(Exception):
                summary = [lane.stats.summary() for lane in lanes]
        with contextlib.suppress(Exception):
            reconnects = [getattr(lane.source, "reconnects", None) for lane in lanes]
            r.source_reconnects = (
                None if None in reconnects else sum(int(n or 0) for n in reconnects)
            )
        with contextlib.suppress(Exception):
            failed_frames = sum(lane.stats.errors for lane in lanes)  # skipped after a failure
            r.engine_errors = int(failed_frames) + len(engine.errors)
        with contextlib.suppress(Exception):
            r.fallback_out = sum(int(lane.stats.fallback) for lane in lanes)
        with contextlib.suppress(Exception):
            placeholders = getattr(engine, "placeholders", None)
            r.placeholder_out = None if placeholders is None else int(placeholders)
        if summary is None:
            return
        with contextlib.suppress(Exception):
            r.frames_in = sum(int(one.frames_in) for one in summary)
            r.frames_out = sum(int(one.frames_out) for one in summary)
            r.dropped = sum(int(one.dropped) for one in summary)
            r.server_output_fps = round(sum(float(one.output_fps) for one in summary), 2)
            r.latency_p50_ms = round(max(float(one.latency_p50_ms) for one in summary), 1)
            r.latency_p99_ms = round(max(float(one.latency_p99_ms) for one in summary), 1)

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
        streams=getattr(args, "streams", 1),
    )
    return 0 if report.passed else 1
