"""The Syphon transport through syphon-python 0.2.0's real Python, over a stubbed native layer.

``syphon_mac`` (tests/conftest.py) imports the library from its released wheel and stubs
only PyObjC, Metal and the Syphon framework's classes (tests/syphon_native.py, which cites
the Objective-C source of each behaviour). The main thread pumps the run loop here where
discovery needs it, as ``livediffusion serve``'s main thread does; the source is read and the
sink published on threads named like the engine's, whose autorelease pools the stub watches.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import syphon_native
from livediffusion_bridge import (
    BackendUnavailableError,
    Frame,
    InvalidURIError,
    SourceNotFoundError,
    _syphon,
    open_sink,
    open_source,
)
from livediffusion_bridge._syphon import SyphonSink, SyphonSource
from syphon_native import ANNOUNCE, BGRA8, ContractError, ExternalClient, ExternalServer, World

_PRODUCTION_LOAD = _syphon._load  # before any test lets it load on Linux


def quadrants(height: int = 48, width: int = 80) -> np.ndarray:
    """Red, green / blue, white quadrants: any flip, mirror or red/blue swap shows."""
    pixels = np.zeros((height, width, 4), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w, :3] = (255, 0, 0)
    pixels[:h, w:, :3] = (0, 255, 0)
    pixels[h:, :w, :3] = (0, 0, 255)
    pixels[h:, w:, :3] = (255, 255, 255)
    pixels[..., 3] = 255
    pixels[0, 0, :3] = (10, 20, 30)  # one asymmetric pixel in the corner
    return pixels


@pytest.fixture
def world(syphon_mac: Callable[..., World], monkeypatch: pytest.MonkeyPatch) -> World:
    world = syphon_mac()
    monkeypatch.setattr(SyphonSource, "retry_interval", 0.02)
    return world


def described(world: World, uuid: str) -> Any:
    """The directory's entry for ``uuid`` as syphon-python wraps it."""
    return sys.modules["syphon"].SyphonServerDescription.from_native(world.listed()[uuid])


def pump_until(
    condition: Callable[[], object], *, feed: Callable[[], None] | None = None, timeout: float = 5.0
) -> None:
    """Pump the main run loop (and let the external app send a frame) until ``condition``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if feed is not None:
            feed()
        _syphon.pump(0.01)


def pump_for(seconds: float, *, feed: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if feed is not None:
            feed()
        _syphon.pump(0.01)


class Reader(threading.Thread):
    """Reads a source on a thread named like the engine's capture thread."""

    def __init__(self, source: Any) -> None:
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.frames: list[Frame] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                frame = self.source.read(0.02)
                if frame is not None:
                    self.frames.append(frame)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self._halt.set()
        self.join(5)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def reading(uri: str) -> Iterator[Reader]:
    source = open_source(uri)
    reader = Reader(source)
    reader.start()
    try:
        yield reader
    finally:
        reader.finish()
        source.close()


