"""The Spout transport against the SpoutGL contract fake (``tests/spoutgl_fake.py``).

First the fake itself: it must refuse what the real library refuses, or passing tests here
would prove nothing. Then the transport: OpenGL context on the calling thread, no unwritten or
stale frame, never our own output, waiting for a sender, release on the right thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import pytest

import spoutgl_fake
from livediffusion_bridge import (
    ClosedError,
    Frame,
    SourceNotFoundError,
    _spout,
    open_sink,
    open_source,
)
from livediffusion_bridge.errors import BackendUnavailableError, InvalidURIError
from spoutgl_fake import GL_RGBA

T = TypeVar("T")


def in_thread(body: Callable[[], T], name: str = "worker") -> T:
    """Run ``body`` on a new thread (which then ends) and return what it returned."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(body())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f"{name} did not finish"
    if errors:
        raise errors[0]
    return result[0]


def flat(value: int, height: int = 48, width: int = 80) -> np.ndarray:
    """A one-colour opaque picture: its value tells which frame it was."""
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[..., :3] = value
    pixels[..., 3] = 255
    return pixels


def oriented(height: int = 48, width: int = 80) -> np.ndarray:
    """A non-square picture whose flips and width/height mix-ups show."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 4), np.uint8)
    pixels[..., 0] = x * 3 % 256
    pixels[..., 1] = y * 5 % 256
    pixels[..., 2] = 40
    pixels[:8, :8, :3] = 255
    pixels[..., 3] = 255
    return pixels


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The transport on the fake; any misuse or unclosed context fails the test."""
    module = spoutgl_fake.install(monkeypatch)
    yield module
    assert module.world.problems() == []


@pytest.fixture
def raw() -> ModuleType:
    """The fake alone, for tests that misuse it on purpose."""
    return spoutgl_fake.make()


def receive_until(
    source: Any, count: int, feed: Callable[[int], None], reads: int = 200
) -> list[Frame]:
    """Alternate one external frame and one read until ``count`` frames came through."""
    frames: list[Frame] = []
    for i in range(reads):
        feed(i)
        frame = source.read(0.01)
        if frame is not None:
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


# -- the fake keeps the real library's rules ------------------------------------------------


def test_the_fake_refuses_receive_and_send_without_a_context_on_the_calling_thread(
    raw: ModuleType,
) -> None:
    world = raw.world
    world.sender("cam").send(flat(10))
    receiver, sender = raw.SpoutReceiver(), raw.SpoutSender()
    sender.setSenderName("out")
    assert receiver.receiveImage(None, GL_RGBA, False, 0) is False
    assert sender.sendImage(flat(1), 80, 48, GL_RGBA, False, 0) is False
    assert len(world.violations) == 2 and all("no OpenGL context" in v for v in world.violations)

    # A context made on one thread does not serve another: the previous version's design.
    assert receiver.createOpenGL()
    assert in_thread(lambda: receiver.receiveImage(None, GL_RGBA, False, 0), "capture") is False
    assert "'capture'" in world.violations[-1]
    assert in_thread(receiver.closeOpenGL, "other") is False  # not the thread that made it
    assert "wglDeleteContext" in world.violations[-1]
    assert world.open_contexts() != []
    assert receiver.closeOpenGL() and world.open_contexts() == []
    assert receiver.receiveImage(None, GL_RGBA, False, 0) is False  # closed: no context again


def test_the_fake_reports_a_context_its_thread_never_closed(raw: ModuleType) -> None:
    holder = raw.SpoutReceiver()
    in_thread(holder.createOpenGL, "leaky")
    (problem,) = raw.world.problems()
    assert "never closed" in problem and "'leaky'" in problem and "ended" in problem


