"""The server end to end over real NDI and OSC on loopback, with a tiny model on the CPU."""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from livediffusion.config import ServeConfig
from livediffusion.control.controls import Controls
from livediffusion.run.server import run_server
from livediffusion_bridge import FrameSink, FrameSource, open_sink, open_source
from loopback import Child, free_udp_port
from ndi_foreign import ForeignNdi, foreign_ndi_program

pytestmark = pytest.mark.integration
pytest.importorskip("NDIlib", reason="ndi-python (the NDI runtime) is not installed")


@pytest.fixture(scope="module")
def foreign() -> Iterator[ForeignNdi]:
    """Another NDI program on the machine, as on a VJ's laptop: names must still resolve."""
    with foreign_ndi_program() as running:
        yield running


def _tag() -> str:
    """Unique per test: NDI names are machine-wide, and other test runs may be alive."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., :3].astype(np.int16) - b[..., :3].astype(np.int16)).mean())


class _Feeder:
    """Sends a picture stream into NDI from a thread and remembers what it sent."""

    def __init__(self, sink: FrameSink) -> None:
        self.sink = sink
        self.sent: deque[np.ndarray] = deque(maxlen=60)
        self.picture: np.ndarray | None = None  # None: the moving pattern
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with open_source("test://pattern?size=128x96&fps=30") as pattern:
            while not self._stop.is_set():
                frame = pattern.read(timeout=0.2)
                if frame is None:
                    continue
                pixels = frame.pixels if self.picture is None else self.picture
                self.sink.publish(pixels)
                self.sent.append(pixels.copy())

    def __enter__(self) -> _Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _receive(source: FrameSource, count: int, timeout: float = 30.0) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = source.read(timeout=0.5)
        if frame is not None:
            frames.append(frame.pixels.copy())
    assert len(frames) == count, f"received {len(frames)} of {count} frames"
    return frames


@pytest.fixture
def server(make_tiny_backend: Callable[..., Any]) -> Iterator[tuple[str, int, threading.Event]]:
    tag = _tag()
    port = free_udp_port()
    config = ServeConfig(
        source=f"ndi://ld-in-{tag}",
        sink=f"ndi://ld-out-{tag}",
        osc_port=port,
        fit="letterbox",  # keeps the 4:3 picture's geometry, so bypass can be compared 1:1
        # The tiny random decoder paints nearly black whatever it is given, so half the input
        # is blended in to make motion visible; the model's half still moves every pixel.
        controls=Controls(blend=0.5, feedback=0.0, smoothing=0.0, prompt_glide=0.0, seed_glide=0.0),
        status_interval=0.5,
    )
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            run_server(config, backend=make_tiny_backend(fit="letterbox"), stop=stop)
        ),
        daemon=True,
    )
    thread.start()
    yield tag, port, stop
    stop.set()
    thread.join(10)
    assert codes == [0]


@pytest.mark.usefixtures("foreign")
def test_ndi_in_processed_ndi_out_and_osc_changes_it(
    server: tuple[str, int, threading.Event],
) -> None:
    tag, port, _ = server
    osc = SimpleUDPClient("127.0.0.1", port)
    with (
        open_sink(f"ndi://ld-in-{tag}") as sender,
        _Feeder(sender) as feeder,
        open_source(f"ndi://ld-out-{tag}") as receiver,
    ):
        # A moving pattern comes back moving, at the input's size, and processed.
        frames = _receive(receiver, 12)
        assert all(f.shape == (96, 128, 4) for f in frames)
        assert max(_distance(a, b) for a, b in itertools.pairwise(frames)) > 1.0
        processed = [min(_distance(f, s) for s in list(feeder.sent)) for f in frames[-5:]]
        assert min(processed) > 30.0, processed

        # The same measure under /bypass is small: the comparison above means something.
        osc.send_message("/bypass", 1)
        time.sleep(0.5)
        frames = _receive(receiver, 8)
        passed = [min(_distance(f, s) for s in list(feeder.sent)) for f in frames[-4:]]
        assert max(passed) < 20.0, passed  # NDI coding twice + 2x down/up scaling
        osc.send_message("/bypass", 0)

        # A still picture, so only the controls change the output.
        rng = np.random.default_rng(0)
        still = rng.integers(0, 256, (96, 128, 4), dtype=np.uint8)
        feeder.picture = still

        def settled() -> np.ndarray:
            time.sleep(0.5)
            return _receive(receiver, 4)[-1]

        base = settled()
        noise = _distance(base, settled())  # what NDI's lossy coding alone changes
        osc.send_message("/prompt", "a completely different prompt")
        after_prompt = settled()
        assert _distance(after_prompt, base) > noise + 0.5
        osc.send_message("/strength", 0.2)
        after_strength = settled()
        assert _distance(after_strength, after_prompt) > noise + 0.5


@pytest.mark.usefixtures("foreign")
def test_cli_serves_over_ndi_and_stops_on_sigterm(tiny_folder: Path) -> None:
    tag = _tag()
    child = Child(
        "serve",
        "--source", "test://pattern?size=128x96&fps=30",
        "--sink", f"ndi://ld-cli-{tag}",
        "--weights", str(tiny_folder),
        "--size", "64", "--device", "cpu",
        "--osc-port", str(free_udp_port()),
        "--status-interval", "0.2",
    )  # fmt: skip
    lines = child.lines
    try:
        listening = child.wait_for(r"output listening on (\S+:\d+)", 90)
        assert listening, child.tail(30)
        # Direct connection to the port the server logged: no discovery needed.
        with open_source(f"ndi://{listening.group(1)}") as receiver:
            frames = _receive(receiver, 3)
        assert all(f.shape == (96, 128, 4) for f in frames)
        status = child.wait_for(r"in +[\d.]+ fps \| out +[\d.]+ fps \| latency", 90)
        assert status, child.tail(30)  # the model's frames, after the placeholders
        code, elapsed = child.stop()
    finally:
        child.kill()
    assert code == 0, child.tail(30)
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert any("SIGTERM" in x for x in lines)
    assert any("frames out" in x for x in lines)  # the summary line


def test_sigterm_while_the_model_loads_stops_at_once() -> None:
    # The full-size random model takes many seconds to build on a CPU: a performer who
    # changes their mind must not wait for it.
    child = Child(
        "serve", "--source", "test://pattern", "--sink", "memory://out",
        "--weights", "random", "--device", "cpu", "--osc-port", str(free_udp_port()),
    )  # fmt: skip
    lines = child.lines
    child.wait_for("loading sdxs-512-0.9", 180)
    time.sleep(1.0)  # inside the build now
    code, elapsed = child.stop()
    assert elapsed < 2.0, child.tail()
    assert code == 0, child.tail()
    assert any("stopped during start-up" in x for x in lines)


@pytest.mark.usefixtures("foreign")
def test_the_output_is_there_before_the_model_and_its_name_is_logged(
    make_tiny_backend: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`./run serve` opened its NDI source only after the first processed frame (47-72 s on a
    CPU): a host's source list stayed empty meanwhile, and the log never said the name to
    pick. Here the model load is held back on purpose: the source is found by name over NDI
    and delivers the input, marked LOADING, before the model exists; the log names it."""
    import io

    import livediffusion.run.server as server_module
    from livediffusion_bridge import memory

    release = threading.Event()
    loading = threading.Event()

    def slow_build(config: ServeConfig) -> Any:
        loading.set()
        assert release.wait(120), "the test never let the model load"
        return make_tiny_backend()

    monkeypatch.setattr(server_module, "build_backend", slow_build)
    memory.reset()
    tag = _tag()
    picture = np.empty((96, 128, 4), dtype=np.uint8)  # smooth: NDI's coding keeps it close
    picture[..., 0] = np.linspace(80, 220, 96, dtype=np.uint8)[:, None]
    picture[..., 1] = np.linspace(90, 200, 128, dtype=np.uint8)[None, :]
    picture[..., 2] = 150
    picture[..., 3] = 255
    config = ServeConfig(
        source="memory://early-in",
        sink=f"ndi://ld-early-{tag}",
        osc_port=free_udp_port(),
        status_interval=0.2,
    )
    stop = threading.Event()
    stream = io.StringIO()
    codes: list[int] = []
    serving = threading.Thread(
        target=lambda: codes.append(run_server(config, stop=stop, status_stream=stream)),
        daemon=True,
    )

    def feed() -> None:
        while not stop.is_set():
            memory.channel("early-in").push(picture)
            time.sleep(1 / 30)

    feeder = threading.Thread(target=feed, daemon=True)
    caplog.set_level(logging.INFO, logger="livediffusion")
    try:
        serving.start()
        feeder.start()
        assert loading.wait(30)
        with open_source(f"ndi://ld-early-{tag}") as receiver:  # by name: NDI discovery
            early = _receive(receiver, 3)
            name = receiver.connected_to
            assert not release.is_set() and "STARTING: loading" in stream.getvalue()
            assert name is not None and name.endswith(f"(ld-early-{tag})")
            deadline = time.monotonic() + 5  # said at the next status tick
            while not (announced := [r.getMessage() for r in caplog.records if "ready:" in r.msg]):
                assert time.monotonic() < deadline, "the name was never logged"
                time.sleep(0.05)
            assert len(announced) == 1
            assert re.fullmatch(
                rf"output ready: pick the NDI source {re.escape(repr(name))} in your host "
                r"\(output listening on 127\.0\.0\.1:\d+ for direct connections\)",
                announced[0],
            ), announced
            frame = early[-1]
            assert frame.shape == picture.shape
            assert _distance(frame[:48], picture[:48]) < 12  # passed through (NDI is lossy)
            corner = frame[-11:, :45, :3]  # the LOADING box (11x45 here): dark, light letters
            assert (corner < 70).mean() > 0.5 and (corner > 170).mean() > 0.1
            assert (picture[-11:, :45, :3] < 70).mean() == 0  # the input has no such corner

            release.set()  # now the model loads, warms up and takes over
            deadline = time.monotonic() + 90
            while "| torch-cpu float32" not in stream.getvalue():
                assert time.monotonic() < deadline, stream.getvalue()[-2000:]
                time.sleep(0.2)
            processed = _receive(receiver, 5)[-1]
            assert _distance(processed, picture) > 30  # the model's picture, not the input
    finally:
        stop.set()
        release.set()
        serving.join(15)
        memory.reset()
    assert codes == [0]