def on_thread(name: str, work: Callable[[], None]) -> None:
    """Run ``work`` on a thread called ``name`` (the engine's publish thread, say)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]


def objc_pool() -> contextlib.AbstractContextManager[None]:
    pool: contextlib.AbstractContextManager[None] = sys.modules["objc"].autorelease_pool()
    return pool


def our_server(world: World, name: str = "livediffusion") -> syphon_native.ServerState:
    return world.server_named(name, app=world.app_name)


# -- loading ---------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="Syphon loads on macOS")
def test_production_load_stays_macos_only(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "syphon" in sys.modules  # the library importable ...
    monkeypatch.setattr(_syphon, "_load", _PRODUCTION_LOAD)
    with pytest.raises(BackendUnavailableError, match="macOS"):  # ... still not on Linux
        _syphon._load()
    for opener in (open_source, open_sink):
        with pytest.raises(BackendUnavailableError, match="macOS"):
            opener("syphon://")


def test_uri_options(world: World) -> None:
    with pytest.raises(InvalidURIError, match="invert"):
        open_source("syphon://?invert=1")
    with pytest.raises(InvalidURIError, match="own"):
        open_sink("syphon://out?own=1")
    assert open_source("syphon://").waiting_for == "any Syphon server (not our own)"
    assert open_source("syphon://?own=1").waiting_for == "any Syphon server"
    assert open_source("syphon://App - Name?flip=1").waiting_for == "Syphon server 'App - Name'"
    assert open_sink("syphon://").name == "livediffusion"


# -- pixels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("upside_down", [False, True])
def test_frames_arrive_as_rgba_the_right_way_up(world: World, upside_down: bool) -> None:
    camera = ExternalServer(world, "Camera", "cam")
    picture = quadrants()
    flip = "?flip=1" if upside_down else ""
    with reading(f"syphon://Camera - cam{flip}") as reader:
        pump_until(
            lambda: reader.frames, feed=lambda: camera.publish(picture, upside_down=upside_down)
        )
    frame = reader.frames[-1].pixels
    assert frame.flags.c_contiguous and frame.flags.writeable
    assert np.array_equal(frame, picture)  # exact: no red/blue swap, no flip
    [client] = world.clients
    assert client.created_on == "capture" and client.used_on == {"capture"}
    assert client.stopped  # closing the source stopped it


def test_the_sink_publishes_bgra_the_right_way_up(world: World) -> None:
    picture = quadrants()
    with open_sink("syphon://out") as plain, open_sink("syphon://flipped?flip=1") as flipped:
        on_thread("publish", lambda: (plain.publish(picture), flipped.publish(picture)))
        outputs = [ExternalClient(world, our_server(world, n)) for n in ("out", "flipped")]
        pump_until(lambda: all(o.frame() is not None for o in outputs))
        assert np.array_equal(outputs[0].frame(), picture)
        assert np.array_equal(outputs[1].frame(), picture[::-1])
    # BGRA textures, flipped on the CPU: always Syphon's exact blit, never its render pass
    assert [o.state.copies for o in outputs] == [{"blit": 1}, {"blit": 1}]


# -- never our own ---------------------------------------------------------------------------


def test_the_source_never_reads_our_own_output(world: World) -> None:
    picture = quadrants()
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(picture))
    ours = our_server(world)
    pump_until(lambda: ours.uuid in world.listed())
    with reading("syphon://") as reader:
        pump_for(0.3)
        assert reader.frames == [] and not ours.info_clients
        assert reader.source.waiting_for == "any Syphon server (not our own)"
        camera = ExternalServer(world, "Camera", "cam")  # the input app starts ...
        pump_until(lambda: reader.frames, feed=lambda: camera.publish(picture))
        camera.stop()  # ... and quits while our output is still there
        pump_until(lambda: reader.source.waiting_for is not None)
        count = len(reader.frames)
        pump_for(0.5, feed=lambda: on_thread("publish", lambda: sink.publish(picture)))
        assert len(reader.frames) == count
        assert reader.source.waiting_for == "any Syphon server (not our own)"
    for uri in ("syphon://Python", "syphon://livediffusion", "syphon://Python - livediffusion"):
        with reading(uri) as reader:
            pump_for(0.2, feed=lambda: on_thread("publish", lambda: sink.publish(picture)))
            assert reader.frames == []
    assert all(client.state is not ours for client in world.clients)
    assert _syphon.is_own_server(described(world, ours.uuid))
    # Only when asked: a loopback self-test may read its own output.
    with reading("syphon://livediffusion?own=1") as reader:
        pump_until(
            lambda: reader.frames, feed=lambda: on_thread("publish", lambda: sink.publish(picture))
        )
    assert np.array_equal(reader.frames[-1].pixels, picture)
    sink.close()
    sink.close()


def test_a_stopped_sink_stays_ours(world: World) -> None:
    """The directory lists a stopped server until its retirement is pumped: still ours."""
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants()))
    ours = our_server(world)
    pump_until(lambda: ours.uuid in world.listed())
    description = described(world, ours.uuid)
    sink.close()
    assert _syphon.is_own_server(description)
    assert _syphon.pick([description], "") is None
    assert _syphon.pick([description], "", own=True) is description


def test_wait_option_fails_at_open_when_nothing_else_is_there(world: World) -> None:
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants()))
    started = time.monotonic()
    with pytest.raises(SourceNotFoundError, match="visible: none"):
        open_source("syphon://?wait=0.5")  # our own output is visible by then, and not taken
    assert time.monotonic() - started < 2.0
    ExternalServer(world, "Camera", "cam")
    source = open_source("syphon://?wait=2")  # pumps while it waits (this is the main thread)
    assert source.waiting_for is not None  # the client itself is made on the reading thread
    source.close()
    sink.close()


def test_waiting_reads_the_directory_without_the_wheels_one_second_pump(world: World) -> None:
    """syphon-python's ``servers`` first runs the run loop for ``run_loop_interval``, 1.0 s
    unless set: on a quiet main thread every read would block that long."""
    pump_for(world.notify_delay + 0.1)  # nothing left to deliver
    started = time.monotonic()
    with pytest.raises(SourceNotFoundError, match=r"within 0\.3 s"):
        open_source("syphon://Nobody?wait=0.3")
    assert time.monotonic() - started < 0.8


# -- discovery -------------------------------------------------------------------------------


def test_listing_pumps_until_its_timeout_and_finds_late_servers(world: World) -> None:
    world.notify_delay = 0.4  # other apps' announcements arrive late
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants()))
    for name in ("a", "b", "c"):
        ExternalServer(world, "Host", name)
    assert _syphon.list_sources(0.05) == []  # they answer after 0.4 s
    started = time.monotonic()
    found = _syphon.list_sources(0.8)
    elapsed = time.monotonic() - started
    assert sorted(s.name for s in found) == ["Host - a", "Host - b", "Host - c"]
    assert [s.uri for s in found if s.name == "Host - a"] == ["syphon://Host - a"]
    assert 0.8 <= elapsed < 1.5  # not one pass, and no extra second from `servers`
    assert our_server(world).uuid in world.listed()  # ours is in the directory, not listed
    sink.close()


def test_one_pass_of_the_run_loop_delivers_one_announcement(world: World) -> None:
    """Why a listing that pumps once undercounts (runMode:beforeDate: returns after one
    event), and why only the main thread's run loop counts."""
    pump_for(world.notify_delay + 0.05)  # the announce request made when the bundle loaded
    for name in ("a", "b", "c"):
        ExternalServer(world, "Host", name)
    time.sleep(world.notify_delay + 0.05)
    with sys.modules["syphon"].SyphonServerDirectory() as directory:
        directory.run_loop_interval = 0.1
        with objc_pool():
            assert len(directory.servers) == 1
            on_thread("worker", directory.update_run_loop)  # nothing attached there
            assert len(directory.servers) == 2