def test_the_fake_receives_nothing_on_connect_and_one_frame_late(raw: ModuleType) -> None:
    world = raw.world
    cam = world.sender("cam")
    cam.send(flat(10))
    holder = raw.SpoutReceiver()  # owns the context, so it can outlive the receiver
    assert holder.createOpenGL()
    receiver = raw.SpoutReceiver()
    receiver.setReceiverName("cam")
    assert receiver.receiveImage(None, GL_RGBA, False, 0)  # connects; reads nothing
    buffer = np.full((48, 80, 4), 7, np.uint8)
    assert receiver.receiveImage(buffer, GL_RGBA, False, 0)  # the update flag is still set
    assert (buffer == 7).all()
    assert receiver.isUpdated() and not receiver.isUpdated()
    assert (receiver.getSenderWidth(), receiver.getSenderHeight()) == (80, 48)
    assert receiver.getSenderName() == 80  # PySpoutGL.cpp binds it to GetSenderWidth
    assert receiver.receiveImage(buffer, GL_RGBA, False, 0)
    assert receiver.isFrameNew() and (buffer == 7).all()  # "new", but the PBO was empty
    assert receiver.receiveImage(buffer, GL_RGBA, False, 0)
    assert not receiver.isFrameNew()  # nothing sent since
    cam.send(flat(20))
    assert receiver.receiveImage(buffer, GL_RGBA, False, 0) and receiver.isFrameNew()
    assert (buffer[..., 0] == 10).all()  # one frame late

    # A new size: reported once without reading; the old buffer is then too small.
    cam.send(flat(30, 64, 96))
    assert receiver.receiveImage(buffer, GL_RGBA, False, 0) and receiver.isUpdated()
    with pytest.raises(BufferError):
        receiver.receiveImage(buffer, GL_RGBA, False, 0)

    # A sender that leaves, and one of the same name and size that comes: the ring still
    # holds the old sender's picture.
    big = np.full((64, 96, 4), 7, np.uint8)
    cam.send(flat(40, 64, 96))
    receiver.receiveImage(big, GL_RGBA, False, 0)
    cam.send(flat(50, 64, 96))
    receiver.receiveImage(big, GL_RGBA, False, 0)
    cam.close()
    assert not receiver.receiveImage(big, GL_RGBA, False, 0)  # gone: released
    assert receiver.isFrameNew()  # a stale flag: ReleaseReceiver leaves it
    again = world.sender("cam")
    again.send(flat(60, 64, 96))
    assert receiver.receiveImage(big, GL_RGBA, False, 0) and receiver.isUpdated()
    again.send(flat(70, 64, 96))
    assert receiver.receiveImage(big, GL_RGBA, False, 0) and receiver.isFrameNew()
    assert (big[..., 0] == 50).all()  # the departed sender's last picture
    receiver.releaseReceiver()
    del receiver  # its destructor frees the PBOs: the context must still be current
    assert holder.closeOpenGL()
    assert world.problems() == []


def test_the_fake_keeps_the_bindings_width_height_labels(raw: ModuleType) -> None:
    world = raw.world
    sender = raw.SpoutSender()
    assert sender.createOpenGL()
    sender.setSenderName("out")
    picture = oriented()
    assert sender.sendImage(picture, 80, 48, GL_RGBA, False, 0)  # width first
    assert np.array_equal(world.latest("out"), picture)
    assert sender.sendImage(picture, 48, 80, GL_RGBA, False, 0)  # as the labels say: garbled
    garbled = world.latest("out")
    assert garbled is not None and garbled.shape == (80, 48, 4)
    with pytest.raises(BufferError):
        sender.sendImage(picture, 100, 48, GL_RGBA, False, 0)
    sender.releaseSender()
    assert sender.closeOpenGL()


def test_the_fake_makes_the_newest_sender_active_and_numbers_taken_names(
    raw: ModuleType,
) -> None:
    world = raw.world
    a, b, b2 = world.sender("A"), world.sender("B"), world.sender("B")
    a.send(flat(1))
    assert world.active == "A"
    b.send(flat(2))
    b2.send(flat(3))
    assert b2.texture is not None and b2.texture.name == "B_1"
    assert world.active == "B_1"
    b2.close()
    assert world.active == "A"  # the first name left (a std::set)
    assert raw.SpoutReceiver().getSenderList() == ["A", "B"]


# -- the transport ---------------------------------------------------------------------------


def test_nothing_spout_is_made_where_the_source_and_sink_are_built(fake: ModuleType) -> None:
    world = fake.world
    cam = world.sender("cam")
    cam.send(oriented())
    source, sink = open_source("spout://cam"), open_sink("spout://out")
    assert world.calls == [] and world.open_contexts() == []

    def capture() -> list[Frame]:
        return receive_until(source, 1, lambda i: cam.send(oriented()))

    (frame,) = in_thread(capture, "capture")
    assert np.array_equal(frame.pixels, oriented())
    in_thread(lambda: sink.publish(frame.pixels), "publish")
    # Both threads ended: each released what it made, and its context, on itself.
    assert world.threads_of("receiveImage", "releaseReceiver") == {"capture"}
    assert world.threads_of("sendImage", "releaseSender") == {"publish"}
    assert world.threads_of("createOpenGL") == world.threads_of("closeOpenGL")
    assert world.threads_of("closeOpenGL") == {"capture", "publish"}
    assert world.open_contexts() == []
    source.close()
    sink.close()
    assert "out" not in world.textures


