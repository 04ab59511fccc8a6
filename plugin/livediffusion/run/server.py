"""``livediffusion serve``: wire a source, the model, a sink and OSC together, then run.

Start-up errors (no such model, weights missing, NDI not installed, OSC port taken) are
turned into one clear message by the CLI; once running, the engine threads carry on until
Ctrl-C, SIGTERM, ``--duration`` or a thread failure, and everything is closed within ~2 s.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO

from livediffusion.backends import build_backend
from livediffusion.config import ServeConfig, StreamConfig
from livediffusion.control.controls import ControlStore
from livediffusion.control.presets import PresetFile
from livediffusion.control.streams import StreamRouter
from livediffusion.control.styles import StyleStore
from livediffusion.control.surface import ControlSurface, StatusValues
from livediffusion.run.engine import SOURCE_LOSS_MODES, Engine, EngineOptions, SourceLoss, Stream
from livediffusion.run.preview import attach_preview
from livediffusion.run.status import format_streams, format_summary
from livediffusion.run.terminal import StatusLine
from livediffusion_bridge import FrameSink, open_sink, open_source, pump_events
from livediffusion_bridge.osc import OscCounters, OscServer
from livediffusion_models.backends import Backend

__all__ = ["build_backend", "run_server"]

log = logging.getLogger("livediffusion")


class _StopDuringStartup(BaseException):
    """Raised by the signal handler while loading: a BaseException, so no loader swallows it."""


@contextmanager
def _stop_on_signals(stop: threading.Event, running: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; before ``running`` (while OSC, the source and the sink
    open) they also abort the start-up at once. The model loads on a thread of its own, so
    after that the main loop sees ``stop``. Only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()
        if not running.is_set():
            raise _StopDuringStartup

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _pump_until(stop: threading.Event, seconds: float) -> None:
    """Wait on the main thread, running the OS event loop (Syphon discovery needs it on macOS)."""
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        pump_events(min(0.05, max(0.0, end - time.monotonic())))


def _source_loss(mode: str) -> SourceLoss:
    if mode not in SOURCE_LOSS_MODES:
        raise ValueError(f"on_source_loss must be one of {', '.join(SOURCE_LOSS_MODES)}")
    return mode  # type: ignore[return-value]  # checked just above


class _Loader:
    """Builds the backend and warms the model up on a thread of its own.

    The main thread meanwhile keeps the status line, OSC replies and the OS event loop going
    (Syphon discovery and the preview window need it), while the engine's publish thread
    already shows placeholders, so the output can be found and picked during a load that
    takes a minute on a CPU. A load that fails is re-raised on the main thread.
    """

    def __init__(
        self,
        config: ServeConfig,
        backend: Backend | None,
        engine: Engine,
        stop: threading.Event,
    ) -> None:
        self._config = config
        self._engine = engine
        self._stop = stop
        self.backend = backend
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="model-loader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            if self.backend is None:
                self.backend = build_backend(self._config)
            if not self._stop.is_set():
                self._engine.start(self.backend)
        except BaseException as exc:
            self.error = exc
            self._stop.set()

    def close_backend(self) -> None:
        """Free the model, unless it is still in use: a frame (or the warm-up) inside it,
        or the loader still building or handing it over (a CPU frame can take seconds, and
        freeing memory under a running kernel can abort the process). The process is about
        to exit, which frees everything anyway."""
        if self.backend is None:
            return
        if self.thread.is_alive() or self._engine.busy:
            log.debug("not closing the backend: a frame is still in flight")
            return
        self.backend.close()


def _model_size(model: str) -> tuple[int, int]:
    from livediffusion_models.registry import get_model

    side = get_model(model).default_size
    return side, side


def _announce(sink: FrameSink, label: str = "") -> None:
    """Say once what to pick in the host, as the host lists it."""
    direct = sink.listen_address
    log.info(
        "%soutput ready: pick the %s in your host%s",
        label,
        sink.shown_as,
        f" (output listening on {direct} for direct connections)" if direct else "",
    )


def _starting(engine: Engine, loader: _Loader, model: str, now: float) -> str:
    """The status line before the model is warm: what it is doing, for how long."""
    warming = engine.warming_for
    if warming is not None:
        doing = f"warming up {warming:.0f} s"
    elif engine.has_backend:
        doing = "encoding the prompt"
    else:
        doing = f"loading {model} {now - loader.started:.0f} s"
    return f"STARTING: {doing} | output: the input, marked LOADING ({engine.placeholders} sent)"


class _EngineNotes:
    """What the status line adds about the frames: the source, the model, the watchdog.
    A stall is also logged when first seen and every 10 s after, for logs read later."""

    def __init__(self) -> None:
        self._stall_logged = 0.0

    def __call__(self, engine: Engine) -> str:
        notes = []
        for lane in engine.lanes:
            tag = f"{lane.name}: " if lane.name else ""
            if lane.failed is not None:
                notes.append(f"{tag}STOPPED ({type(lane.failed).__name__})")
                continue
            waiting = lane.source.waiting_for
            if waiting is not None:
                notes.append(f"{tag}waiting for {waiting}")
            elif lane.source_lost():
                notes.append(f"{tag}no input frames")
        stalled = engine.stalled_for()
        if stalled is None:
            self._stall_logged = 0.0
        else:
            notes.append(f"INFERENCE STALLED {stalled:.0f} s")
            if self._stall_logged == 0.0 or stalled - self._stall_logged >= 10.0:
                log.warning(
                    "the inference thread has been on one frame for %.0f s (frames take "
                    "%.1f s here; a stall is more than %.0f s)",
                    stalled,
                    engine.model_stats.step_p50(),
                    engine.stall_limit(),
                )
                self._stall_logged = stalled
        for lane in engine.lanes:
            tag = f"{lane.name}: " if lane.name else ""
            if lane.degraded_until is not None:
                notes.append(f"{tag}MODEL FAILING: passing the input through")
            if lane.stats.errors:
                notes.append(f"{tag}{lane.stats.errors} frames failed")
        return "".join(" | " + note for note in notes)


def osc_rejected(counters: OscCounters) -> int:
    """Messages and datagrams dropped as bad (refused by the controls, malformed, from an
    address outside --osc-allow): the status line's and /status's count."""
    return counters.rejected + counters.malformed + counters.refused


def _osc_note(osc: OscServer) -> str:
    """What the status line adds about OSC: nothing while all is well."""
    counters = osc.counters
    notes = []
    rejected = osc_rejected(counters)
    if rejected:
        notes.append(f"OSC rejected {rejected}")
    if counters.restarts:
        notes.append(f"OSC RESTARTED {counters.restarts}x")
    if counters.failed:
        notes.append(f"OSC handler errors {counters.failed}")
    if counters.flooded:
        notes.append(f"OSC flood dropped {counters.flooded}")
    return "".join(" | " + note for note in notes)


@contextmanager
def _open_midi(
    config: ServeConfig,
    surface: ControlSurface | StreamRouter,
    stores: list[ControlStore],
    streams: tuple[StreamConfig, ...],
    styles: StyleStore,
) -> Iterator[None]:
    """MIDI drives every stream (the plain addresses), or the one ``--midi-stream`` names;
    relative controls (encoders) step from that stream's value (the first one's for all)."""
    from livediffusion.control.midi import MidiInput
    from livediffusion.control.midi_map import MidiMapper, load_map

    assert config.midi is not None and config.midi_map is not None
    index = next((k for k, s in enumerate(streams) if s.name == config.midi_stream), 0)
    store = stores[index]
    submit = surface.submit
    if config.midi_stream is not None and isinstance(surface, StreamRouter):
        submit = surface.surfaces[index].submit
        log.info("MIDI drives stream %s", config.midi_stream)

    def current(field: str) -> Any:  # "/lora/0/on": the LoRAs' store, global
        if field.startswith("/"):
            return styles.value_at(field)
        return getattr(store.snapshot(), field)

    mapper = MidiMapper(load_map(config.midi_map), current=current)
    with MidiInput(config.midi, mapper, submit=submit):
        yield


def _stream_status(
    config: ServeConfig,
    index: int,
    engines: list[Engine],
    servers: list[OscServer],
    store: ControlStore,
    styles: StyleStore,
) -> Callable[[], StatusValues]:
    """What one stream's ``/status`` answers (``/cam/status``; ``/status`` without streams)."""

    def status() -> StatusValues:
        rejected = osc_rejected(servers[0].counters) if servers else 0
        scale = store.snapshot().controlnet_scale if config.controlnet else 0.0
        looks = (scale, styles.status_text())
        if not engines or not engines[0].warm:
            return (0.0, 0.0, 0.0, 0, config.model, "starting", rejected, *looks)
        now = engines[0].lanes[index].stats.snapshot()
        return (
            now.input_fps,
            now.output_fps,
            now.latency_p50_ms,
            now.dropped,
            config.model,
            now.backend,
            rejected,
            *looks,
        )

    return status


