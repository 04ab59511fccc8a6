"""OSC over real UDP on loopback: valid messages apply, junk is counted and dropped."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from livediffusion.control.controls import Controls, ControlStore
from livediffusion.control.presets import PresetFile
from livediffusion.control.surface import ControlSurface
from livediffusion.run.engine import Engine
from livediffusion_bridge import TransportError, memory, open_sink, open_source
from livediffusion_bridge.osc import OscMessage, OscServer
from loopback import free_udp_port

pytestmark = pytest.mark.integration


_STATUS = (12.5, 11.0, 40.25, 3, "sdxs-512-0.9", "torch cpu float32", 2, 0.5, "0.8 0")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlStore, OscServer, SimpleUDPClient]]:
    store = ControlStore()
    surface = ControlSurface(
        store, presets=PresetFile(tmp_path / "presets.json"), status=lambda: _STATUS
    )
    server = OscServer(surface.handle_osc, host="127.0.0.1", port=0).start()
    surface.attach(server)
    client = SimpleUDPClient(*server.address)
    yield store, server, client
    server.close()
    server.close()  # twice is fine


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def _junk() -> list[bytes]:
    bad_type = OscMessageBuilder("/strength")
    bad_type.add_arg("loud")
    out_of_range = OscMessageBuilder("/strength")
    out_of_range.add_arg(7.5)
    return [
        b"",
        b"\x00\x01\x02garbage",
        b"/strength\x00\x00\x00,f\x00\x00",  # float missing (python-osc would read 0.0)
        b"/strength\x00\x00\x00,f\x00\x00\x3f",  # truncated float
        b"#bundle\x00" + b"\xff" * 5,  # broken bundle
        b"/prompt\x00,s\x00\x00",  # string argument missing
        struct.pack(">f", 1.0) * 20,
        bad_type.build().dgram,
        out_of_range.build().dgram,
        _message("/nope", 1),
        _message("/seed", 0.5),
    ]


def _message(address: str, value: Any) -> bytes:
    builder = OscMessageBuilder(address)
    builder.add_arg(value)
    return builder.build().dgram


def test_valid_messages_change_controls(
    served: tuple[ControlStore, OscServer, SimpleUDPClient],
) -> None:
    store, server, client = served
    client.send_message("/strength", 0.25)
    client.send_message("/seed", 7.0)  # floats for whole numbers, as TouchDesigner sends
    client.send_message("/prompt", "neon jellyfish")
    client.send_message("/bypass", 1)
    _wait_for(lambda: store.snapshot().bypass)
    snap = store.snapshot()
    assert (snap.strength, snap.seed, snap.prompt) == (0.25, 7, "neon jellyfish")
    assert server.counters.accepted == 4


def test_junk_is_dropped_and_counted(
    served: tuple[ControlStore, OscServer, SimpleUDPClient],
) -> None:
    store, server, client = served
    before = store.snapshot()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = _junk()
    for _ in range(20):
        for datagram in junk:
            sock.sendto(datagram, server.address)
    client.send_message("/feedback", 0.75)  # still listening after the burst
    _wait_for(lambda: store.snapshot().feedback == 0.75)
    counters = server.counters
    assert counters.malformed + counters.rejected == 20 * len(junk)
    assert counters.rejected == 20 * 4  # parsed fine, refused by validation
    assert store.snapshot().strength == before.strength
    assert store.snapshot().seed == before.seed


def test_bytes_that_are_not_utf8_never_end_osc(
    served: tuple[ControlStore, OscServer, SimpleUDPClient],
) -> None:
    store, server, client = served
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"/prompt\0,s\0\0caf\xe9\0\0\0\0", server.address)  # Latin-1 string
    sock.sendto(b"/x\xff\xfe\0,f\0\0\0\0\0\0", server.address)  # Latin-1 address
    client.send_message("/prompt", "after the junk")
    _wait_for(lambda: store.snapshot().prompt == "after the junk")
    assert server.counters.malformed == 2


def test_port_in_use_is_a_clear_error() -> None:
    with (
        OscServer(lambda message: None, port=0) as first,
        pytest.raises(TransportError, match=r"in use.*--osc-port"),
    ):
        OscServer(lambda message: None, port=first.address[1])


def test_an_address_this_machine_lacks_is_a_clear_error() -> None:
    with pytest.raises(TransportError, match=r"this machine has no address 192\.0\.2\.254"):
        OscServer(lambda message: None, host="192.0.2.254", port=0)


def test_frames_keep_flowing_during_a_junk_burst(make_tiny_backend: Callable[..., Any]) -> None:
    memory.reset()
    store = ControlStore(Controls(smoothing=0.0, feedback=0.0, prompt_glide=0.0))
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        backend=make_tiny_backend(),
        controls=store,
    )
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    out = memory.channel("out")
    with OscServer(lambda m: store.handle_osc(m.address, m.args), port=0) as server, engine:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        memory.channel("cam").push(picture)
        out.wait_published(1, timeout=30)
        published = out.published_count
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for datagram in _junk():
                sock.sendto(datagram, server.address)
            memory.channel("cam").push(picture)
            time.sleep(0.005)
        out.wait_published(published + 3, timeout=30)
        assert server.counters.malformed > 50
        assert engine.errors == []
    engine.source.close()
    engine.sink.close()
    memory.reset()


def _bound(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2.0)
    return sock


def _reply(sock: socket.socket) -> tuple[str, list[Any], str]:
    from pythonosc.osc_message import OscMessage as Decoded

    decoded = Decoded(sock.recv(65_535))
    tags = decoded.dgram[decoded.dgram.index(b",") + 1 :].split(b"\0")[0].decode()
    return decoded.address, list(decoded.params), tags


def test_status_and_ping_answer_the_sender(
    served: tuple[ControlStore, OscServer, SimpleUDPClient],
) -> None:
    _, server, _ = served
    with _bound() as asker:
        asker.sendto(_message("/status", 1), server.address)
        address, params, tags = _reply(asker)
        assert (address, tags) == ("/status", "fffissifs")
        assert params == pytest.approx(list(_STATUS))
        asker.sendto(OscMessageBuilder("/ping").build().dgram, server.address)
        assert _reply(asker)[:2] == ("/pong", [])
        asker.sendto(_message("/ping", "hello"), server.address)
        assert _reply(asker)[:2] == ("/pong", ["hello"])


def test_touchdesigner_habits(
    served: tuple[ControlStore, OscServer, SimpleUDPClient],
) -> None:
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder

    store, server, _ = served
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # channel names as addresses: no slash, underscores for slashes, one float each
    sock.sendto(_message("strength", 0.5), server.address)
    sock.sendto(_message("prompt_mix", 0.25), server.address)
    sock.sendto(_message("seed", 9.0), server.address)
    sock.sendto(_message("bypass", 1.0), server.address)
    _wait_for(lambda: store.snapshot().bypass)
    snap = store.snapshot()
    assert (snap.strength, snap.prompt_mix, snap.seed) == (0.5, 0.25, 9)
    assert isinstance(snap.seed, int)
    # a bundle (an OSC Out CHOP sends one per cook when asked), nested, slashless inside
    inner = OscBundleBuilder(IMMEDIATELY)
    inner.add_content(OscMessageBuilder("smoothing").build())  # no argument: rejected
    for address, value in (("feedback", 0.3), ("/blend", 1), ("/glide", 2)):
        builder = OscMessageBuilder(address)
        builder.add_arg(value)
        inner.add_content(builder.build())
    outer = OscBundleBuilder(IMMEDIATELY)
    outer.add_content(inner.build())
    accepted = server.counters.accepted
    sock.sendto(outer.build().dgram, server.address)
    _wait_for(lambda: store.snapshot().glide == 2.0)
    snap = store.snapshot()
    assert (snap.feedback, snap.blend, snap.glide) == (pytest.approx(0.3), 1.0, 2.0)
    assert server.counters.accepted == accepted + 3
    assert server.counters.rejected == 1


def test_actions_reset_and_presets(
    served: tuple[ControlStore, OscServer, SimpleUDPClient], tmp_path: Path
) -> None:
    store, server, client = served
    client.send_message("/reset", [])
    client.send_message("/reset", 0.0)  # a button's release does nothing
    client.send_message("/reset", 1.0)
    _wait_for(lambda: server.counters.accepted == 3)
    assert store.resets == 2
    client.send_message("/strength", 0.3)
    client.send_message("/prompt/b", "second look")
    client.send_message("/preset/save", 7.0)
    _wait_for((tmp_path / "presets.json").exists)
    client.send_message("/strength", 0.9)
    client.send_message("/prompt/b", "")
    _wait_for(lambda: store.snapshot().prompt_b == "")
    accepted = server.counters.accepted
    client.send_message("/preset/recall", 7)
    _wait_for(lambda: server.counters.accepted == accepted + 1)
    assert store.snapshot().prompt_b == "second look"
    assert store.snapshot().strength == pytest.approx(0.3)  # OSC floats are 32-bit
    assert store.glide_seconds() == 1.0  # a recall glides even with /glide at 0
    rejected = server.counters.rejected
    client.send_message("/preset/recall", 8)  # never saved: rejected, nothing changes
    _wait_for(lambda: server.counters.rejected == rejected + 1)
    assert store.snapshot().strength == pytest.approx(0.3)


def test_the_allow_list_refuses_other_senders(tmp_path: Path) -> None:
    store = ControlStore()
    addresses = {"192.0.2.2", "127.0.0.1"}
    outside = next((a for a in addresses if a != "127.0.0.1" and _has_address(a)), None)
    if outside is None:
        pytest.skip("this machine has no address besides loopback to send from")

    def handler(message: OscMessage) -> None:
        store.handle_osc(message.address, message.args)

    for allow, refused in ((["10.0.0.0/8"], True), ([outside + "/24"], False)):
        with (
            OscServer(handler, host="0.0.0.0", port=0, allow=allow) as server,
            _bound(outside) as sender,
        ):
            target = (outside, server.address[1])
            sender.sendto(_message("/blend", 0.5), target)
            with _bound() as local:  # loopback is always allowed
                local.sendto(_message("/feedback", 0.5), ("127.0.0.1", server.address[1]))
            _wait_for(lambda: server.counters.received == 2)
            time.sleep(0.1)
            assert server.counters.refused == (1 if refused else 0)
            assert (store.snapshot().blend == 0.5) is not refused
            assert store.snapshot().feedback == 0.5
        store.update(blend=0.0, feedback=0.0)


def _has_address(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


def test_listening_beyond_this_machine_without_an_allow_list_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with OscServer(lambda message: None, host="0.0.0.0", port=0) as server:
        assert server.exposed
    assert any("--osc-allow" in record.getMessage() for record in caplog.records)


def test_a_flood_from_one_sender_is_cut_and_counted() -> None:
    store = ControlStore()
    accepted: list[str] = []

    def handler(message: OscMessage) -> None:
        store.handle_osc(message.address, message.args)
        accepted.append(message.address)

    with OscServer(handler, port=0, rate=200.0) as server, _bound() as flooder, _bound() as calm:
        datagram = _message("/blend", 0.5)
        began = time.monotonic()
        for _ in range(3000):
            flooder.sendto(datagram, server.address)
        # another sender gets in (sent again if the kernel dropped it with the burst)
        deadline = time.monotonic() + 5.0
        while store.snapshot().feedback != 0.25 and time.monotonic() < deadline:
            calm.sendto(_message("/feedback", 0.25), server.address)
            time.sleep(0.05)
        assert store.snapshot().feedback == 0.25
        _wait_until_quiet(server)
        elapsed = time.monotonic() - began
        counters = server.counters
        blends = accepted.count("/blend")
        # the kernel may drop some of the burst itself; of what arrived, the excess was cut
        assert counters.received > 500 and counters.flooded > counters.received // 2
        assert counters.flooded + blends + accepted.count("/feedback") == counters.received
        assert blends <= 200 + 200 * elapsed + 1
        time.sleep(0.2)  # the bucket refills: the same sender is heard again
        flooder.sendto(_message("/smoothing", 0.75), server.address)
        _wait_for(lambda: store.snapshot().smoothing == 0.75)


def test_oversized_datagrams_are_dropped() -> None:
    store = ControlStore()
    with OscServer(
        lambda m: store.handle_osc(m.address, m.args), port=0, max_datagram=1024
    ) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.sendto(_message("/prompt", "x" * 1500), server.address)
        sock.sendto(_message("/prompt", "short"), server.address)
        _wait_for(lambda: store.snapshot().prompt == "short")
        assert server.counters.malformed == 1


def test_a_handler_bug_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def buggy(message: OscMessage) -> None:
        raise KeyError("a bug, not bad input")

    with OscServer(buggy, port=0) as server:
        SimpleUDPClient(*server.address).send_message("/strength", 0.5)
        _wait_for(lambda: server.counters.failed == 1)
    [record] = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


def test_a_failing_receive_loop_is_restarted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import livediffusion_bridge.osc as osc_module

    real = osc_module.split_packet
    calls = [0]

    def fails_once(dgram: bytes, *, depth: int = 0) -> Iterator[bytes]:
        calls[0] += 1
        if calls[0] == 1:
            raise MemoryError("simulated failure inside the loop")
        return real(dgram, depth=depth)

    monkeypatch.setattr(osc_module, "split_packet", fails_once)
    store = ControlStore()
    with OscServer(lambda m: store.handle_osc(m.address, m.args), port=0) as server:
        client = SimpleUDPClient(*server.address)
        client.send_message("/blend", 0.5)  # this one ends the loop
        _wait_for(lambda: server.counters.restarts == 1)
        client.send_message("/feedback", 0.5)
        _wait_for(lambda: store.snapshot().feedback == 0.5)
    assert any("restarted" in r.getMessage() and r.exc_info for r in caplog.records)


def _wait_until_quiet(server: OscServer) -> None:
    """Until the server has read everything the kernel kept of a burst."""
    last = -1
    while server.counters.received != last:
        last = server.counters.received
        time.sleep(0.3)


def test_python_osc_logging_goes_through_the_rate_limit() -> None:
    """python-osc logs with logging.warning() on the root logger; 5,000 of them are a few."""
    from pythonosc.osc_message import OscMessage as Decoded

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler = Collect()
    root.addHandler(handler)
    try:
        with OscServer(lambda message: None, port=0, rate=1e6) as server:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for _ in range(5000):
                sock.sendto(b"/strength\0\0\0,q\0\0", server.address)  # unknown type tag
            _wait_until_quiet(server)
            for _ in range(500):  # and python-osc's own warning, called directly
                Decoded(b"/strength\0\0\0,q\0\0")
    finally:
        root.removeHandler(handler)
    received = server.counters.received
    assert received > 1000  # the kernel may drop some of a burst; the rest were read
    assert server.counters.malformed == received
    # at most 5 lines and one summary per kind in 10 s, however many there were
    assert 0 < len(records) <= 2 * (5 + 1)
    assert sum("python-osc" in r.getMessage() for r in records) <= 5 + 1


def test_replies_to_nobody_do_not_disturb_receiving() -> None:
    store = ControlStore()
    with OscServer(lambda m: store.handle_osc(m.address, m.args), port=0) as server:
        nobody = ("127.0.0.1", free_udp_port())  # an --osc-reply target not listening yet
        for _ in range(10):
            assert server.send("/status", (1.0, 2.0, 3.0, 4, "m", "b"), nobody)
        SimpleUDPClient(*server.address).send_message("/blend", 0.5)
        _wait_for(lambda: store.snapshot().blend == 0.5)
        assert server.counters.malformed == 0


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def osc_warnings() -> Iterator[list[str]]:
    handler = _Collect()
    osc_log = logging.getLogger("livediffusion_bridge.osc")
    osc_log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        osc_log.removeHandler(handler)


def test_drops_are_logged_by_time_not_by_count(osc_warnings: list[str]) -> None:
    """After 10 rejected messages only every 100th was logged for the rest of the run:
    /seed 7.5, /preset/save -1 and a long /prompt sent seconds later vanished without a word."""
    from livediffusion_bridge.osc import LogLimiter

    store = ControlStore()
    surface = ControlSurface(
        store, presets=PresetFile(Path("/nonexistent")), status=lambda: _STATUS
    )
    limiter = LogLimiter(lines=3, interval=0.5)
    with OscServer(surface.handle_osc, port=0, rate=1e6, log_limiter=limiter) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(200):
            sock.sendto(_message("/strength", 7.5), server.address)
        _wait_for(lambda: server.counters.rejected == 200)
        rejected_lines = [line for line in osc_warnings if "OSC /strength dropped" in line]
        assert len(rejected_lines) == 3
        _wait_for(lambda: any("197 more rejected messages not logged" in x for x in osc_warnings))
        for message in (
            _message("/seed", 7.5),
            _message("/preset/save", -1),
            _message("/prompt", "long prompt " * 210),
        ):
            time.sleep(0.3)  # seconds apart, as a performer would send them
            sock.sendto(message, server.address)
        _wait_for(lambda: server.counters.rejected == 203)
    said = "\n".join(osc_warnings)
    assert "OSC /seed dropped: /seed takes a whole number, got 7.5" in said
    assert "OSC /preset/save dropped: /preset/save must be between 0 and 999, got -1" in said
    assert "OSC /prompt dropped: /prompt is 2520 characters, at most 2000" in said


def test_a_flood_writes_a_few_lines_not_hundreds(osc_warnings: list[str]) -> None:
    """118,000 datagrams in 3 s wrote 727 warning lines; with the real limits (5 lines per
    kind per 10 s and a summary) a flood of every kind of junk writes a handful."""
    with OscServer(lambda message: None, port=0, rate=3000) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk = _junk()
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            for datagram in junk:
                sock.sendto(datagram, server.address)
        _wait_until_quiet(server)
        counters = server.counters
    assert counters.flooded > 1000 and counters.malformed > 100, counters
    kinds = 3  # malformed, flooded, rejected (the handler accepts everything here: none)
    assert len(osc_warnings) <= kinds * (5 + 1) + 1, osc_warnings  # +1: a python-osc line
    assert any("more datagrams over the rate limit not logged" in line for line in osc_warnings)


def test_the_rejected_count_is_on_the_status_line_and_in_status(
    make_tiny_backend: Callable[..., Any],
) -> None:
    import io
    import threading

    from livediffusion.config import ServeConfig
    from livediffusion.run.server import run_server

    memory.reset()
    port = free_udp_port()
    config = ServeConfig(
        source="test://pattern?size=64x64&fps=20",
        sink="memory://rejected-status",
        osc_port=port,
        status_interval=0.2,
    )
    stop = threading.Event()
    stream = io.StringIO()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(
            run_server(config, backend=make_tiny_backend(), stop=stop, status_stream=stream)
        ),
        daemon=True,
    )
    thread.start()
    try:
        memory.channel("rejected-status").wait_published(1, timeout=60)
        _wait_for(lambda: "| torch-cpu float32" in stream.getvalue(), timeout=60)  # warm
        with _bound() as asker:
            for message in (_message("/seed", 7.5), _message("/nope", 1), b"junk"):
                asker.sendto(message, ("127.0.0.1", port))
            _wait_for(lambda: "OSC rejected 3" in stream.getvalue(), timeout=10)
            asker.sendto(OscMessageBuilder("/status").build().dgram, ("127.0.0.1", port))
            address, params, tags = _reply(asker)
    finally:
        stop.set()
        thread.join(10)
        memory.reset()
    assert codes == [0]
    assert (address, tags) == ("/status", "fffissifs")
    assert params[4:] == ["sdxs-512-0.9", "torch-cpu float32", 3, 0.0, ""]