def test_no_unwritten_frame_after_connect_or_resize(fake: ModuleType) -> None:
    cam = fake.world.sender("cam")
    sent: dict[int, np.ndarray] = {}

    def feed(i: int) -> None:
        sent[i] = flat(i % 250 + 1, *((48, 80) if i < 12 else (64, 96)))
        cam.send(sent[i])

    with open_source("spout://cam") as source:
        frames = receive_until(source, 30, feed)
    assert len(frames) == 30
    for frame in frames:  # a sentinel-marked buffer Spout never wrote would fail here
        assert any(np.array_equal(frame.pixels, picture) for picture in sent.values())
    assert {f.pixels.shape for f in frames} == {(48, 80, 4), (64, 96, 4)}


def test_a_sender_that_returns_is_not_shown_with_its_old_picture(fake: ModuleType) -> None:
    world = fake.world
    red = world.sender("cam")
    with open_source("spout://cam") as source:
        assert receive_until(source, 3, lambda i: red.send(flat(200)))
        red.close()
        assert source.read(0.05) is None
        assert source.waiting_for == "Spout sender 'cam'"
        blue = world.sender("cam")
        (frame,) = receive_until(source, 1, lambda i: blue.send(flat(30)))
    assert (frame.pixels[..., 0] == 30).all()  # not the red left in Spout's PBO ring
    assert source.reconnects == 1


def test_a_vanished_sender_is_waited_for_and_taken_back_at_another_size(
    fake: ModuleType,
) -> None:
    world = fake.world
    cam = world.sender("cam")
    with open_source("spout://cam") as source:
        assert receive_until(source, 2, lambda i: cam.send(flat(5)))
        cam.close()
        assert source.read(0.05) is None
        assert source.waiting_for == "Spout sender 'cam'"
        assert source.read(0.05) is None  # still away
        cam = world.sender("cam")
        frames = receive_until(source, 2, lambda i: cam.send(flat(9, 30, 50)))
    assert [f.pixels.shape for f in frames] == [(30, 50, 4)] * 2
    assert source.reconnects == 1


def test_the_any_sender_source_never_reads_our_own_output(fake: ModuleType) -> None:
    world = fake.world
    source = open_source("spout://")
    assert source.waiting_for == "any Spout sender"
    with open_sink("spout://") as ours, open_sink("spout://loop") as loop:
        ours.publish(flat(1))
        loop.publish(flat(2))
        assert world.active == "loop"  # Spout made our newest sender the active one
        assert source.read(0.1) is None  # only our own senders: keeps waiting
        assert source.waiting_for == "any Spout sender"
        cam = world.sender("cam")
        cam.send(flat(3))
        assert world.active == "cam"
        loop.publish(flat(2, 30, 50))  # a new size: registered again, and active again
        assert world.active == "loop"
        frames = receive_until(source, 2, lambda i: cam.send(flat(3)))
        assert source.sender == "cam"
        assert all((f.pixels[..., 0] == 3).all() for f in frames)
    source.close()


def test_a_taken_sink_name_is_numbered_and_still_counts_as_ours(fake: ModuleType) -> None:
    world = fake.world
    other = world.sender("livediffusion")  # another livediffusion, or any app
    other.send(flat(1))
    with open_sink("spout://") as sink:
        assert sink.shown_as is None  # no sender before the first frame
        sink.publish(flat(2))
        assert sink.sender_name == "livediffusion_1"
        # what the server logs for the host to pick: the name Spout registered, not ours
        assert sink.shown_as == "Spout sender 'livediffusion_1'"
        assert "livediffusion_1" in _spout.own_senders()
        with open_source("spout://") as source:
            assert source.read(0.1) is None  # neither is taken
    other.close()


def test_flip_and_its_old_name_invert_turn_the_picture_over(fake: ModuleType) -> None:
    cam = fake.world.sender("cam")
    for uri in ("spout://cam?flip=1", "spout://cam?invert=true"):
        with open_source(uri) as source:
            (frame,) = receive_until(source, 1, lambda i: cam.send(oriented()))
        assert np.array_equal(frame.pixels, oriented()[::-1])
    with open_sink("spout://out?flip=1") as sink:
        sink.publish(oriented())
        assert np.array_equal(fake.world.latest("out"), oriented()[::-1])


def test_without_frame_counting_delivery_is_capped_at_fps(monkeypatch: pytest.MonkeyPatch) -> None:
    module = spoutgl_fake.install(monkeypatch, frame_counting=False)
    cam = module.world.sender("cam")
    cam.send(flat(9))
    with open_source("spout://cam?fps=20") as source:
        started = time.monotonic()
        frames = [f for f in (source.read(0.1) for _ in range(12)) if f is not None]
        elapsed = time.monotonic() - started
    assert frames and len(frames) <= elapsed * 20 + 1
    assert module.world.problems() == []


