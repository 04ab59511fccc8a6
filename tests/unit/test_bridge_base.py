"""The shared source and sink machinery, driven by a scripted transport (no library)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from livediffusion_bridge import ClosedError, Frame, TransportError
from livediffusion_bridge._base import LiveSink, LiveSource, SourceLost


class Scripted(LiveSource):
    """A sender that is away, then present, then leaves: what NDI/Syphon/Spout do."""

    retry_interval = 0.01

    def __init__(self) -> None:
        super().__init__("scripted://x", describe="scripted sender 'x'")
        self.present = False
        self.leave_after = 1_000_000
        self.calls: list[tuple[str, str]] = []
        self.size = (4, 6)

    def _record(self, what: str) -> None:
        self.calls.append((what, threading.current_thread().name))

    def _connect(self) -> bool:
        self._record("connect")
        if not self.present:
            raise TransportError("not there")
        return True

    def _grab(self, deadline: float) -> Frame | None:
        self._record("grab")
        if self.leave_after <= 0:
            self.present = False
            raise SourceLost("sender quit")
        self.leave_after -= 1
        return Frame(np.zeros((*self.size, 4), np.uint8), time.monotonic())

    def _disconnect(self) -> None:
        self._record("disconnect")


def test_waits_then_connects_on_the_reading_thread() -> None:
    source = Scripted()
    assert source.waiting_for == "scripted sender 'x'"
    assert source.read(timeout=0.05) is None
    source.present = True
    frames: list[Frame | None] = []
    reader = threading.Thread(target=lambda: frames.append(source.read(1.0)), name="capture")
    reader.start()
    reader.join()
    assert frames[0] is not None and source.waiting_for is None
    assert ("connect", "capture") in source.calls
    assert ("grab", "capture") in source.calls
    source.close()
    source.close()
    with pytest.raises(ClosedError):
        source.read(0.01)


def test_a_lost_sender_is_waited_for_and_comes_back_at_another_size() -> None:
    source = Scripted()
    source.present = True
    source.leave_after = 2
    assert source.read(0.5) is not None and source.read(0.5) is not None
    assert source.read(0.05) is None  # the sender quit
    assert source.waiting_for == "scripted sender 'x'"
    assert [c for c, _ in source.calls].count("disconnect") == 1
    source.present, source.leave_after, source.size = True, 5, (8, 10)
    frame = source.read(1.0)
    assert frame is not None and frame.pixels.shape == (8, 10, 4)
    assert source.reconnects == 1
    source.close()


def test_a_connection_problem_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    source = Scripted()
    source.read(0.2)  # many attempts, one problem
    assert sum("not there" in r.getMessage() for r in caplog.records) == 1
    source.close()


def test_close_while_connected_releases_once() -> None:
    source = Scripted()
    source.present = True
    source.read(0.5)
    source.close()
    source.close()
    assert [c for c, _ in source.calls].count("disconnect") == 1


class Recording(LiveSink):
    def __init__(self) -> None:
        super().__init__("recording://x")
        self.events: list[tuple[str, object, str]] = []

    def _create(self, width: int, height: int) -> None:
        self.events.append(("create", (width, height), threading.current_thread().name))

    def _send(self, pixels: np.ndarray) -> None:
        self.events.append(("send", pixels.shape, threading.current_thread().name))

    def _destroy(self) -> None:
        self.events.append(("destroy", None, threading.current_thread().name))


def test_the_sink_creates_on_the_publishing_thread_and_again_on_a_new_size() -> None:
    sink = Recording()
    assert sink.events == []  # nothing made before the first frame

    def publish() -> None:
        sink.publish(np.zeros((4, 6, 4), np.uint8))
        sink.publish(np.zeros((4, 6, 4), np.uint8))
        sink.publish(np.zeros((8, 6, 4), np.uint8))

    thread = threading.Thread(target=publish, name="publish")
    thread.start()
    thread.join()
    assert [(kind, size) for kind, size, _ in sink.events] == [
        ("create", (6, 4)),
        ("send", (4, 6, 4)),
        ("send", (4, 6, 4)),
        ("destroy", None),
        ("create", (6, 8)),
        ("send", (8, 6, 4)),
    ]
    assert {name for _, _, name in sink.events} == {"publish"}
    with pytest.raises(ValueError, match="RGBA"):
        sink.publish(np.zeros((4, 6, 3), np.uint8))
    sink.close()
    sink.close()
    assert sink.events[-1][0] == "destroy"
    with pytest.raises(ClosedError):
        sink.publish(np.zeros((4, 6, 4), np.uint8))
