"""Threads joined by latest-frame slots: capture -> inference -> publish, per stream.

::

    source --capture--> [input slot] --+                  +--> [output slot] --publish--> sink
    source --capture--> [input slot] --+--inference(one)--+--> [output slot] --publish--> sink

Each slot holds one frame; a frame that is replaced before it was taken is dropped and
counted. So a model slower than the source never builds a queue, and latency stays one
frame's work plus at most one frame's wait. Controls never travel through the frame threads:
the inference thread reads one :class:`Controls` snapshot per stream and frame.

Every stream (:class:`~livediffusion.run.lane.Lane`) has its own capture and publish threads;
the one inference thread runs the newest frame of every stream that has one through the model
as one batch (:meth:`Backend.step_many`): one compiled step, one CUDA graph. When some streams
have a frame and others are about to, it waits a few milliseconds (``gather``) so they share
the batch rather than each costing a whole one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from livediffusion.control.controls import ControlStore
from livediffusion.control.styles import StyleStore
from livediffusion.run.lane import POLL, Lane, LaneOptions, Stream
from livediffusion.run.lora_weights import LoraWeights
from livediffusion.run.status import Stats
from livediffusion_bridge import Frame, FrameSink, FrameSource
from livediffusion_models.backends import Backend, FrameParams

__all__ = ["Engine", "EngineOptions", "Stream"]

log = logging.getLogger(__name__)

_POLL = POLL


SourceLoss = Literal["last", "black", "hold-input"]
SOURCE_LOSS_MODES: tuple[SourceLoss, ...] = ("last", "black", "hold-input")


@dataclass(frozen=True, slots=True)
class EngineOptions:
    output_size: tuple[int, int] | None = None  # (height, width); None = the input's size
    on_source_loss: SourceLoss = "last"
    """What the sink shows while the source is away: the last output, black, or the last
    input picture passed through (framed like the output)."""
    fallback_fps: float = 30.0  # how often the fallback is re-sent, so receivers stay connected
    max_failures: int = 5  # consecutive failed frames before the model is bypassed
    retry_after: float = 5.0  # seconds in bypass before the model is tried again
    stall_after: float = 5.0
    """The watchdog's floor: a frame is never called stalled before this many seconds."""
    stall_factor: float = 5.0
    """A frame is stalled once it takes this many times this machine's typical frame (the
    recent median; before the first frame, the warm-up's time): a 7 s CPU frame is normal
    there, a GPU frame that takes 7 s is not."""
    skip_similar: float = 0.0
    """Republish the last output while the input changes less than this (0..1); 0 = off."""
    placeholder_size: tuple[int, int] = (512, 512)
    """(height, width) of the loading card while there is neither a model nor an input."""
    placeholder_fps: float = 15.0
    """At most this many placeholder frames a second: the model is loading on the same CPU."""
    gather: float = 0.008
    """With several streams: how long (s) a frame may wait for the other streams' frames
    that are due, so they go through the model in one batch instead of one batch each."""

    def lane_options(self) -> LaneOptions:
        return LaneOptions(
            output_size=self.output_size,
            on_source_loss=self.on_source_loss,
            fallback_fps=self.fallback_fps,
            max_failures=self.max_failures,
            retry_after=self.retry_after,
            skip_similar=self.skip_similar,
            placeholder_size=self.placeholder_size,
            placeholder_fps=self.placeholder_fps,
        )