def test_wait_fails_at_open_naming_what_is_there(fake: ModuleType) -> None:
    resolume = fake.world.sender("Resolume")
    resolume.send(flat(1))
    with pytest.raises(SourceNotFoundError, match=r"Spout sender 'TD'.*visible: Resolume"):
        open_source("spout://TD?wait=0.2")
    with open_sink("spout://") as ours:
        ours.publish(flat(1))
        resolume.close()
        with pytest.raises(SourceNotFoundError, match=r"our own outputs never count.*livedif"):
            open_source("spout://?wait=0.2")
        with open_source("spout://?wait=0.2&own=1") as loop:  # loopback: ours counts
            loop.read(0.05)
            assert loop.sender == "livediffusion"


def test_options_are_checked(fake: ModuleType) -> None:
    with pytest.raises(InvalidURIError, match="fsp"):
        open_source("spout://cam?fsp=30")
    with pytest.raises(InvalidURIError, match="fps"):
        open_sink("spout://out?fps=30")
    assert _spout.pick_sender(["a", "b"], "b", "") == "b"
    assert _spout.pick_sender(["a", "b"], "b", "", own={"b"}) == "a"
    assert _spout.pick_sender(["b"], "b", "", own={"b"}) is None
    assert _spout.pick_sender(["b"], "b", "b", own={"b"}) == "b"  # named: taken as asked
    assert _spout.pick_sender([], None, "x") is None


def test_listing_needs_no_context_and_names_every_sender(fake: ModuleType) -> None:
    fake.world.sender("TD Out").send(flat(1))
    with open_sink("spout://") as ours:
        ours.publish(flat(2))
        calls = len(fake.world.calls)
        listed = in_thread(lambda: _spout.list_sources(timeout=0.1), "lister")
        assert fake.world.calls[calls:] == []  # shared memory only: no context, no receive
    assert [(s.uri, s.name, s.kind) for s in listed] == [
        ("spout://TD Out", "TD Out", "spout"),
        ("spout://livediffusion", "livediffusion", "spout"),
    ]


def test_the_real_loader_stays_strict_off_windows() -> None:
    with pytest.raises(BackendUnavailableError, match="Windows"):
        _spout._load()


# -- close() from any thread -----------------------------------------------------------------


def _reader(source: Any, cam: Any, started: threading.Event) -> threading.Thread:
    def run() -> None:
        while True:
            cam.send(flat(4))
            try:
                frame = source.read(0.01)
            except ClosedError:
                return
            if frame is not None:
                started.set()

    thread = threading.Thread(target=run, name="capture", daemon=True)
    thread.start()
    return thread


def test_close_from_another_thread_while_reading_releases_on_the_reader(
    fake: ModuleType,
) -> None:
    world = fake.world
    source = open_source("spout://cam")
    started = threading.Event()
    reader = _reader(source, world.sender("cam"), started)
    assert started.wait(5)
    source.close()  # main thread: must not touch the reader's receiver or context
    reader.join(5)
    assert not reader.is_alive()
    assert world.threads_of("releaseReceiver", "closeOpenGL") == {"capture"}
    assert world.open_contexts() == []


def test_close_after_the_reading_thread_ended(fake: ModuleType) -> None:
    world = fake.world
    cam = world.sender("cam")
    source = open_source("spout://cam")
    assert in_thread(lambda: receive_until(source, 1, lambda i: cam.send(flat(4))), "capture")
    assert world.open_contexts() == []  # released as the thread ended
    source.close()
    assert world.threads_of("releaseReceiver", "closeOpenGL") == {"capture"}


def test_a_sink_closed_from_another_thread_stops_on_its_publisher(fake: ModuleType) -> None:
    world = fake.world
    sink = open_sink("spout://out")
    sent = threading.Event()

    def publish() -> None:
        while True:
            try:
                sink.publish(flat(8))
            except ClosedError:
                return
            sent.set()
            time.sleep(0.005)

    publisher = threading.Thread(target=publish, name="publish", daemon=True)
    publisher.start()
    assert sent.wait(5) and "out" in world.textures
    sink.close()
    publisher.join(5)
    assert not publisher.is_alive()
    assert "out" not in world.textures
    assert world.threads_of("releaseSender", "closeOpenGL") == {"publish"}


def test_a_new_reading_thread_connects_again(fake: ModuleType) -> None:
    world = fake.world
    cam = world.sender("cam")
    source = open_source("spout://cam")
    for name in ("capture-1", "capture-2"):
        frames = in_thread(lambda: receive_until(source, 1, lambda i: cam.send(flat(6))), name)
        assert frames
    source.close()
    assert world.threads_of("createOpenGL") == {"capture-1", "capture-2"}
