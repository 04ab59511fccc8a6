"""The parts a soak runs around the server: the feeder that restarts its sender, the receiver
that counts what comes back, counters, the error log and the memory sampler."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from livediffusion.tools.soak_report import _MB, rss_bytes
from livediffusion_bridge import FrameSink, open_sink, open_source

__all__ = ["RESTART_DOWN_SECONDS"]

log = logging.getLogger("livediffusion.tools.soak")

RESTART_DOWN_SECONDS = 1.0
"""How long the feeder's sender stays away at each restart."""
_STALE_STEPS = 3
"""Frames through the model after a sender left before one can be new (see step_started)."""

_SAMPLE_SECONDS = 1.0
_MAX_SAMPLES_KEPT = 2000


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
    stream: int = 0  # whose feeder went down: only that stream's frames prove it came back
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
        self.feeders_down = 0  # feeders between closing and reopening their sender

    @property
    def feeder_up(self) -> bool:
        """Every feeder is sending (read under the lock)."""
        return self.feeders_down == 0

    def fail(self, where: str, exc: BaseException) -> None:
        self.problem(f"{where}: {type(exc).__name__}: {exc}")

    def problem(self, text: str) -> None:
        with self.lock:
            self.failures.append(text)

    def step_started(self, now: float, stream: int = 0) -> None:
        """A frame of ``stream`` went into the model: it may be the first new one after that
        stream's feeder restarted. The first two after a sender went away may still be old
        frames (one in the engine's input slot, one in the capture thread), so a recovery
        needs a third."""
        with self.lock:
            self.processed += 1
            for restart in self.restarts:
                if restart.recovered is not None or restart.stream != stream:
                    continue
                restart.steps_since_down += 1
                if (
                    restart.up is not None
                    and now >= restart.up
                    and restart.steps_since_down >= _STALE_STEPS
                ):
                    restart.recovered = now


def _count_steps(backend: Any, counters: _Counters) -> None:
    """Wrap the backend's ``step_many`` (what the engine calls: one frame of each stream
    that has one) so every frame through the model is counted, with its stream."""
    original: Callable[..., Any] = backend.step_many

    def step_many(pixels: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        for stream, picture in enumerate(pixels):
            if picture is not None:
                counters.step_started(now, stream)
        return original(pixels, *args, **kwargs)

    setattr(backend, "step_many", step_many)  # noqa: B010 (an instance attribute)


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
        stream: int = 0,
    ) -> None:
        self.stream = stream
        self.sink_uri = f"ndi://{name}?fps={fps:g}"
        self.pattern_uri = f"test://pattern?size={size}x{size}&fps={fps:g}"
        self.restart_every = restart_every
        self.counters = counters
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"soak-feeder-{stream}", daemon=True)

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
        restart = _Restart(down=time.monotonic(), stream=self.stream)
        with counters.lock:
            counters.restarts.append(restart)
            counters.feeders_down += 1
        if self.stop.wait(RESTART_DOWN_SECONDS):
            return None
        sink = open_sink(self.sink_uri)
        with counters.lock:
            restart.up = time.monotonic()
            counters.feeders_down -= 1
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
