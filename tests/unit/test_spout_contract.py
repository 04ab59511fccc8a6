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
from livediffusion_bridge.errors import BackendUnavailableError, InvalidURIError, TransportError
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

    # A sender that leaves, and one of the same name and size that comes: the ring went
    # with ReleaseReceiver (2.007.014), so nothing of the departed sender comes back.
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
    big[:] = 7
    again.send(flat(70, 64, 96))
    assert receiver.receiveImage(big, GL_RGBA, False, 0) and receiver.isFrameNew()
    assert (big == 7).all()  # a new ring: its first read writes nothing
    again.send(flat(80, 64, 96))
    assert receiver.receiveImage(big, GL_RGBA, False, 0)
    assert (big[..., 0] == 70).all()  # then one frame late, never 50
    receiver.releaseReceiver()
    del receiver  # its destructor frees the PBOs: the context must still be current
    assert holder.closeOpenGL()
    assert world.problems() == []


def test_the_fake_deletes_the_pbo_ring_on_release_only_under_a_context(raw: ModuleType) -> None:
    """SpoutGL.cpp CleanupGL (from ReleaseReceiver) deletes the PBOs when a context is current
    and nothing without one, so the ring (and its old picture) outlives such a release."""
    world = raw.world
    cam = world.sender("cam")
    holder = raw.SpoutReceiver()
    assert holder.createOpenGL()
    receiver = raw.SpoutReceiver()
    receiver.setReceiverName("cam")
    buffer = np.full((48, 80, 4), 7, np.uint8)

    def read(value: int, receiver: Any = receiver) -> np.ndarray:
        cam.send(flat(value))
        buffer[:] = 7
        assert receiver.receiveImage(buffer, GL_RGBA, False, 0)
        return buffer.copy()

    cam.send(flat(0))  # a sender registers at its first frame
    assert receiver.receiveImage(None, GL_RGBA, False, 0) and receiver.isUpdated()
    read(1)
    assert (read(2)[..., 0] == 1).all()
    receiver.releaseReceiver()  # with the context: the ring is deleted
    assert receiver.receiveImage(None, GL_RGBA, False, 0) and receiver.isUpdated()
    assert (read(3) == 7).all()  # a new ring writes nothing at first
    assert (read(4)[..., 0] == 3).all()
    in_thread(receiver.releaseReceiver, "no context")  # CleanupGL deletes nothing there
    assert "releaseReceiver: OpenGL objects released with no context" in world.violations[-1]
    assert receiver.receiveImage(None, GL_RGBA, False, 0) and receiver.isUpdated()
    assert (read(5)[..., 0] == 4).all()  # the old ring's picture, from before the release
    receiver.releaseReceiver()
    del receiver, read  # the destructor frees the PBOs: the context must still be current
    assert holder.closeOpenGL()


def test_the_fake_says_new_on_every_call_for_a_sender_that_counts_no_frames(
    raw: ModuleType,
) -> None:
    """SpoutFrameCount.cpp GetNewFrame: "Count will still be zero for apps that do not set a
    frame count", and then every call reads; a counting sender's unchanged count does not."""
    world = raw.world
    holder = raw.SpoutReceiver()
    assert holder.createOpenGL()
    for counts in (True, False):
        name = f"counts-{counts}"
        cam = world.sender(name, counts_frames=counts)
        cam.send(flat(1))
        receiver = raw.SpoutReceiver()
        receiver.setReceiverName(name)
        assert receiver.receiveImage(None, GL_RGBA, False, 0) and receiver.isUpdated()
        assert receiver.isFrameCountEnabled()
        buffer = np.zeros((48, 80, 4), np.uint8)
        news = []
        for _ in range(4):  # nothing sent meanwhile
            assert receiver.receiveImage(buffer, GL_RGBA, False, 0)
            news.append(receiver.isFrameNew())
        assert news == ([True, False, False, False] if counts else [True] * 4)
        assert (receiver.getSenderFrame() > 0) is counts
        receiver.releaseReceiver()
        assert receiver.getSenderFrame() == 0  # CleanupFrameCount
        cam.close()
    assert holder.closeOpenGL()


def test_the_fake_fails_a_format_interop_cannot_share_as_receivesenderdata_does(
    raw: ModuleType,
) -> None:
    world = raw.world
    holder = raw.SpoutReceiver()
    assert holder.createOpenGL()
    cam = world.sender("cam")
    cam.dx_format = spoutgl_fake.DXGI_FORMAT_R8_UNORM
    cam.send(flat(1))
    receiver = raw.SpoutReceiver()
    receiver.setReceiverName("cam")
    assert receiver.receiveImage(None, GL_RGBA, False, 0) is False  # the format fails
    assert receiver.receiveImage(None, GL_RGBA, False, 0) is False  # no buffer: false
    buffer = np.full((48, 80, 4), 7, np.uint8)
    for _ in range(3):  # the handle was kept: nothing new, and nothing read
        cam.send(flat(2))
        assert receiver.receiveImage(buffer, GL_RGBA, False, 0) and not receiver.isUpdated()
    assert (buffer == 7).all()
    receiver.releaseReceiver()
    del receiver
    assert holder.closeOpenGL() and world.problems() == []