# -- autorelease pools -----------------------------------------------------------------------


def _stream(world: World, *, frames: int = 20) -> tuple[Reader, SyphonSink]:
    camera = ExternalServer(world, "Camera", "cam")
    sink = open_sink("syphon://livediffusion")
    picture = quadrants()
    with reading("syphon://Camera - cam") as reader:

        def forward() -> None:
            camera.publish(picture)
            if reader.frames:
                on_thread("publish", lambda: sink.publish(reader.frames[-1].pixels))

        pump_until(lambda: len(reader.frames) >= frames, feed=forward)
    return reader, sink


def test_worker_threads_drain_their_autorelease_pools(world: World) -> None:
    _reader, sink = _stream(world)
    sink.close()
    assert world.leaks_on("capture", "publish") == {}, world.leaked[:5]
    assert world.pools["capture"] > 10 and world.pools["publish"] > 10


def test_without_pools_the_stub_counts_leaks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules["objc"], "autorelease_pool", contextlib.nullcontext)
    _reader, sink = _stream(world)
    sink.close()
    leaks = world.leaks_on("capture", "publish")
    assert leaks["capture"] > 0 and leaks["publish"] > 20


# -- double buffering ------------------------------------------------------------------------


def test_the_sink_alternates_two_textures(world: World) -> None:
    pictures = [quadrants(), quadrants()[::-1].copy(), quadrants()[:, ::-1].copy()] * 3
    sink = open_sink("syphon://livediffusion")

    def publish_quickly() -> None:  # well inside the fake GPU's 50 ms
        for picture in pictures:
            sink.publish(picture)

    on_thread("publish", publish_quickly)
    ours = our_server(world)
    textures = ours.published
    assert len(textures) == len(pictures) and len(set(textures)) == 2
    assert all(a != b for a, b in itertools.pairwise(textures))
    output = ExternalClient(world, ours)
    pump_until(lambda: output.frame() is not None and np.array_equal(output.frame(), pictures[-1]))
    sink.close()


def test_a_stalled_gpu_makes_the_sink_wait_rather_than_tear(
    syphon_mac: Callable[..., World],
) -> None:
    """Two textures are enough while the GPU keeps up; when it is further behind, the sink
    waits for the command buffer that last read a texture before writing it again."""
    world = syphon_mac(gpu_latency=30.0, gpu_depth=3)
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: [sink.publish(quadrants()) for _ in range(6)])
    assert len(our_server(world).published) == 6
    sink.close()


