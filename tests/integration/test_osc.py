"""OSC over real UDP on loopback: valid messages apply, junk is counted and dropped."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from livediffusion.controls import Controls, ControlStore
from livediffusion.engine import Engine, EngineOptions
from livediffusion_bridge import TransportError, memory, open_sink, open_source
from livediffusion_bridge.osc import OscServer

pytestmark = pytest.mark.integration


@pytest.fixture
def served() -> Iterator[tuple[ControlStore, OscServer, SimpleUDPClient]]:
    store = ControlStore()
    server = OscServer(store.handle_osc, host="127.0.0.1", port=0).start()
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
        OscServer(lambda a, b: None, port=0) as first,
        pytest.raises(TransportError, match="--osc-port"),
    ):
        OscServer(lambda a, b: None, port=first.address[1])


def test_frames_keep_flowing_during_a_junk_burst(make_tiny_backend: Callable[..., Any]) -> None:
    memory.reset()
    store = ControlStore(Controls(smoothing=0.0, feedback=0.0))
    engine = Engine(
        source=open_source("memory://cam"),
        sink=open_sink("memory://out"),
        backend=make_tiny_backend(),
        controls=store,
        options=EngineOptions(prompt_glide=0.0),
    )
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8)
    out = memory.channel("out")
    with OscServer(store.handle_osc, port=0) as server, engine:
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