def test_the_fake_fails_to_start_as_openspout_does() -> None:
    """SpoutGL.cpp: without DirectX 11 every receive and first send fails (OpenSpout); without
    the OpenGL extensions createOpenGL fails, keeping the context it made, and the first
    OpenSpout fails while later ones succeed (the DirectX 11 device stays)."""
    no_dx = spoutgl_fake.make(spoutgl_fake.World(directx=False))
    no_dx.world.sender("cam").send(flat(1))
    holder = no_dx.SpoutReceiver()
    assert holder.createOpenGL()
    receiver, sender = no_dx.SpoutReceiver(), no_dx.SpoutSender()
    sender.setSenderName("out")
    for _ in range(3):
        assert receiver.receiveImage(None, GL_RGBA, False, 0) is False
        assert sender.sendImage(flat(1), 80, 48, GL_RGBA, False, 0) is False
    assert "cam" in receiver.getSenderList() and "out" not in no_dx.world.textures
    assert holder.closeOpenGL() and no_dx.world.problems() == []

    no_ext = spoutgl_fake.make(spoutgl_fake.World(gl_extensions=False))
    no_ext.world.sender("cam").send(flat(1))
    holder = no_ext.SpoutReceiver()
    assert holder.createOpenGL() is False
    assert no_ext.world.open_contexts() != []  # made before the extensions failed
    receiver = no_ext.SpoutReceiver()
    assert receiver.receiveImage(None, GL_RGBA, False, 0) is False
    assert receiver.receiveImage(None, GL_RGBA, False, 0) and receiver.isUpdated()
    receiver.releaseReceiver()
    del receiver
    assert holder.closeOpenGL() and no_ext.world.problems() == []


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
    assert (frame.pixels[..., 0] == 30).all()  # not the red from before the sender left
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


def test_the_fps_cap_also_holds_for_a_sender_that_counts_no_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counting on, but the sender's count stays 0: Spout says "new" on every receive."""
    module = spoutgl_fake.install(monkeypatch)  # frame counting on
    cam = module.world.sender("cam", counts_frames=False)
    cam.send(flat(9))
    with open_source("spout://cam?fps=20") as source:
        started = time.monotonic()
        frames = [f for f in (source.read(0.1) for _ in range(12)) if f is not None]
        elapsed = time.monotonic() - started
    assert frames and len(frames) <= elapsed * 20 + 1
    assert module.world.problems() == []


def test_a_counting_sender_that_sends_nothing_new_delivers_nothing_new(fake: ModuleType) -> None:
    cam = fake.world.sender("cam")
    with open_source("spout://cam?fps=1000") as source:
        assert receive_until(source, 1, lambda i: cam.send(flat(9)))
        assert [source.read(0.01) for _ in range(20)] == [None] * 20


def test_spout_that_cannot_start_is_named_not_reported_as_a_closed_sender(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No DirectX 11: OpenSpout fails on every receive and on a sender's first send."""
    module = spoutgl_fake.install(monkeypatch, directx=False)
    module.world.sender("cam").send(flat(1))
    with caplog.at_level("INFO"), open_source("spout://cam") as source:
        for _ in range(10):
            assert source.read(0.05) is None
        assert source.waiting_for == "Spout sender 'cam'"
    said = [r.getMessage() for r in caplog.records]
    named = [m for m in said if "OpenSpout" in m and "DirectX 11" in m]
    assert len(named) == 1, said  # once, however often it is retried
    assert not [m for m in said if "closed" in m or "lost" in m], said
    with open_sink("spout://out") as sink, pytest.raises(TransportError, match="OpenSpout"):
        sink.publish(flat(2))
    assert "out" not in module.world.textures
    assert module.world.problems() == []


def test_missing_opengl_extensions_are_named_and_leave_no_context_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = spoutgl_fake.install(monkeypatch, gl_extensions=False)
    module.world.sender("cam").send(flat(1))
    with caplog.at_level("INFO"), open_source("spout://cam") as source:
        for _ in range(10):
            assert source.read(0.05) is None
    said = [r.getMessage() for r in caplog.records if "OpenGL extensions" in r.getMessage()]
    assert len(said) == 1 and "createOpenGL" in said[0], said
    with open_sink("spout://out") as sink, pytest.raises(TransportError, match="extensions"):
        sink.publish(flat(2))
    assert module.world.problems() == []  # each context made before the failure was closed


def test_a_sender_spout_cannot_read_is_named_not_reported_as_closed(
    fake: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender that switches to a texture format GL/DX interop cannot take (Spout.cpp
    ReceiveSenderData) stays listed while every read fails: that is no closed sender."""
    cam = fake.world.sender("cam")
    with caplog.at_level("INFO"), open_source("spout://cam") as source:
        assert receive_until(source, 2, lambda i: cam.send(flat(5)))
        cam.dx_format = spoutgl_fake.DXGI_FORMAT_R8_UNORM
        for _ in range(10):
            cam.send(flat(6))
            assert source.read(0.05) is None
        assert source.waiting_for == "Spout sender 'cam'"
        cam.dx_format = spoutgl_fake.DXGI_FORMAT_B8G8R8A8_UNORM
        frames = receive_until(source, 2, lambda i: cam.send(flat(7)))
        assert [int(f.pixels[0, 0, 0]) for f in frames] == [7, 7]
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "although it is there" in m], said
    assert not [m for m in said if "closed" in m], said


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