def test_one_texture_reused_at_once_is_a_contract_error(world: World) -> None:
    """What a single texture would do: the fake catches the write the GPU still reads."""
    syphon = sys.modules["syphon"]
    server = syphon.SyphonMetalServer("single")
    texture = syphon.utils.raw.create_mtl_texture(server.device, 8, 8, BGRA8)
    image = np.zeros((8, 8, 4), np.uint8)
    syphon.utils.numpy.copy_image_to_mtl_texture(image, texture)
    server.publish_frame_texture(texture)
    with pytest.raises(ContractError, match="still reads"):
        syphon.utils.numpy.copy_image_to_mtl_texture(image, texture)
    server.stop()


def test_the_sink_keeps_its_server_across_size_changes(world: World) -> None:
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants(32, 32)))
    ours = our_server(world)
    output = ExternalClient(world, ours)
    pump_until(lambda: output.frame() is not None)
    on_thread("publish", lambda: sink.publish(quadrants(48, 64)))
    pump_until(lambda: output.frame() is not None and output.frame().shape == (48, 64, 4))
    assert np.array_equal(output.frame(), quadrants(48, 64))
    assert [s for s in world.servers.values() if not s.external] == [ours]  # same server
    assert ours.created_on == "publish"
    sink.close()
    assert not ours.alive
    world.settle()
    assert output.retired  # the retirement reached the other app's client


# -- vanishing servers -----------------------------------------------------------------------


def test_a_vanished_server_is_waited_for_and_picked_up_again_at_another_size(
    world: World,
) -> None:
    first = ExternalServer(world, "Camera", "cam")
    with reading("syphon://Camera - cam") as reader:
        pump_until(lambda: reader.frames, feed=lambda: first.publish(quadrants(48, 80)))
        assert reader.source.waiting_for is None
        first.stop()  # the app quits ...
        pump_until(lambda: reader.source.waiting_for == "Syphon server 'Camera - cam'")
        pump_for(0.2)
        second = ExternalServer(world, "Camera", "cam")  # ... and comes back: a new UUID
        pump_until(
            lambda: reader.frames[-1].pixels.shape == (32, 40, 4),
            feed=lambda: second.publish(quadrants(32, 40)),
        )
        assert reader.source.reconnects == 1
    assert np.array_equal(reader.frames[-1].pixels, quadrants(32, 40))
    assert [c.state for c in world.clients] == [first.state, second.state]  # no churn


def test_a_crashed_app_is_noticed_through_the_directory(world: World) -> None:
    """No retirement reaches the client of a crashed app; the directory drops it once it
    leaves an announce request unanswered (SyphonServerDirectory.m)."""
    world.announce_timeout = 0.3
    first = ExternalServer(world, "Camera", "cam")
    with reading("syphon://Camera - cam") as reader:
        pump_until(lambda: reader.frames, feed=lambda: first.publish(quadrants()))
        pump_for(world.notify_delay + world.announce_timeout)  # the bundle-load round is over
        first.crash()
        world.request_announce()  # some app starts and asks who is there
        pump_until(lambda: reader.source.waiting_for is not None, timeout=3.0)
        assert first.uuid not in world.listed() and world.clients[0].stopped
        second = ExternalServer(world, "Camera", "cam")
        count = len(reader.frames)
        pump_until(lambda: len(reader.frames) > count, feed=lambda: second.publish(quadrants()))
        assert reader.source.reconnects == 1


def test_own_servers_are_known_by_name_when_their_description_is_unreadable(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreadable(self: Any) -> Any:
        raise AttributeError("serverDescription")

    monkeypatch.setattr(syphon_native.NativeServer, "serverDescription", unreadable)
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants()))
    assert sink.uuid == ""
    ours = our_server(world)
    pump_until(lambda: ours.uuid in world.listed())
    with reading("syphon://") as reader:
        pump_for(0.3, feed=lambda: on_thread("publish", lambda: sink.publish(quadrants())))
        assert reader.frames == [] and not ours.info_clients
    sink.close()


# -- frames: once each, on Syphon's own queue ---------------------------------------------------


def test_an_unchanged_server_frame_is_delivered_once(world: World) -> None:
    """``has_new_frame`` is set by each frame the server draws and reset by every read."""
    camera = ExternalServer(world, "Camera", "cam")
    picture = quadrants()
    with reading("syphon://Camera - cam") as reader:
        pump_until(lambda: reader.frames, feed=lambda: camera.publish(picture))
        count = len(reader.frames)
        time.sleep(0.4)  # the reader polls all along; the camera sends nothing new
        assert len(reader.frames) == count
        camera.publish(picture[::-1].copy())  # one new frame (the same bytes would do too)
        deadline = time.monotonic() + 2.0
        while len(reader.frames) == count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(reader.frames) == count + 1
    assert np.array_equal(reader.frames[-1].pixels, picture[::-1])


