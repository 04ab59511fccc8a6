"""The server end to end over real NDI and OSC on loopback, with a tiny model on the CPU."""

from __future__ import annotations

import itertools
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
from livediffusion.controls import Controls
from livediffusion.server import run_server
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
        assert any(re.search(r"in +[\d.]+ fps \| out +[\d.]+ fps \| latency", x) for x in lines)
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
