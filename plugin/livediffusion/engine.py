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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from livediffusion.controls import GLIDING_FIELDS, Controls, ControlStore
from livediffusion.glide import Glide, Ramp
from livediffusion.prompts import PromptEncoder
from livediffusion.slots import BufferPool, LatestSlot
from livediffusion.status import Stats
from livediffusion_bridge import Frame, FrameSink, FrameSource
from livediffusion_models.backends import Backend, FrameParams

__all__ = ["Engine", "EngineOptions"]

log = logging.getLogger(__name__)

_POLL = 0.1  # seconds a thread waits before re-checking for shutdown


@dataclass(frozen=True, slots=True)
class EngineOptions:
    output_size: tuple[int, int] | None = None  # (height, width); None = the input's size


@dataclass(frozen=True, slots=True)
class _Result:
    pixels: npt.NDArray[np.uint8]
    captured: float


class Engine:
    """Owns the three frame threads and the prompt thread; not the source, sink or backend."""

    def __init__(
        self,
        *,
        source: FrameSource,
        sink: FrameSink,
        backend: Backend,
        controls: ControlStore,
        options: EngineOptions | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``: an event shared with the caller (its signal handler), so setting it both
        stops running threads and cuts a start-up warm-up short."""
        self.source = source
        self.sink = sink
        self.backend = backend
        self.controls = controls
        self.options = options or EngineOptions()
        self.stats = Stats(backend=backend.name)
        self._inputs: LatestSlot[Frame] = LatestSlot()
        self._outputs: LatestSlot[_Result] = LatestSlot()
        self._pool = BufferPool()
        first = controls.snapshot()
        self._prompt_glide = Glide(first.prompt_glide)
        self._seed_glide = Glide(first.seed_glide)
        self._ramps = {field: Ramp(getattr(first, field)) for field in GLIDING_FIELDS}
        self._resets = controls.resets
        self._has_b = False  # a B prompt has reached the backend
        self._prompts = PromptEncoder(backend.encode_prompt, controls)
        self._stop = stop or threading.Event()
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._guard(self._capture), name="capture", daemon=True),
            threading.Thread(target=self._guard(self._infer), name="inference", daemon=True),
            threading.Thread(target=self._guard(self._publish), name="publish", daemon=True),
        ]
        self._started = False
        self._warm = threading.Event()
        self._seed = 0  # the seed whose noise the backend holds; set in start()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Engine:
        """Encode the starting prompt, start the threads, and return once the model is warm."""
        first = self.controls.snapshot()
        self.backend.set_prompt(self._prompts.encode(first.prompt))
        if first.prompt_b:
            self.backend.set_prompt(self._prompts.encode(first.prompt_b), slot="b")
            self._has_b = True
        self.backend.set_seed(first.seed)
        self._seed = first.seed
        self._prompts.start()
        capture, inference, publish = self._threads
        inference.start()  # it warms up first; frames would only be dropped meanwhile
        while not self._warm.wait(0.1) and not self._stop.is_set():
            pass
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

    def stop(self, timeout: float = 1.5) -> list[str]:
        """Stop and join every thread; returns the names of threads that did not finish."""
        self._stop.set()
        self._prompts.close()
        deadline = time.monotonic() + timeout
        stuck = []
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
                if thread.is_alive():
                    stuck.append(thread.name)
        if stuck:
            log.warning("threads still busy at shutdown: %s", ", ".join(stuck))
        return stuck

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
            self.stats.frame_in(time.monotonic())
            if self._inputs.put(frame) is not None:
                self.stats.frame_dropped()

    def _infer(self) -> None:
        # Warm up here, not on the caller's thread: CUDA libraries keep per-thread handles and
        # workspaces, so a warm-up elsewhere leaves this thread's first frame slow.
        log.info("warming up %s ...", self.backend.name)
        log.info("warm in %.1f s", self.backend.warmup())
        self._warm.set()
        first_frame = True
        while not self._stop.is_set():
            frame = self._inputs.take(timeout=_POLL)
            if frame is None:
                continue
            controls = self.controls.snapshot()
            if self.controls.resets != self._resets:
                self._resets = self.controls.resets
                self.backend.reset()
                log.info("temporal state reset")
            if controls.paused:
                continue  # the sink keeps showing the last published frame
            out_h, out_w = self.options.output_size or (frame.height, frame.width)
            out = self._pool.acquire((out_h, out_w, 4))
            if controls.bypass:
                self.backend.passthrough(frame.pixels, out=out)
            else:
                params = self._frame_params(controls)
                started = time.monotonic()
                self.backend.step(frame.pixels, params, out=out)
                if first_frame:
                    log.info(
                        "first frame processed in %.0f ms", 1000 * (time.monotonic() - started)
                    )
                    first_frame = False
            replaced = self._outputs.put(_Result(out, frame.timestamp))
            if replaced is not None:
                self._pool.release(replaced.pixels)

    def _frame_params(self, controls: Controls) -> FrameParams:
        """Turn one snapshot into this frame's values: glides for new prompts and seeds, ramps
        for numeric values."""
        now = time.monotonic()
        self._prompt_glide.seconds = controls.prompt_glide
        self._seed_glide.seconds = controls.seed_glide
        for slot in ("a", "b"):
            ready = self._prompts.take_ready(slot)
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
        )

    def _publish(self) -> None:
        while not self._stop.is_set():
            result = self._outputs.take(timeout=_POLL)
            if result is None:
                continue
            try:
                self.sink.publish(result.pixels)
            finally:
                self._pool.release(result.pixels)
            now = time.monotonic()
            self.stats.frame_out(now, now - result.captured)
