"""One stream's side of the engine: its source, sink, controls, slots, counters and faults.

::

    source --capture--> [input slot] --(inference)--> [output slot] --publish--> sink

Every stream (``--stream``; one when there is none) is a :class:`Lane`. Its capture and publish
threads are its own, so a stream whose source vanished or whose sink is slow never holds up
another; the model is shared, and the engine's one inference thread runs the frames of every
lane that has one as a batch (:mod:`livediffusion.run.engine`). Everything a frame needs
besides the model lives here: the glides and ramps that turn the stream's
:class:`~livediffusion.control.controls.Controls` into :class:`FrameParams`, the prompt
encoder, the fallback while the source is away, the skip of similar frames, the count of
failed frames that puts the stream's model path into bypass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from livediffusion.control.controls import GLIDING_FIELDS, Controls, ControlStore
from livediffusion.run.glide import Glide, Ramp
from livediffusion.run.placeholder import Placeholder
from livediffusion.run.prompts import PromptEncoder
from livediffusion.run.similarity import SimilarityGate
from livediffusion.run.slots import BufferPool, LatestSlot
from livediffusion.run.status import Stats
from livediffusion_bridge import Frame, FrameSink, FrameSource, TransportError
from livediffusion_models.backends import Backend, FrameParams

__all__ = ["POLL", "Lane", "LaneOptions", "Stream"]

log = logging.getLogger("livediffusion.run.engine")

POLL = 0.1  # seconds a thread waits before re-checking for shutdown


@dataclass(frozen=True, slots=True)
class Stream:
    """What one stream is given: where frames come from and go, and its controls.

    ``name`` is how logs, the status line and OSC (``/cam/strength``) call it; ``""`` for
    the one stream of a plain ``serve``.
    """

    source: FrameSource
    sink: FrameSink
    controls: ControlStore
    name: str = ""


@dataclass(frozen=True, slots=True)
class LaneOptions:
    """The engine's options a lane reads (see :class:`~livediffusion.run.engine.EngineOptions`)."""

    output_size: tuple[int, int] | None
    on_source_loss: str
    fallback_fps: float
    max_failures: int
    retry_after: float
    skip_similar: float
    placeholder_size: tuple[int, int]
    placeholder_fps: float


@dataclass(frozen=True, slots=True)
class _Result:
    pixels: npt.NDArray[np.uint8]
    captured: float


