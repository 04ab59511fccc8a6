"""The show goes on, over real NDI loopback with a tiny CPU model: a sender that stops and
comes back at another resolution is picked up again while the output keeps a fallback
picture, an injected inference error is survived, and SIGTERM while waiting exits cleanly."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faulty import Faulty
from livediffusion.config import ServeConfig
from livediffusion.control.controls import Controls
from livediffusion.run.server import run_server
from livediffusion_bridge import FrameSource, open_sink, open_source
from loopback import Child, free_udp_port

pytestmark = pytest.mark.integration
pytest.importorskip("NDIlib", reason="ndi-python (the NDI runtime) is not installed")


def _still(height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


class _Sender:
    """An NDI sender in this process that can be stopped and started again."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.picture = _still(96, 128, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, picture: np.ndarray) -> None:
        self.picture = picture
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open_sink(f"ndi://{self.name}") as sink:
            while not self._stop.is_set():
                sink.publish(self.picture)
                self._stop.wait(1 / 30)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _frames(source: FrameSource, seconds: float) -> list[np.ndarray]:
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = source.read(timeout=0.2)
        if frame is not None:
            got.append(frame.pixels.copy())
    return got


def test_a_sender_that_leaves_and_returns_at_another_size(
    make_tiny_backend: Callable[..., Any],
) -> None:
    tag = uuid.uuid4().hex[:8]
    feeder = _Sender(f"ld-stage-in-{tag}")
    config = ServeConfig(
        source=f"ndi://{feeder.name}",
        sink=f"ndi://ld-stage-out-{tag}",
        osc_port=free_udp_port(),
        fit="letterbox",
        on_source_loss="black",
        controls=Controls(blend=1.0, feedback=0.0, smoothing=0.0),  # output = input, visibly
        status_interval=0.5,
    )
    backend = Faulty(make_tiny_backend(fit="letterbox"))
    stop = threading.Event()
    codes: list[int] = []
    server = threading.Thread(
        target=lambda: codes.append(run_server(config, backend=backend, stop=stop)), daemon=True
    )
    feeder.start(_still(96, 128, 1))
    server.start()
    try:
        with open_source(f"ndi://ld-stage-out-{tag}") as receiver:
            live = _frames(receiver, 4.0)
            assert live and live[-1].shape == (96, 128, 4)
            assert live[-1][..., :3].mean() > 40  # the input, not black

            backend.fail = 3  # an injected inference error (out of memory) is survived
            assert _frames(receiver, 1.5)

            feeder.stop()  # the host quits: the output keeps going, black
            time.sleep(1.5)
            lost = _frames(receiver, 2.0)
            assert len(lost) >= 10, len(lost)  # the fallback is re-sent at 30 fps
            assert lost[-1][..., :3].max() == 0

            feeder.start(_still(120, 160, 2))  # back, at another resolution
            deadline = time.monotonic() + 20
            back: list[np.ndarray] = []
            while not (back and back[-1].shape == (120, 160, 4) and back[-1].max() > 0):
                assert time.monotonic() < deadline, "the sender was not picked up again"
                back = _frames(receiver, 0.5)
            assert back[-1][..., :3].mean() > 40
    finally:
        feeder.stop()
        stop.set()
        server.join(10)
    assert codes == [0]
    assert backend.fail == 0  # the injected failures happened


def test_sigterm_while_waiting_for_a_sender_exits_cleanly(tiny_folder: Path) -> None:
    child = Child(
        "serve",
        "--source", f"ndi://ld-nobody-{uuid.uuid4().hex[:8]}",
        "--sink", f"ndi://ld-waiting-{uuid.uuid4().hex[:8]}",
        "--weights", str(tiny_folder), "--size", "64", "--device", "cpu",
        "--osc-port", str(free_udp_port()), "--status-interval", "0.2",
    )  # fmt: skip
    try:
        assert child.wait_for("waiting for NDI sender", 90), child.tail()
        code, elapsed = child.stop()
    finally:
        child.kill()
    assert code == 0, child.tail()
    assert elapsed < 2.0
