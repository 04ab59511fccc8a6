"""The whole server over real UDP loopback with a tiny CPU model: every address does what it
says, answers come back, presets outlive the process, and junk never gets in."""

from __future__ import annotations

import json
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage as Decoded
from pythonosc.osc_message_builder import OscMessageBuilder

from livediffusion.cli import _serve_config, build_parser
from livediffusion.config import ServeConfig
from livediffusion.control.controls import CONTROLS, Controls
from livediffusion.run.server import run_server
from livediffusion_bridge import memory
from loopback import free_udp_port

pytestmark = pytest.mark.integration


def _dgram(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


@dataclass
class Running:
    port: int
    reply: socket.socket  # where --osc-reply sends /status and the echoes
    stop: threading.Event
    presets: Path
    prefix: str
    pending: list[tuple[str, list[Any]]] = field(default_factory=list)

    def send(self, address: str, *args: Any, sock: socket.socket | None = None) -> None:
        target = ("127.0.0.1", self.port)
        (sock or self.reply).sendto(_dgram(self.prefix + address, *args), target)

    def replies(self, seconds: float) -> list[tuple[str, list[Any]]]:
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.reply.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                decoded = Decoded(self.reply.recv(65_535))
            except TimeoutError:
                break
            got.append((decoded.address, list(decoded.params)))
        return got

    def echo_of(self, address: str, timeout: float = 5.0) -> list[Any]:
        """The next echo to ``address`` (skipping /status ticks and other echoes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pending.extend(self.replies(0.2))
            for index, (got, params) in enumerate(self.pending):
                if got == self.prefix + address:
                    del self.pending[: index + 1]
                    return params
        raise AssertionError(f"no echo of {address}")


def _feed(stop: threading.Event) -> None:
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 4), dtype=np.uint8)
    while not stop.is_set():
        memory.channel("cam").push(picture)
        time.sleep(0.03)


@pytest.fixture
def start(
    make_tiny_backend: Callable[..., Any], tmp_path: Path
) -> Iterator[Callable[..., Running]]:
    memory.reset()
    started: list[tuple[Running, threading.Thread, list[int]]] = []
    feeding = threading.Event()
    feeder = threading.Thread(target=_feed, args=(feeding,), daemon=True)
    feeder.start()

    def launch(
        *,
        prefix: str = "",
        initial: Controls | None = None,
        rate: float = 2000.0,
        **controls: Any,
    ) -> Running:
        reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        reply.bind(("127.0.0.1", 0))
        port = free_udp_port()
        presets = tmp_path / "presets.json"
        config = ServeConfig(
            source="memory://cam",
            sink="memory://out",
            osc_port=port,
            osc_prefix=prefix,
            osc_reply=("127.0.0.1", reply.getsockname()[1]),
            osc_echo=True,
            osc_rate=rate,
            controls=initial or Controls(feedback=0.0, smoothing=0.0, **controls),
            presets=str(presets),
            status_interval=0.5,
        )
        stop = threading.Event()
        codes: list[int] = []
        backend = make_tiny_backend()
        thread = threading.Thread(
            target=lambda: codes.append(run_server(config, backend=backend, stop=stop)),
            daemon=True,
        )
        thread.start()
        running = Running(port, reply, stop, presets, prefix)
        started.append((running, thread, codes))
        out = memory.channel("out")
        out.wait_published(out.published_count + 1, timeout=60)  # warm and flowing
        return running

    yield launch
    for running, thread, codes in started:
        running.stop.set()
        thread.join(10)
        running.reply.close()
        assert codes == [0]
    feeding.set()
    feeder.join(5)
    memory.reset()


VALUES: dict[str, tuple[Any, Any]] = {
    # address: (what is sent, what is echoed)
    "/prompt": ("neon jellyfish", "neon jellyfish"),
    "/prompt/a": ("deep sea glow", "deep sea glow"),
    "/prompt/b": ("a crystal cave", "a crystal cave"),
    "/prompt/mix": (0.5, 0.5),
    "/strength": (1, 1.0),  # an int where a float is expected
    "/seed": (7.0, 7),  # a whole float where an int is expected
    "/feedback": (0.25, 0.25),
    "/smoothing": (0.5, 0.5),
    "/blend": (0.75, 0.75),
    "/bypass": (1.0, 1),
    "/pause": (1, 1),
    "/glide": (0.5, 0.5),
    "/prompt/glide": (0, 0.0),
    "/seed/glide": (2, 2.0),
    "/controlnet/scale": (1.5, 1.5),
}


def test_every_value_address_is_applied_and_echoed(start: Callable[..., Running]) -> None:
    server = start()
    value_addresses = {a for a, spec in CONTROLS.items() if spec.field is not None}
    assert set(VALUES) == value_addresses
    for address, (sent, echoed) in VALUES.items():
        server.send(address, "loud" if not isinstance(sent, str) else 3)  # wrong: no echo
        high = CONTROLS[address].high
        too_big = 2.0 if high is None else float(high) * 2 + 1
        server.send(address, too_big if not isinstance(sent, str) else "")  # out of range
        server.send(address, sent)
        echo_address = "/prompt" if address == "/prompt/a" else address
        if isinstance(sent, str):  # the empty prompt was valid: its echo comes first
            assert server.echo_of(echo_address) == [""], address
        assert server.echo_of(echo_address) == [pytest.approx(echoed)], address
    server.send("/pause", 0)
    server.send("/bypass", 0)
    server.echo_of("/bypass")


def test_controls_change_the_output_frames(start: Callable[..., Running]) -> None:
    server = start(prompt_glide=0.0, seed_glide=0.0)
    out = memory.channel("out")

    def settled() -> np.ndarray:
        time.sleep(0.4)
        count = out.published_count
        return out.wait_published(count + 2, timeout=20)[-1].pixels.astype(int)

    base = settled()
    for address, value in (("/strength", 0.1), ("/seed", 99), ("/blend", 1.0)):
        server.send(address, value)
        server.echo_of(address)
        changed = settled()
        assert np.abs(changed - base).mean() > 0.2, address
        base = changed
    count = out.published_count
    server.send("/pause", 1)
    server.echo_of("/pause")
    time.sleep(0.5)
    paused_at = out.published_count
    time.sleep(0.5)
    assert out.published_count == paused_at >= count


def test_status_ping_and_the_reply_stream(start: Callable[..., Running]) -> None:
    server = start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        asker.bind(("127.0.0.1", 0))
        asker.settimeout(3.0)
        deadline = time.monotonic() + 30
        while True:  # rates need a few processed frames: slow on a loaded CPU
            server.send("/status", sock=asker)
            decoded = Decoded(asker.recv(65_535))
            assert decoded.address == "/status"
            if decoded.params[1] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        in_fps, out_fps, latency, dropped, model, backend, rejected, scale, loras = decoded.params
        assert in_fps > 5 and out_fps > 0 and latency > 0 and dropped >= 0
        assert (model, backend, rejected) == ("sdxs-512-0.9", "torch-cpu float32", 0)
        assert (scale, loras) == (0.0, "")  # neither --controlnet nor --lora here
        server.send("/ping", "x", 2, sock=asker)
        assert Decoded(asker.recv(65_535)).params == ["x", 2]
    # --osc-reply: /status once a second, without being asked
    server.replies(0.5)  # whatever was queued
    began = time.monotonic()
    ticks = []
    while time.monotonic() - began < 3.2:
        ticks.extend(
            time.monotonic() - began for got, _ in server.replies(0.05) if got == "/status"
        )
    assert len(ticks) in (3, 4), ticks
    gaps = np.diff(ticks)
    assert np.all(np.abs(gaps - 1.0) < 0.25), ticks


def test_a_prefix_moves_every_address(start: Callable[..., Running]) -> None:
    server = start(prefix="/stage1")
    server.send("/blend", 0.5)
    assert server.echo_of("/blend") == [0.5]  # echoed under the prefix too
    server.prefix = ""
    server.send("/blend", 0.25)  # without the prefix: not ours
    server.prefix = "/stage1"
    server.send("/feedback", 0.5)
    assert server.echo_of("/feedback") == [0.5]
    assert all(a != "/stage1/blend" for a, _ in server.replies(0.5))


def test_presets_round_trip_and_survive_a_restart(
    start: Callable[..., Running], tmp_path: Path
) -> None:
    server = start()
    server.send("/prompt/b", "saved second prompt")
    server.send("/strength", 0.3)
    server.send("/seed", 1234)
    server.send("/preset/save", 5)
    deadline = time.monotonic() + 5
    while not server.presets.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    saved = json.loads(server.presets.read_text())["presets"]["5"]
    assert (saved["prompt_b"], saved["seed"]) == ("saved second prompt", 1234)
    assert saved["strength"] == pytest.approx(0.3)
    assert server.echo_of("/strength") == [pytest.approx(0.3)]
    server.send("/strength", 0.9)
    assert server.echo_of("/strength") == [pytest.approx(0.9)]
    server.send("/preset/recall", 5.0)
    assert server.echo_of("/strength") == [pytest.approx(0.3)]
    server.stop.set()
    time.sleep(1.0)
    # a new start through the command line: the preset file is all that carries over
    args = build_parser().parse_args(["serve", "--presets", str(server.presets), "--preset", "5"])
    second = start(initial=_serve_config(args).controls)
    second.send("/preset/save", 6)
    deadline = time.monotonic() + 5
    while "6" not in json.loads(second.presets.read_text())["presets"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    presets = json.loads(second.presets.read_text())["presets"]
    assert presets["6"] == presets["5"]


def test_reset_is_logged(start: Callable[..., Running], caplog: pytest.LogCaptureFixture) -> None:
    server = start()
    with caplog.at_level(logging.INFO):
        server.send("/reset")
        deadline = time.monotonic() + 5
        while not any("temporal state reset" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _fuzz(rng: random.Random) -> bytes:
    """One datagram that is invalid by construction (so any change it made would show)."""
    kind = rng.randrange(9)
    address = rng.choice([*CONTROLS, "/nope", "strength", "/stage1/x"])
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:
        return _dgram(address, 0.5)[: rng.randrange(1, 16)]  # truncated
    if kind == 2:  # type tags with one nobody knows, and any data
        known = [rng.choice("ifsbhdtTFNI[]") for _ in range(rng.randrange(0, 5))]
        known.insert(rng.randrange(len(known) + 1), rng.choice("xyqzAB"))
        tags = "".join(known)
        head = address.encode() + b"\0" * (4 - len(address) % 4)
        tagged = b"," + tags.encode()
        return head + tagged + b"\0" * (4 - len(tagged) % 4) + rng.randbytes(rng.randrange(12))
    if kind == 3:
        return _dgram("/strength", rng.choice([1.5, -0.1, float("nan"), float("inf"), "x"]))
    if kind == 4:
        return _dgram("/seed", rng.choice([0.5, -1, 2**33, "seven"]))
    if kind == 5:
        return b"/prompt\0,s\0\0" + bytes([rng.randrange(0x80, 0x100)]) + b"\xff\0\0\0"
    if kind == 6:  # a bundle of junk, possibly nested, possibly lying about sizes
        inner = rng.randbytes(rng.randrange(0, 40))
        size = len(inner) if rng.random() < 0.5 else rng.randrange(-5, 500)
        return b"#bundle\0" + b"\0" * 8 + struct.pack(">i", size) + inner
    if kind == 7:
        bundle = OscBundleBuilder(IMMEDIATELY)
        for _ in range(rng.randrange(1, 4)):
            bad = OscMessageBuilder(rng.choice(["/blend", "/glide", "/preset/recall"]))
            bad.add_arg(rng.choice([-3.0, 1000, 1000.5, "loud"]))  # bad for all three
            bundle.add_content(bad.build())
        return bytes(bundle.build().dgram)
    return _dgram("/prompt", "x" * 3000)  # too long a prompt


def test_fuzz_leaves_the_server_running_and_only_valid_messages_count(
    start: Callable[..., Running],
) -> None:
    server = start()
    rng = random.Random(1234)
    out = memory.channel("out")
    published = out.published_count
    expected: dict[str, Any] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fuzzer:
        began = time.monotonic()
        for i in range(4000):
            fuzzer.sendto(_fuzz(rng), ("127.0.0.1", server.port))
            if i % 400 == 0:  # valid messages in between
                value = round(rng.random(), 3)
                expected["/blend"] = value
                server.send("/blend", value, sock=fuzzer)
            if i % 50 == 0:
                # stay under the flood limit (2000/s, bursts of 2000) however fast this
                # machine sends: a fixed sleep let a fast, idle one send 10,000/s, and the
                # limiter then rightly dropped the last valid /blend with the junk
                time.sleep(max(0.0, began + i / 1500 - time.monotonic()))
    server.send("/feedback", 0.125)
    echoes: dict[str, list[Any]] = {}
    deadline = time.monotonic() + 10
    while "/feedback" not in echoes and time.monotonic() < deadline:
        for address, params in server.replies(0.2):
            if address != "/status":
                echoes.setdefault(address, []).append(params[0])
    assert echoes.pop("/feedback") == [0.125]
    assert set(echoes) <= {"/blend"}  # nothing but the valid messages changed anything
    assert echoes["/blend"][-1] == pytest.approx(expected["/blend"])
    out.wait_published(published + 5, timeout=30)  # frames kept flowing


def test_a_flood_is_cut_while_frames_keep_flowing(
    start: Callable[..., Running], caplog: pytest.LogCaptureFixture
) -> None:
    server = start(rate=300.0)  # low enough that a loaded CI machine still reads a flood
    out = memory.channel("out")
    published = out.published_count
    datagram = _dgram("/blend", 0.5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
        began = time.monotonic()
        while time.monotonic() - began < 2.0:
            for _ in range(200):
                flooder.sendto(datagram, ("127.0.0.1", server.port))
            time.sleep(0.001)
    out.wait_published(published + 10, timeout=30)  # frames flowed through the flood
    assert any("over 300/s" in r.getMessage() for r in caplog.records)
    server.replies(1.0)  # the echoes of the flood filled our reply socket's buffer
    server.send("/feedback", 0.5)  # and OSC still listens, to this sender and others
    assert server.echo_of("/feedback") == [0.5]