def test_frames_and_retirement_need_no_main_thread(world: World) -> None:
    """Once connected, the main thread may do anything but pump: frames, a new size and the
    server's retirement reach the client on Syphon's messaging queue."""
    camera = ExternalServer(world, "Camera", "cam")
    with reading("syphon://Camera - cam") as reader:
        pump_until(lambda: reader.frames, feed=lambda: camera.publish(quadrants()))  # found
        passes = world.passes
        bigger = quadrants(64, 96)
        deadline = time.monotonic() + 3.0
        while reader.frames[-1].pixels.shape != bigger.shape:  # no pumping from here on
            assert time.monotonic() < deadline, "frames stopped without the main run loop"
            camera.publish(bigger)
            time.sleep(0.02)
        assert np.array_equal(reader.frames[-1].pixels, bigger)
        camera.stop()
        deadline = time.monotonic() + 3.0
        while reader.source.waiting_for is None:
            assert time.monotonic() < deadline, "the retirement never reached the client"
            time.sleep(0.02)
        assert world.passes == passes  # the main run loop never ran meanwhile
        assert camera.uuid in world.listed()  # the directory will hear of it when pumped
    pump_until(lambda: camera.uuid not in world.listed())


def test_the_wheels_client_follows_the_framework(world: World) -> None:
    """syphon-python's own client over the stub: what the source relies on."""
    syphon = sys.modules["syphon"]
    camera = ExternalServer(world, "Camera", "cam")
    with syphon.SyphonServerDirectory() as directory:
        directory.run_loop_interval = 0.01
        with objc_pool():
            pump_until(lambda: directory.servers)
            [description] = directory.servers
        with syphon.SyphonMetalClient(description) as client:
            assert client.is_valid and not client.has_new_frame and client.new_frame_image is None
            camera.publish(quadrants())
            world.settle()
            assert client.has_new_frame
            with objc_pool():
                texture = client.new_frame_image
            assert texture.pixelFormat() == BGRA8
            assert not client.has_new_frame  # reset by the read ...
            camera.publish(quadrants())
            assert client.has_new_frame  # ... set by the next frame the server draws ...
            assert client.new_frame_image is texture  # (same surface, same texture)
            assert not client.has_new_frame
            camera.publish(quadrants())
            with objc_pool():
                client.new_frame_image  # noqa: B018 (... and reset by any read, asked or not)
            assert not client.has_new_frame
            camera.stop()
            world.settle()  # the retirement travels on the messaging queue, not the run loop
            assert not client.is_valid and not client.has_new_frame
            assert client.new_frame_image is None  # the surface went with the server
        late = syphon.SyphonMetalClient(description)  # a stale directory entry
        assert not late.is_valid
        late.stop()
    with pytest.raises(RuntimeError, match="closed"):
        directory.__enter__()


def test_closing_the_source_stops_its_client(world: World) -> None:
    camera = ExternalServer(world, "Camera", "cam")
    with reading("syphon://Camera - cam") as reader:
        pump_until(lambda: reader.frames, feed=lambda: camera.publish(quadrants()))
        world.settle()
        assert len(camera.state.info_clients) == 1
    world.settle()
    assert camera.state.info_clients == [] and world.clients[0].stopped
    assert world.center.observers() == 0


def test_other_apps_find_our_output_only_while_we_pump(world: World) -> None:
    """An app that starts after our server asks who is there; we answer through the main
    run loop (pump_events), so without it the app never sees our output."""
    sink = open_sink("syphon://livediffusion")
    on_thread("publish", lambda: sink.publish(quadrants()))
    pump_for(world.notify_delay + 0.1)
    host = syphon_native.ExternalDirectory(world)  # e.g. Resolume, started now
    time.sleep(world.notify_delay + 0.2)  # our main thread busy elsewhere
    assert "Python - livediffusion" not in host.names()
    pump_for(world.notify_delay + 0.1)
    assert "Python - livediffusion" in host.names()
    sink.close()
    assert "Python - livediffusion" not in host.names()
    assert world.delivered[ANNOUNCE] >= 2