class Lane:
    """One stream's threads and state; the engine owns it and runs its frames."""

    def __init__(
        self,
        stream: Stream,
        *,
        index: int,
        options: LaneOptions,
        stop: threading.Event,
        warm: threading.Event,
        arrived: threading.Event,
        fail: Callable[[Lane, BaseException], None],
        backend: Callable[[], Backend],
    ) -> None:
        """``index``: the stream's row in the backend's batch. ``arrived`` is set on every
        captured frame (the inference thread waits on it for all lanes at once). ``fail``
        is told when this stream cannot go on (its sink refuses every frame, a thread broke):
        the engine stops this lane, or everything when it was the last one. ``backend``
        gives the model once there is one."""
        self.stream = stream
        self.name = stream.name
        self.index = index
        self.source = stream.source
        self.sink = stream.sink
        self.controls = stream.controls
        self.options = options
        self.stats = Stats(backend="starting")
        self._stop = stop
        self._warm = warm
        self._arrived = arrived
        self._fail_engine = fail
        self.failed: BaseException | None = None  # why this stream stopped, if it did
        self.stopped = threading.Event()  # this lane's threads stop (the engine's stop too)
        self._backend = backend
        self.inputs: LatestSlot[Frame] = LatestSlot()
        self._outputs: LatestSlot[_Result] = LatestSlot()
        self._pool = BufferPool()
        first = self.controls.snapshot()
        self._prompt_glide = Glide(first.prompt_glide)
        self._seed_glide = Glide(first.seed_glide)
        self._ramps = {field: Ramp(getattr(first, field)) for field in GLIDING_FIELDS}
        self._resets = self.controls.resets
        self._has_b = False  # a B prompt has reached the backend
        self._prompts: PromptEncoder | None = None  # made with the backend
        self._placeholder = Placeholder()
        self.placeholders = 0  # placeholder frames published before the model was warm
        self.last_input = 0.0  # monotonic time of the newest input frame
        self._held: Frame | None = None  # the newest input, for --on-source-loss hold-input
        self._failures = 0  # consecutive failed frames
        self.degraded_until: float | None = None  # bypassing the model until then
        self._fallback_shown = False
        self._seed = 0  # the seed whose noise the backend holds; set in start_prompts()
        self._gate = SimilarityGate(options.skip_similar)
        self._last_model_out: npt.NDArray[np.uint8] | None = None  # what a skip republishes
        self.skipped = 0  # frames that reused the last output (--skip-similar)
        self.started = False  # the model has been given this stream's prompt and seed
        label = f"-{self.name}" if self.name else ""
        self.threads = (
            threading.Thread(target=self._capture, name=f"capture{label}", daemon=True),
            threading.Thread(target=self._publish, name=f"publish{label}", daemon=True),
        )

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
        self.stopped.set()
        self._fail_engine(self, exc)

    @property
    def running(self) -> bool:
        return not (self._stop.is_set() or self.stopped.is_set())

    @property
    def label(self) -> str:
        """How the log names the stream: ``stream cam: `` or nothing for the only one."""
        return f"stream {self.name}: " if self.name else ""

    # -- prompts -----------------------------------------------------------------------------

    def start_prompts(self, backend: Backend) -> PromptEncoder:
        """Give the model this stream's first prompts and seed; start its prompt encoder."""
        prompts = self._prompts = PromptEncoder(backend.encode_prompt, self.controls)
        first = self.controls.snapshot()
        backend.set_prompt(prompts.encode(first.prompt), stream=self.index)
        if first.prompt_b:
            backend.set_prompt(prompts.encode(first.prompt_b), slot="b", stream=self.index)
            self._has_b = True
        backend.set_seed(first.seed, stream=self.index)
        self._seed = first.seed
        prompts.start()
        self.started = True
        return prompts

    def reencode_prompts(self, backend: Backend) -> None:
        """Encode this stream's prompts again and hand them over (``from_mix`` 1): a LoRA
        on the text encoder changed what they encode to."""
        prompts = self._prompts
        assert prompts is not None  # made in start_prompts(), before any frame
        prompts.forget()
        controls = self.controls.snapshot()
        backend.set_prompt(prompts.encode(controls.prompt), stream=self.index)
        if self._has_b and controls.prompt_b:
            backend.set_prompt(prompts.encode(controls.prompt_b), slot="b", stream=self.index)

    def forget_similar(self) -> None:
        """``--skip-similar`` must not republish a frame made with other weights."""
        self._gate.forget()

    def close_prompts(self, timeout: float) -> None:
        if self._prompts is not None:
            self._prompts.close(timeout=timeout)

    # -- capture -------------------------------------------------------------------------------

    def _capture(self) -> None:
        try:
            while self.running:
                frame = self.source.read(timeout=POLL)
                if frame is None:
                    continue
                now = time.monotonic()
                self.last_input = now
                self.stats.frame_in(now)
                if self.inputs.put(frame) is not None:
                    self.stats.frame_dropped()
                self._arrived.set()
        except BaseException as exc:
            log.exception("%scapture thread failed; stopping", self.label)
            self._fail(exc)

    # -- one frame, on the inference thread ---------------------------------------------------

    def prepare(self, frame: Frame) -> tuple[npt.NDArray[np.uint8], FrameParams] | None:
        """Everything before the model for this stream's newest frame. Returns the output
        buffer and the frame's values when the frame needs the model; None when it was
        handled here (paused, bypassed, failing, similar to the last one)."""
        backend = self._backend()
        self._held = frame
        self._fallback_shown = False
        controls = self.controls.snapshot()
        if self.controls.resets != self._resets:
            self._resets = self.controls.resets
            backend.reset(self.index)
            self._gate.forget()
            log.info("%stemporal state reset", self.label)
        if controls.paused:
            return None  # the sink keeps showing the last published frame
        out_h, out_w = self.options.output_size or (frame.height, frame.width)
        out = self._pool.acquire((out_h, out_w, 4))
        if controls.bypass or not self._model_due():
            backend.passthrough(frame.pixels, out=out, stream=self.index)
            self.put_output(out, frame.timestamp)
            return None
        params = self._frame_params(controls, backend)
        if self._skip(frame.pixels, params, out):
            self.put_output(out, frame.timestamp)
            return None
        return out, params

    def finish(
        self,
        frame: Frame,
        out: npt.NDArray[np.uint8],
        params: FrameParams,
        error: Exception | None,
        seconds: float,
    ) -> bool:
        """After the model: publish the frame, or count the failure. True when it went out."""
        if error is not None:
            self._pool.release(out)
            self._gate.forget()
            self._failed(error)
            return False
        self.stats.step_time(seconds)
        self._recovered()
        self._remember(frame.pixels, params, out)
        self.put_output(out, frame.timestamp)
        return True

    def put_output(self, out: npt.NDArray[np.uint8], captured: float) -> None:
        replaced = self._outputs.put(_Result(out, captured))
        if replaced is not None:
            self._pool.release(replaced.pixels)

    def _frame_params(self, controls: Controls, backend: Backend) -> FrameParams:
        """Turn one snapshot into this frame's values: glides for new prompts and seeds, ramps
        for numeric values."""
        now = time.monotonic()
        self._prompt_glide.seconds = controls.prompt_glide
        self._seed_glide.seconds = controls.seed_glide
        prompts = self._prompts
        assert prompts is not None  # made in start_prompts(), before any frame
        for slot in ("a", "b"):
            ready = prompts.take_ready(slot)
            if ready is not None:
                text, embedding = ready
                position = self._prompt_glide.position(now)
                backend.set_prompt(embedding, from_mix=position, slot=slot, stream=self.index)
                self._prompt_glide.restart(now)
                self._has_b = self._has_b or slot == "b"
                log.info("%sprompt %s: %s", self.label, slot.upper(), text[:120])
        if controls.seed != self._seed:
            backend.set_seed(
                controls.seed, from_mix=self._seed_glide.position(now), stream=self.index
            )
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

    # -- --skip-similar ------------------------------------------------------------------------

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

    # -- faults ------------------------------------------------------------------------------

    def _model_due(self) -> bool:
        """False while bypassing a failing model; True again once it is time to retry."""
        until = self.degraded_until
        return until is None or time.monotonic() >= until

    def _failed(self, exc: Exception) -> None:
        """One frame failed (out of memory, NaN, a bug): say so, skip it, keep going."""
        self._failures += 1
        count = self.stats.frame_error()
        if count <= 10 or count % 100 == 0:
            log.error(
                "%sframe skipped: %s: %s (%d failed so far)",
                self.label,
                type(exc).__name__,
                exc,
                count,
                exc_info=count <= 3,
            )
        if self.degraded_until is not None or self._failures >= self.options.max_failures:
            if self.degraded_until is None:
                log.error(
                    "%sTHE MODEL FAILED %d FRAMES IN A ROW: passing the input through "
                    "unprocessed; trying the model again every %.0f s",
                    self.label,
                    self._failures,
                    self.options.retry_after,
                )
            self.degraded_until = time.monotonic() + self.options.retry_after

    def _recovered(self) -> None:
        if self.degraded_until is not None:
            log.warning("%sthe model works again: processing frames", self.label)
        self._failures = 0
        self.degraded_until = None

    # -- source loss ---------------------------------------------------------------------------

    def source_lost(self, now: float | None = None) -> bool:
        """The source says it waits for its sender, or no frame came for a long while."""
        if self.source.waiting_for is not None:
            return self.last_input > 0 or self.started
        if self.last_input == 0:
            return False
        now = time.monotonic() if now is None else now
        return now - self.last_input > max(1.0, 4.0 * self.stats.input_interval())

    def expecting(self, now: float) -> bool:
        """A frame of this stream should come soon: it has frames, and they are on time."""
        return self.last_input > 0 and not self.source_lost(now)

    def fallback_if_lost(self) -> None:
        """On losing the source, put the chosen fallback in the output slot once; the publish
        thread keeps re-sending whatever was published last."""
        if self._fallback_shown or not self.source_lost():
            return
        self._fallback_shown = True
        mode = self.options.on_source_loss
        if mode == "last":
            return
        held = self._held
        backend = self._backend()
        if held is not None:
            shape = self.options.output_size or (held.height, held.width)
        else:
            shape = self.options.output_size or backend.model_size
        out = self._pool.acquire((*shape, 4))
        if mode == "hold-input" and held is not None:
            backend.passthrough(held.pixels, out=out, stream=self.index)
        else:
            out[..., :3] = 0
            out[..., 3] = 255
        self.put_output(out, time.monotonic())

    # -- publish -------------------------------------------------------------------------------

    def _publish(self) -> None:
        try:
            self._publish_frames()
        except BaseException as exc:
            log.exception("%spublish thread failed; stopping", self.label)
            self._fail(exc)

    def _publish_frames(self) -> None:
        """Publish each result; while the source is lost, re-send the last one at
        ``fallback_fps`` so receivers keep a picture and stay connected. Before the model is
        warm, publish placeholders instead."""
        if not self._warm.is_set() and not self._publish_placeholders():
            return
        period = 1.0 / self.options.fallback_fps
        shown: npt.NDArray[np.uint8] | None = None  # the last published pixels, kept alive
        while self.running:
            result = self._outputs.take(timeout=min(POLL, period))
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
                    self._fail(exc)
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

    def _publish_placeholders(self) -> bool:
        """Until the model is warm: the newest input passed through and marked, or a loading
        card while there is none, at most ``placeholder_fps``. The capture thread already
        fills the input slot; the inference thread does not take from it before it is warm.
        False when the sink cannot publish at all (said once; the engine stops)."""
        period = 1.0 / self.options.placeholder_fps
        last_sent = 0.0
        buffer: npt.NDArray[np.uint8] | None = None
        while not self._warm.is_set() and self.running:
            frame = self.inputs.take(timeout=period)
            now = time.monotonic()
            if now - last_sent < period:
                continue  # the input is faster than placeholders need to be
            if frame is None and not (self.last_input == 0.0 or self.source_lost(now)):
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
                self._fail(exc)
                return False
            last_sent = now
            self.placeholders += 1
        return self.running