class Engine:
    """Owns the frame threads of every stream and the one inference thread; not the sources,
    sinks or backend.

    One stream: ``Engine(source=..., sink=..., controls=...)``. Several:
    ``Engine(streams=[Stream(source, sink, controls, name="cam"), ...])``, with a backend
    built for that many (``backend.streams``); stream ``k`` is the backend's row ``k``.

    Two ways to start: :meth:`start` with the backend given to the constructor (or to
    ``start``) runs everything once the model is warm. The server calls :meth:`open` first,
    before the model exists: the capture and publish threads start at once and the sinks
    show the input (or a card) marked as loading, so hosts can find and pick the outputs
    while the weights load; ``start(backend)`` then brings the model in.
    """

    def __init__(
        self,
        *,
        source: FrameSource | None = None,
        sink: FrameSink | None = None,
        controls: ControlStore | None = None,
        streams: Sequence[Stream] = (),
        backend: Backend | None = None,
        options: EngineOptions | None = None,
        stop: threading.Event | None = None,
        styles: StyleStore | None = None,
    ) -> None:
        """``stop``: an event shared with the caller (its signal handler), so setting it both
        stops running threads and cuts a start-up warm-up short. ``backend``: may come later,
        through :meth:`start`. ``styles``: the LoRA weights, global to the model."""
        if streams and (source is not None or sink is not None or controls is not None):
            raise ValueError("give either streams or one source, sink and controls")
        if not streams:
            if source is None or sink is None or controls is None:
                raise ValueError("an engine needs a source, a sink and controls (or streams)")
            streams = (Stream(source, sink, controls),)
        names = [stream.name for stream in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must differ: {names}")
        self._backend = backend
        self.options = options or EngineOptions()
        self.styles = styles if styles is not None else StyleStore()
        self._lora_weights: LoraWeights | None = None  # made with the backend
        self._stop = stop or threading.Event()
        self._warm = threading.Event()
        self._arrived = threading.Event()  # a capture thread has put a frame in its slot
        lane_options = self.options.lane_options()
        self.lanes: tuple[Lane, ...] = tuple(
            Lane(
                stream,
                index=index,
                options=lane_options,
                stop=self._stop,
                warm=self._warm,
                arrived=self._arrived,
                fail=self._lane_failed,
                backend=lambda: self.backend,
            )
            for index, stream in enumerate(streams)
        )
        self.model_stats = Stats()  # the model's time per batch: the watchdog's yardstick
        self._errors: list[BaseException] = []
        self._inference = threading.Thread(
            target=self._guard(self._infer), name="inference", daemon=True
        )
        self._started = False
        self._opened = False  # capture and publish run (placeholders until warm)
        self._stopped = False
        self._busy_since: float | None = None  # when the batch now in the model started
        self._warmup_seconds = 0.0  # how long the warm-up took: the first frame's yardstick
        # One batch's arguments, made once: a stream without a frame this time is None.
        count = len(self.lanes)
        self._pixels: list[npt.NDArray[np.uint8] | None] = [None] * count
        self._params: list[FrameParams | None] = [None] * count
        self._outs: list[npt.NDArray[np.uint8] | None] = [None] * count
        self._frames: list[Frame | None] = [None] * count

    # -- the first stream's view (one stream: the whole engine) -----------------------------

    @property
    def source(self) -> FrameSource:
        return self.lanes[0].source

    @property
    def sink(self) -> FrameSink:
        return self.lanes[0].sink

    @property
    def controls(self) -> ControlStore:
        return self.lanes[0].controls

    @property
    def stats(self) -> Stats:
        """The first stream's counters (the only stream's, without --stream)."""
        return self.lanes[0].stats

    @property
    def placeholders(self) -> int:
        """Placeholder frames published before the model was warm, every stream."""
        return sum(lane.placeholders for lane in self.lanes)

    @property
    def skipped(self) -> int:
        """Frames that reused the last output (--skip-similar), every stream."""
        return sum(lane.skipped for lane in self.lanes)

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("the engine has no backend yet: start(backend) gives it one")
        return self._backend

    @property
    def has_backend(self) -> bool:
        return self._backend is not None

    @property
    def warm(self) -> bool:
        """The model has warmed up: frames go through it from now on."""
        return self._warm.is_set()

    def open(self) -> Engine:
        """Start capturing and publishing now, before the model is there: until it is warm
        each sink gets its input passed through, marked ``LOADING``, or a card saying so
        while there is no input (:mod:`livediffusion.run.placeholder`)."""
        if not self._opened:
            self._opened = True
            for lane in self.lanes:
                for thread in lane.threads:
                    thread.start()
        return self

    def start(self, backend: Backend | None = None) -> Engine:
        """Encode the starting prompts, start the threads, and return once the model is warm
        (or ``stop`` was set meanwhile)."""
        if backend is not None:
            if self._backend is not None and self._backend is not backend:
                raise RuntimeError("the engine has a backend already")
            self._backend = backend
        backend = self.backend
        if backend.streams < len(self.lanes):
            raise ValueError(
                f"{len(self.lanes)} streams need a backend built for {len(self.lanes)}; "
                f"{backend.name} serves {backend.streams}"
            )
        for lane in self.lanes:
            lane.stats.backend = backend.name
            lane.start_prompts(backend)
        self._lora_weights = LoraWeights(
            self.styles,
            backend,
            glide=lambda: self.lanes[0].controls.snapshot().glide,
            reencode=self._reencode_prompts,
        )
        self._inference.start()  # it warms up first; frames would only be dropped meanwhile
        while not self._warm.wait(0.1) and not self._stop.is_set():
            pass
        self.open()
        self._started = True
        return self

    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions that stopped a frame thread or a stream."""
        return list(self._errors)

    def _lane_failed(self, lane: Lane, exc: BaseException) -> None:
        """A stream cannot go on: stop it; stop everything when no stream is left."""
        self._errors.append(exc)
        if all(other.failed is not None for other in self.lanes):
            self._stop.set()
        elif len(self.lanes) > 1:
            log.error("%sSTOPPED (%s); the other streams go on", lane.label, exc)

    def stop(self, timeout: float = 1.0) -> list[str]:
        """Stop and join every thread; returns the names of threads that did not finish.

        Every thread is told first and all are joined against one deadline, so the waits
        overlap instead of adding up. A frame in flight is waited for only when this
        machine's typical frame says it ends within ``timeout``; otherwise (a 7 s CPU frame,
        a warm-up) not at all: the threads are daemons, and :attr:`busy` tells the caller not
        to free the model under them. Calling it again does not wait again.
        """
        self._stop.set()
        threads = self._threads()
        if self._stopped:
            return [thread.name for thread in threads if thread.is_alive()]
        self._stopped = True
        for lane in self.lanes:
            lane.close_prompts(timeout=0.0)  # told now, joined below with the rest
        now = time.monotonic()
        deadline = now + timeout
        finish = self._frame_ends(now)
        waits = [(thread, deadline) for lane in self.lanes for thread in lane.threads]
        waits.append(
            (
                self._inference,
                min(deadline, finish) if finish <= deadline or finish == math.inf else now,
            )
        )
        stuck = []
        for thread, until in waits:
            if thread.is_alive():
                thread.join(max(0.0, until - time.monotonic()))
                if thread.is_alive():
                    stuck.append(thread.name)
        for lane in self.lanes:
            lane.close_prompts(timeout=max(0.0, deadline - time.monotonic()))
        if stuck:
            log.info("not waiting for the %s thread (a frame is in flight)", ", ".join(stuck))
        return stuck

    def _threads(self) -> list[threading.Thread]:
        return [self._inference, *(thread for lane in self.lanes for thread in lane.threads)]

    def _frame_ends(self, now: float) -> float:
        """When the frame now in the model should be done (plus a margin), or ``now`` when
        nobody can say (the warm-up: a first compile may take a minute)."""
        since = self._busy_since
        if since is None:
            return math.inf  # between frames: the thread sees the stop within a poll
        typical = self.model_stats.step_p50()
        if not self._warm.is_set() or typical <= 0.0:
            return now
        return since + 1.5 * typical + _POLL

    @property
    def busy(self) -> bool:
        """A frame thread is still inside the model or a transport: do not free them."""
        return any(thread.is_alive() for thread in self._threads())

    @property
    def warming_for(self) -> float | None:
        """Seconds the model has been warming up, while it does."""
        since = self._busy_since
        if since is None or self._warm.is_set():
            return None
        return time.monotonic() - since

    # -- what the status line reports ------------------------------------------------------

    def stall_limit(self) -> float:
        """Seconds a frame may take here before it counts as stalled: several times this
        machine's typical frame, never less than the floor."""
        typical = self.model_stats.step_p50() or self._warmup_seconds
        return max(self.options.stall_after, self.options.stall_factor * typical)

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds the current frame has been in the model, when that is far too long for
        this machine (see :meth:`stall_limit`). Not during the warm-up: that has no yardstick
        yet, and a first compile can take a minute."""
        since = self._busy_since
        if since is None or not self._warm.is_set():
            return None
        now = time.monotonic() if now is None else now
        return now - since if now - since > self.stall_limit() else None

    @property
    def degraded(self) -> bool:
        """The model kept failing (on the first stream): its frames pass through for now."""
        return self.lanes[0].degraded_until is not None

    def source_lost(self, now: float | None = None) -> bool:
        """The first stream's source says it waits for its sender, or sends nothing."""
        return self.lanes[0].source_lost(now)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _guard(self, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as exc:
                log.exception("%s thread failed; stopping", threading.current_thread().name)
                self._errors.append(exc)
                self._stop.set()

        return run

    # -- the inference thread ------------------------------------------------------------------

    def _infer(self) -> None:
        # Warm up here, not on the caller's thread: CUDA libraries keep per-thread handles and
        # workspaces, so a warm-up elsewhere leaves this thread's first frame slow.
        backend = self.backend
        log.info("warming up %s ...", backend.name)
        self._busy_since = time.monotonic()
        self._warmup_seconds = backend.warmup()
        log.info("warm in %.1f s", self._warmup_seconds)
        self._busy_since = None
        for lane in self.lanes:
            lane.stats.backend = backend.name  # a compile that fell back renames it
        self._warm.set()
        first_frame = True
        while not self._stop.is_set():
            if not self._gather():
                for lane in self.lanes:
                    lane.fallback_if_lost()
                continue
            if self._stop.is_set():
                break  # stopped while waiting: no new frame into the model now
            if self._run_batch() and first_frame:
                log.info("first frame processed in %.0f ms", 1000 * self.model_stats.step_p50())
                first_frame = False

    def _reencode_prompts(self) -> None:
        """A LoRA on the text encoder moved: every stream's prompts encode to something else
        now. On the frame thread, between frames, as the backend asks."""
        for lane in self.lanes:
            lane.reencode_prompts(self.backend)

    def _gather(self) -> bool:
        """Take the newest frame of every stream into ``_frames``; False when none came.

        With several streams, once one frame is here, wait up to ``gather`` for the streams
        whose frames are due (they had frames and are on time), so one batch serves them
        all; a stream that is away, paused by its source or slower is not waited for.
        """
        lanes, frames = self.lanes, self._frames
        if not self._arrived.wait(_POLL):
            return False
        self._arrived.clear()
        for k, lane in enumerate(lanes):
            frames[k] = lane.inputs.take_now() if lane.running else None
        if len(lanes) > 1 and self.options.gather > 0:
            deadline = time.monotonic() + self.options.gather
            while True:
                now = time.monotonic()
                due = [
                    k
                    for k, lane in enumerate(lanes)
                    if frames[k] is None and lane.running and lane.expecting(now)
                ]
                if not due or now >= deadline or self._stop.is_set():
                    break
                self._arrived.wait(deadline - now)
                self._arrived.clear()
                for k in due:
                    frames[k] = lanes[k].inputs.take_now()
        return any(frame is not None for frame in frames)

    def _run_batch(self) -> bool:
        """One batch: each stream's frame prepared, the model run once for those that need
        it, each result published or counted as failed. True when the model ran."""
        lanes, frames = self.lanes, self._frames
        pixels, params, outs = self._pixels, self._params, self._outs
        backend = self.backend
        weights = self._lora_weights
        if weights is not None and weights.apply(time.monotonic()):
            for lane in lanes:
                lane.forget_similar()  # the same input no longer gives the same picture
        wanted = False
        for k, lane in enumerate(lanes):
            pixels[k] = params[k] = outs[k] = None
            frame = frames[k]
            if frame is None:
                lane.fallback_if_lost()
                continue
            prepared = lane.prepare(frame)
            if prepared is not None:
                outs[k], params[k] = prepared
                pixels[k] = frame.pixels
                wanted = True
        if not wanted:
            return False
        padding = backend.streams - len(lanes)  # a backend built for more streams than run
        started = time.monotonic()
        self._busy_since = started
        try:
            if padding:
                errors = backend.step_many(
                    [*pixels, *[None] * padding],
                    [*params, *[None] * padding],
                    out=[*outs, *[None] * padding],
                )[: len(lanes)]
            else:
                errors = backend.step_many(pixels, params, out=outs)
        except Exception as exc:  # the whole batch failed (out of memory, a driver error)
            errors = [exc] * len(lanes)
        finally:
            self._busy_since = None
        seconds = time.monotonic() - started
        ran = any(error is None for k, error in enumerate(errors) if pixels[k] is not None)
        if ran:
            self.model_stats.step_time(seconds)
        for k, lane in enumerate(lanes):
            frame, out, values = frames[k], outs[k], params[k]
            if frame is None or out is None or values is None:
                continue
            lane.finish(frame, out, values, errors[k], seconds)
            frames[k] = None
        return ran