def run_server(
    config: ServeConfig,
    *,
    backend: Backend | None = None,
    stop: threading.Event | None = None,
    status_stream: TextIO = sys.stderr,
    on_engine: Callable[[Engine], None] | None = None,
) -> int:
    """Run until stopped. ``on_engine`` is told the engine once it exists (the soak reads
    its counters). Returns the process exit code (0 clean, 1 a thread failed)."""
    stop = stop or threading.Event()
    running = threading.Event()
    try:
        return _run(config, backend, stop, running, status_stream, on_engine)
    except _StopDuringStartup:
        log.info("stopped during start-up")
        return 0


def _run(
    config: ServeConfig,
    backend: Backend | None,
    stop: threading.Event,
    running: threading.Event,
    status_stream: TextIO,
    on_engine: Callable[[Engine], None] | None = None,
) -> int:
    if config.midi_map is not None and config.midi is None:
        log.warning(
            "--midi-map %s does nothing without --midi PORT (`livediffusion midi --list` "
            "shows the ports)",
            config.midi_map,
        )
    with ExitStack() as stack:
        stack.enter_context(_stop_on_signals(stop, running))
        # Everything that can fail on a typo (port taken, bad URI, missing transport) is
        # opened before the model, which takes seconds to load.
        streams = config.stream_list()
        stores = [ControlStore(stream.controls) for stream in streams]
        styles = StyleStore([request.weight for request in config.lora])
        engines: list[Engine] = []  # the engine, once it exists
        servers: list[OscServer] = []  # the OSC server, once it listens
        presets = PresetFile(config.presets)
        surfaces = [
            ControlSurface(
                store,
                presets=presets,
                status=_stream_status(config, index, engines, servers, store, styles),
                prefix=config.osc_prefix + (f"/{stream.name}" if stream.name else ""),
                reply_to=config.osc_reply,
                echo=config.osc_echo,
                recall_glide=config.recall_glide,
                stream=stream.name,
                styles=styles,
            )
            for index, (stream, store) in enumerate(zip(streams, stores, strict=True))
        ]
        surface: ControlSurface | StreamRouter = (
            StreamRouter(surfaces, prefix=config.osc_prefix, reply_to=config.osc_reply)
            if config.streams
            else surfaces[0]
        )
        osc = stack.enter_context(
            OscServer(
                surface.handle_osc,
                host=config.osc_host,
                port=config.osc_port,
                allow=config.osc_allow,
                rate=config.osc_rate,
            )
        )
        surface.attach(osc)
        servers.append(osc)
        names = [stream.name for stream in streams if stream.name]
        under = f"{config.osc_prefix}/{names[0]}" if names else config.osc_prefix
        log.info(
            "OSC on %s:%d  (%s/prompt %s/strength ... `livediffusion osc` lists them)%s",
            *osc.address,
            under,
            under,
            f"; streams {', '.join(names)}; addresses without a name set every stream"
            if names
            else "",
        )
        if config.midi is not None:
            stack.enter_context(_open_midi(config, surface, stores, streams, styles))
        ports: list[Stream] = []
        for stream, store in zip(streams, stores, strict=True):
            source = stack.enter_context(open_source(stream.source))
            sink = stack.enter_context(open_sink(stream.sink))
            ports.append(Stream(source, sink, store, name=stream.name))
        # A window (--preview, window://) is drawn by this thread while it waits below;
        # closing it sets ``stop``. With several streams it shows the first.
        first = ports[0]
        preview = attach_preview(
            config.preview, first.source, first.sink, stack=stack, on_close=stop.set
        )
        if preview is not None:
            ports[0] = Stream(preview.source, preview.sink, first.controls, name=first.name)
        options = EngineOptions(
            output_size=config.output_size,
            on_source_loss=_source_loss(config.on_source_loss),
            skip_similar=config.skip_similar,
            placeholder_size=config.size or _model_size(config.model),
        )
        engine = Engine(streams=ports, options=options, stop=stop, styles=styles)
        loader = _Loader(config, backend, engine, stop)
        stack.callback(loader.close_backend)
        stack.callback(engine.stop)
        engines.append(engine)
        if on_engine is not None:
            on_engine(engine)
        # The output exists from now on, before the model: hosts can find it and pick it.
        engine.open()
        loader.start()
        running.set()
        for port in ports:
            log.info(
                "running: %s%s -> %s; the output shows the input marked LOADING until the "
                "model is ready",
                f"stream {port.name}: " if port.name else "",
                port.source.uri,
                port.sink.uri,
            )
        line = StatusLine(status_stream)
        stack.callback(line.finish)
        notes = _EngineNotes()
        deadline = None  # --duration counts from the first processed frames
        announced: set[int] = set()
        next_line = next_reply = time.monotonic()
        while not stop.is_set() and loader.error is None:
            now = time.monotonic()
            if deadline is None and config.duration is not None and engine.warm:
                deadline = now + config.duration
            if now >= next_reply:
                surface.send_status()  # --osc-reply: once a second, whatever the line does
                next_reply = now + 1.0
            if now >= next_line:
                for index, lane in enumerate(engine.lanes):
                    if index not in announced and lane.sink.shown_as:
                        _announce(lane.sink, lane.label)
                        announced.add(index)
                if engine.warm:
                    text = format_streams(
                        [(lane.name, lane.stats.snapshot()) for lane in engine.lanes]
                    )
                else:
                    text = _starting(engine, loader, config.model, now)
                text += notes(engine) + _osc_note(osc)
                line.show(text)
                if preview is not None:
                    preview.window.set_status(text)
                next_line = now + config.status_interval
            if deadline is not None and now >= deadline:
                break
            _pump_until(stop, max(0.0, min(next_line, next_reply) - time.monotonic()))
        line.finish()
        engine.stop()
        if loader.error is not None:
            raise loader.error  # the CLI says it in one line: missing weights, no CUDA ...
        if not engine.warm:
            log.info("stopped during start-up")
            return 1 if engine.errors else 0
        for lane in engine.lanes:
            log.info("%s%s", lane.label, format_summary(lane.stats.summary()))
        return 1 if engine.errors else 0
