"""Three threads joined by latest-frame slots: capture -> inference -> publish.

::

    source --capture--> [input slot] --inference--> [output slot] --publish--> sink

Each slot holds one frame; a frame that is replaced before it was taken is dropped and
counted. So a model slower than the source never builds a queue, and latency stays one
frame's work plus at most one frame's wait. Controls never travel through the frame threads:
the inference thread reads one :class:`Controls` snapshot per frame.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np
import numpy.typing as npt

from livediffusion.control.controls import GLIDING_FIELDS, Controls, ControlStore
from livediffusion.control.styles import StyleStore
from livediffusion.run.glide import Glide, Ramp
from livediffusion.run.lora_weights import LoraWeights
from livediffusion.run.placeholder import Placeholder
from livediffusion.run.prompts import PromptEncoder
from livediffusion.run.similarity import SimilarityGate
from livediffusion.run.slots import BufferPool, LatestSlot
from livediffusion.run.status import Stats
from livediffusion_bridge import Frame, FrameSink, FrameSource, TransportError
from livediffusion_models.backends import Backend, FrameParams

__all__ = ["Engine", "EngineOptions"]

log = logging.getLogger(__name__)

_POLL = 0.1  # seconds a thread waits before re-checking for shutdown


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


@dataclass(frozen=True, slots=True)
class _Result:
    pixels: npt.NDArray[np.uint8]
    captured: float


class Engine:
    """Owns the three frame threads and the prompt thread; not the source, sink or backend.

    Two ways to start: :meth:`start` with the backend given to the constructor (or to
    ``start``) runs everything once the model is warm. The server calls :meth:`open` first,
    before the model exists: the capture and publish threads start at once and the sink
    shows the input (or a card) marked as loading, so hosts can find and pick the output
    while the weights load; ``start(backend)`` then brings the model in.
    """

    def __init__(
        self,
        *,
        source: FrameSource,
        sink: FrameSink,
        backend: Backend | None = None,
        controls: ControlStore,
        options: EngineOptions | None = None,
        stop: threading.Event | None = None,
        styles: StyleStore | None = None,
    ) -> None:
        """``stop``: an event shared with the caller (its signal handler), so setting it both
        stops running threads and cuts a start-up warm-up short. ``backend``: may come later,
        through :meth:`start`. ``styles``: the LoRA weights, global to the model."""
        self.source = source
        self.sink = sink
        self._backend = backend
        self.controls = controls
        self.options = options or EngineOptions()
        self.stats = Stats(backend=backend.name if backend is not None else "starting")
        self._inputs: LatestSlot[Frame] = LatestSlot()
        self._outputs: LatestSlot[_Result] = LatestSlot()
        self._pool = BufferPool()
        first = controls.snapshot()
        self._prompt_glide = Glide(first.prompt_glide)
        self._seed_glide = Glide(first.seed_glide)
        self._ramps = {field: Ramp(getattr(first, field)) for field in GLIDING_FIELDS}
        self._resets = controls.resets
        self._has_b = False  # a B prompt has reached the backend
        self._prompts: PromptEncoder | None = None  # made with the backend
        self.styles = styles if styles is not None else StyleStore()
        self._lora_weights: LoraWeights | None = None  # made with the backend
        self._stop = stop or threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard(self._capture), name="capture", daemon=True),
            threading.Thread(target=self._guard(self._infer), name="inference", daemon=True),
            threading.Thread(target=self._guard(self._publish), name="publish", daemon=True),
        ]
        self._started = False
        self._opened = False  # capture and publish run (placeholders until warm)
        self._stopped = False
        self._warm = threading.Event()
        self._placeholder = Placeholder()
        self.placeholders = 0  # placeholder frames published before the model was warm
        self._busy_since: float | None = None  # when the frame now in the model started
        self._warmup_seconds = 0.0  # how long the warm-up took: the first frame's yardstick
        self._last_input = 0.0  # monotonic time of the newest input frame
        self._held: Frame | None = None  # the newest input, for --on-source-loss hold-input
        self._failures = 0  # consecutive failed frames
        self._degraded_until: float | None = None  # bypassing the model until then
        self._fallback_shown = False
        self._seed = 0  # the seed whose noise the backend holds; set in start()
        self._gate = SimilarityGate(self.options.skip_similar)
        self._last_model_out: npt.NDArray[np.uint8] | None = None  # what a skip republishes
        self.skipped = 0  # frames that reused the last output (--skip-similar)

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
        """Start capturing and publishing now, before the model is there: until it is warm the
        sink gets the input passed through, marked ``LOADING``, or a card saying so while
        there is no input (:mod:`livediffusion.run.placeholder`)."""
        if not self._opened:
            self._opened = True
            capture, _, publish = self._threads
            capture.start()
            publish.start()
        return self

    def start(self, backend: Backend | None = None) -> Engine:
        """Encode the starting prompt, start the threads, and return once the model is warm
        (or ``stop`` was set meanwhile)."""
        if backend is not None:
            if self._backend is not None and self._backend is not backend:
                raise RuntimeError("the engine has a backend already")
            self._backend = backend
            self.stats.backend = backend.name
        backend = self.backend
        prompts = self._prompts = PromptEncoder(backend.encode_prompt, self.controls)
        first = self.controls.snapshot()
        backend.set_prompt(prompts.encode(first.prompt))
        if first.prompt_b:
            backend.set_prompt(prompts.encode(first.prompt_b), slot="b")
            self._has_b = True
        backend.set_seed(first.seed)
        self._seed = first.seed
        self._lora_weights = LoraWeights(
            self.styles,
            backend,
            glide=lambda: self.controls.snapshot().glide,
            reencode=self._reencode_prompts,
        )
        prompts.start()
        capture, inference, publish = self._threads
        inference.start()  # it warms up first; frames would only be dropped meanwhile
        while not self._warm.wait(0.1) and not self._stop.is_set():
            pass
        if not self._opened:
            capture.start()
            publish.start()
        self._started = True
        return self

    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions that stopped a frame thread (the engine stops when one does)."""
        return list(self._errors)

    def stop(self, timeout: float = 1.0) -> list[str]:
        """Stop and join every thread; returns the names of threads that did not finish.

        Every thread is told first and all are joined against one deadline, so the waits
        overlap instead of adding up. A frame in flight is waited for only when this
        machine's typical frame says it ends within ``timeout``; otherwise (a 7 s CPU frame,
        a warm-up) not at all: the threads are daemons, and :attr:`busy` tells the caller not
        to free the model under them. Calling it again does not wait again.
        """
        self._stop.set()
        if self._stopped:
            return [thread.name for thread in self._threads if thread.is_alive()]
        self._stopped = True
        prompts = self._prompts
        if prompts is not None:
            prompts.close(timeout=0.0)  # told now, joined below with the rest
        now = time.monotonic()
        deadline = now + timeout
        capture, inference, publish = self._threads
        finish = self._frame_ends(now)
        waits = [
            (capture, deadline),
            (publish, deadline),
            (inference, min(deadline, finish) if finish <= deadline or finish == math.inf else now),
        ]
        stuck = []
        for thread, until in waits:
            if thread.is_alive():
                thread.join(max(0.0, until - time.monotonic()))
                if thread.is_alive():
                    stuck.append(thread.name)
        if prompts is not None:
            prompts.close(timeout=max(0.0, deadline - time.monotonic()))
        if stuck:
            log.info("not waiting for the %s thread (a frame is in flight)", ", ".join(stuck))
        return stuck

    def _frame_ends(self, now: float) -> float:
        """When the frame now in the model should be done (plus a margin), or ``now`` when
        nobody can say (the warm-up: a first compile may take a minute)."""
        since = self._busy_since
        if since is None:
            return math.inf  # between frames: the thread sees the stop within a poll
        typical = self.stats.step_p50()
        if not self._warm.is_set() or typical <= 0.0:
            return now
        return since + 1.5 * typical + _POLL

    @property
    def busy(self) -> bool:
        """A frame thread is still inside the model or a transport: do not free them."""
        return any(thread.is_alive() for thread in self._threads)

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
        typical = self.stats.step_p50() or self._warmup_seconds
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
        """The model kept failing: frames pass through unprocessed for now."""
        return self._degraded_until is not None

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

    # -- the three frame threads ---------------------------------------------------------

    def _capture(self) -> None:
        while not self._stop.is_set():
            frame = self.source.read(timeout=_POLL)
            if frame is None:
                continue
            now = time.monotonic()
            self._last_input = now
            self.stats.frame_in(now)
            if self._inputs.put(frame) is not None:
                self.stats.frame_dropped()

    def _infer(self) -> None:
        # Warm up here, not on the caller's thread: CUDA libraries keep per-thread handles and
        # workspaces, so a warm-up elsewhere leaves this thread's first frame slow.
        log.info("warming up %s ...", self.backend.name)
        self._busy_since = time.monotonic()
        self._warmup_seconds = self.backend.warmup()
        log.info("warm in %.1f s", self._warmup_seconds)
        self._busy_since = None
        self.stats.backend = self.backend.name  # a compile that fell back renames it
        self._warm.set()
        first_frame = True
        while not self._stop.is_set():
            frame = self._inputs.take(timeout=_POLL)
            if frame is None:
                self._fallback_if_lost()
                continue
            if self._stop.is_set():
                break  # stopped while waiting: no new frame into the model now
            self._held = frame
            self._fallback_shown = False
            controls = self.controls.snapshot()
            if self.controls.resets != self._resets:
                self._resets = self.controls.resets
                self.backend.reset()
                self._gate.forget()
                log.info("temporal state reset")
            if controls.paused:
                continue  # the sink keeps showing the last published frame
            out_h, out_w = self.options.output_size or (frame.height, frame.width)
            out = self._pool.acquire((out_h, out_w, 4))
            if controls.bypass or not self._model_due():
                self.backend.passthrough(frame.pixels, out=out)
            else:
                params = self._frame_params(controls)
                if self._skip(frame.pixels, params, out):
                    self._put_output(out, frame.timestamp)
                    continue
                started = time.monotonic()
                self._busy_since = started
                try:
                    self.backend.step(frame.pixels, params, out=out)
                except Exception as exc:
                    self._busy_since = None
                    self._pool.release(out)
                    self._gate.forget()
                    self._failed(exc)
                    continue
                self._busy_since = None
                self.stats.step_time(time.monotonic() - started)
                self._recovered()
                self._remember(frame.pixels, params, out)
                if first_frame:
                    log.info(
                        "first frame processed in %.0f ms", 1000 * (time.monotonic() - started)
                    )
                    first_frame = False
            self._put_output(out, frame.timestamp)

    def _publish_placeholders(self) -> bool:
        """Until the model is warm: the newest input passed through and marked, or a loading
        card while there is none, at most ``placeholder_fps``. The capture thread already
        fills the input slot; the inference thread does not take from it before it is warm.
        False when the sink cannot publish at all (said once; the engine stops)."""
        period = 1.0 / self.options.placeholder_fps
        last_sent = 0.0
        buffer: npt.NDArray[np.uint8] | None = None
        while not self._warm.is_set() and not self._stop.is_set():
            frame = self._inputs.take(timeout=period)
            now = time.monotonic()
            if now - last_sent < period:
                continue  # the input is faster than placeholders need to be
            if frame is None and not (self._last_input == 0.0 or self.source_lost(now)):
                continue  # a slow input: receivers keep the last picture meanwhile
            if frame is not None:
                shape = (*(self.options.output_size or (frame.height, frame.width)), 4)
            else:
                shape = (*(self.options.output_size or self.options.placeholder_size), 4)
            if buffer is None or buffer.shape != shape:
                buffer = np.empty(shape, dtype=np.uint8)
            if frame is not None:
                self._placeholder.from_input(frame.pixels, buffer)
            else:
                self._placeholder.card(buffer)
            try:
                self.sink.publish(buffer)
            except TransportError as exc:
                log.error("cannot publish to %s: %s", self.sink.uri, exc)
                self._errors.append(exc)
                self._stop.set()
                return False
            last_sent = now
            self.placeholders += 1
        return not self._stop.is_set()

    # -- --skip-similar -----------------------------------------------------------------------

    def _skip(
        self, pixels: npt.NDArray[np.uint8], params: FrameParams, out: npt.NDArray[np.uint8]
    ) -> bool:
        last = self._last_model_out
        if last is None or last.shape != out.shape or not self._gate.similar(pixels, params):
            return False
        np.copyto(out, last)
        self.skipped += 1
        return True

    def _remember(
        self, pixels: npt.NDArray[np.uint8], params: FrameParams, out: npt.NDArray[np.uint8]
    ) -> None:
        if not self._gate.enabled:
            return
        self._gate.remember(pixels, params)
        if self._last_model_out is None or self._last_model_out.shape != out.shape:
            self._last_model_out = np.empty_like(out)
        np.copyto(self._last_model_out, out)

    def _put_output(self, out: npt.NDArray[np.uint8], captured: float) -> None:
        replaced = self._outputs.put(_Result(out, captured))
        if replaced is not None:
            self._pool.release(replaced.pixels)

    # -- faults ------------------------------------------------------------------------------

    def _model_due(self) -> bool:
        """False while bypassing a failing model; True again once it is time to retry."""
        until = self._degraded_until
        return until is None or time.monotonic() >= until

    def _failed(self, exc: Exception) -> None:
        """One frame failed (out of memory, NaN, a bug): say so, skip it, keep going."""
        self._failures += 1
        count = self.stats.frame_error()
        if count <= 10 or count % 100 == 0:
            log.error(
                "frame skipped: %s: %s (%d failed so far)",
                type(exc).__name__,
                exc,
                count,
                exc_info=count <= 3,
            )
        if self._degraded_until is not None or self._failures >= self.options.max_failures:
            if self._degraded_until is None:
                log.error(
                    "THE MODEL FAILED %d FRAMES IN A ROW: passing the input through unprocessed; "
                    "trying the model again every %.0f s",
                    self._failures,
                    self.options.retry_after,
                )
            self._degraded_until = time.monotonic() + self.options.retry_after

    def _recovered(self) -> None:
        if self._degraded_until is not None:
            log.warning("the model works again: processing frames")
        self._failures = 0
        self._degraded_until = None

    # -- source loss ---------------------------------------------------------------------------

    def source_lost(self, now: float | None = None) -> bool:
        """The source says it waits for its sender, or no frame came for a long while."""
        if self.source.waiting_for is not None:
            return self._last_input > 0 or self._started
        if self._last_input == 0:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_input > max(1.0, 4.0 * self.stats.input_interval())

    def _fallback_if_lost(self) -> None:
        """On losing the source, put the chosen fallback in the output slot once; the publish
        thread keeps re-sending whatever was published last."""
        if self._fallback_shown or not self.source_lost():
            return
        self._fallback_shown = True
        mode = self.options.on_source_loss
        if mode == "last":
            return
        held = self._held
        if held is not None:
            shape = self.options.output_size or (held.height, held.width)
        else:
            shape = self.options.output_size or self.backend.model_size
        out = self._pool.acquire((*shape, 4))
        if mode == "hold-input" and held is not None:
            self.backend.passthrough(held.pixels, out=out)
        else:
            out[..., :3] = 0
            out[..., 3] = 255
        self._put_output(out, time.monotonic())

    def _frame_params(self, controls: Controls) -> FrameParams:
        """Turn one snapshot into this frame's values: glides for new prompts and seeds, ramps
        for numeric values."""
        now = time.monotonic()
        if self._lora_weights is not None and self._lora_weights.apply(now):
            self._gate.forget()  # the same input no longer gives the same picture
        self._prompt_glide.seconds = controls.prompt_glide
        self._seed_glide.seconds = controls.seed_glide
        prompts = self._prompts
        assert prompts is not None  # made in start(), before the inference thread
        for slot in ("a", "b"):
            ready = prompts.take_ready(slot)
            if ready is not None:
                text, embedding = ready
                position = self._prompt_glide.position(now)
                self.backend.set_prompt(embedding, from_mix=position, slot=slot)
                self._prompt_glide.restart(now)
                self._has_b = self._has_b or slot == "b"
                log.info("prompt %s: %s", slot.upper(), text[:120])
        if controls.seed != self._seed:
            self.backend.set_seed(controls.seed, from_mix=self._seed_glide.position(now))
            self._seed_glide.restart(now)
            self._seed = controls.seed
        seconds = self.controls.glide_seconds()
        ramps = self._ramps
        morph = ramps["prompt_mix"].follow(controls.prompt_mix, now, seconds)
        return FrameParams(
            strength=ramps["strength"].follow(controls.strength, now, seconds),
            feedback=ramps["feedback"].follow(controls.feedback, now, seconds),
            smoothing=ramps["smoothing"].follow(controls.smoothing, now, seconds),
            blend=ramps["blend"].follow(controls.blend, now, seconds),
            prompt_mix=self._prompt_glide.position(now),
            seed_mix=self._seed_glide.position(now),
            morph=morph if self._has_b and controls.prompt_b else 0.0,
            controlnet_scale=ramps["controlnet_scale"].follow(
                controls.controlnet_scale, now, seconds
            ),
        )

    def _reencode_prompts(self) -> None:
        """A LoRA on the text encoder moved: the prompts now encode to something else. On the
        frame thread, between frames, as the backend asks (``set_prompt``, ``from_mix`` 1)."""
        prompts = self._prompts
        assert prompts is not None
        prompts.forget()
        controls = self.controls.snapshot()
        self.backend.set_prompt(prompts.encode(controls.prompt))
        if self._has_b and controls.prompt_b:
            self.backend.set_prompt(prompts.encode(controls.prompt_b), slot="b")

    def _publish(self) -> None:
        """Publish each result; while the source is lost, re-send the last one at
        ``fallback_fps`` so receivers keep a picture and stay connected. Before the model is
        warm (after :meth:`open`), publish placeholders instead."""
        if not self._warm.is_set() and not self._publish_placeholders():
            return
        period = 1.0 / self.options.fallback_fps
        shown: npt.NDArray[np.uint8] | None = None  # the last published pixels, kept alive
        while not self._stop.is_set():
            result = self._outputs.take(timeout=min(_POLL, period))
            if result is None:
                if shown is not None and self.source_lost():
                    self.sink.publish(shown)
                    self.stats.fallback_out()
                continue
            try:
                self.sink.publish(result.pixels)
            except TransportError as exc:
                self._pool.release(result.pixels)
                if shown is None:  # never published: the sink cannot work, say it once
                    log.error("cannot publish to %s: %s", self.sink.uri, exc)
                    self._errors.append(exc)
                    self._stop.set()
                    return
                count = self.stats.frame_error()
                if count <= 10 or count % 100 == 0:
                    log.warning(
                        "publishing to %s failed: %s (%d so far)", self.sink.uri, exc, count
                    )
                continue
            except BaseException:
                self._pool.release(result.pixels)
                raise
            if shown is not None:
                self._pool.release(shown)
            shown = result.pixels
            now = time.monotonic()
            self.stats.frame_out(now, now - result.captured)
