"""The example OSC client and status panel, over real loopback UDP, against the real server code.

The server side here is the real :class:`OscServer` with the real :class:`ControlSurface`
(only the frame statistics are faked), so what the examples send is checked by the same code
that checks a live performance's messages.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import itertools
import json
import re
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pythonosc import osc_bundle_builder, osc_message_builder
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient, UDPClient

from livediffusion.control.controls import (
    CONTROLS,
    Controls,
    ControlStore,
    canonical_address,
    parse_message,
    preset_values,
)
from livediffusion.control.presets import PresetFile
from livediffusion.control.surface import ControlSurface, StatusValues
from livediffusion_bridge.osc import OscServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STATUS: StatusValues = (
    29.97,
    29.5,
    41.234,
    3,
    "sdxs-512-0.9",
    "torch-cuda float16",
    0,
    0.5,
    "0.8 0",
)
# What STATUS looks like after the server's rounding and float32 on the wire, as printed.
STATUS_SHOWN = {
    "in_fps": "29.97",
    "out_fps": "29.5",
    "latency_p50_ms": "41.23",
    "dropped": "3",
    "model": "sdxs-512-0.9",
    "backend": "torch-cuda float16",
    "osc_rejected": "0",
    "controlnet_scale": "0.5",
    "lora_weights": "0.8 0",
}

PANEL_LINE = (  # status_panel.py's line for STATUS
    "in 29.97 fps  out 29.5 fps  latency 41.23 ms  dropped 3  sdxs-512-0.9 on torch-cuda float16"
)


def _load(relative: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def osc_cli() -> ModuleType:
    return _load("osc/livediffusion_osc.py", "livediffusion_osc_example")


@pytest.fixture(scope="module")
def panel() -> ModuleType:
    return _load("osc/status_panel.py", "status_panel_example")


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        yield sock


@dataclass
class Served:
    store: ControlStore
    surface: ControlSurface
    server: OscServer

    @property
    def port(self) -> str:
        return str(self.server.address[1])

    def wait_accepted(self, count: int) -> None:
        assert _wait_for(lambda: self.server.counters.accepted >= count), self.server.counters


@contextlib.contextmanager
def _serving(tmp_path: Path, **surface_options: Any) -> Iterator[Served]:
    """A real OSC server and control surface on a free loopback port; presets in tmp_path."""
    store = ControlStore()
    surface = ControlSurface(
        store,
        presets=PresetFile(tmp_path / "presets.json"),
        status=lambda: STATUS,
        **surface_options,
    )
    with OscServer(surface.handle_osc, host="127.0.0.1", port=0, poll_interval=0.02) as server:
        surface.attach(server)
        yield Served(store, surface, server)


def _wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return _port(probe)  # free now; the code under test binds it again


def _receive(sock: socket.socket, count: int) -> list[tuple[str, list[Any]]]:
    messages = []
    for _ in range(count):
        message = OscMessage(sock.recv(65_535))
        messages.append((message.address, list(message.params)))
    return messages


def _nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(65_535)
    except TimeoutError:
        return True
    return False


def _run_while_sending(
    main: Callable[[Sequence[str]], int], argv: Sequence[str], send: Callable[[], None]
) -> int:
    """Run a listening ``main`` in a thread and keep sending until it returns.

    Datagrams sent before it binds its port are simply lost, so sending again and again is
    the only way to be sure it got some without a sleep that is sometimes too short.
    """
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)))
    thread.start()
    while thread.is_alive():
        send()
        thread.join(timeout=0.02)
    assert len(codes) == 1
    return codes[0]


def _datagram(address: str, *args: Any) -> bytes:
    builder = osc_message_builder.OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


# -- sending values -------------------------------------------------------------------------


def test_known_addresses_match_the_server(osc_cli: ModuleType) -> None:
    assert set(osc_cli.KNOWN_ADDRESSES) == set(CONTROLS)
    assert len(osc_cli.KNOWN_ADDRESSES) == len(CONTROLS)  # no duplicates either


def _spellings(address: str) -> list[str]:
    """How hosts send a table address: as is, without the slash, as a CHOP channel name."""
    bare = address[1:]
    return [address, bare, bare.replace("/", "_"), "/" + bare.replace("/", "_")]


def test_the_client_reads_an_address_as_the_server_does(osc_cli: ModuleType) -> None:
    """`set strength 0.66` was refused ("OSC addresses start with '/'") although the server
    takes `strength`, as TouchDesigner's CHOP channels send it."""
    spellings = [text for address in CONTROLS for text in _spellings(address)]
    junk = ["/nope", "strengthx", "/strength/", "prompt__mix", "/stage1/strength", "x"]
    for text in spellings + junk:
        assert osc_cli.canonical(text) == canonical_address(text), text
    assert all(osc_cli.canonical(text) is not None for text in spellings)


def test_the_client_reads_a_lora_address_as_the_server_does(osc_cli: ModuleType) -> None:
    """`set lora_1_weight 0.5` must send /lora/1/weight, which the server takes (a LoRA's
    number is not in the table: the styles store reads it)."""
    from livediffusion.control.styles import lora_address

    for text in ("/lora/1/weight", "lora_1_weight", "lora/0/on", "/lora_12_on"):
        index, part = lora_address(text) or ("", "")
        assert osc_cli.canonical(text) == f"/lora/{index}/{part}", text
    for text in ("/lora/x/weight", "/lora/1/volume", "/lora/1"):
        assert osc_cli.canonical(text) is None, text


@pytest.mark.parametrize("spelling", ["strength", "/strength", "prompt_mix", "seed"])
def test_set_takes_every_spelling_the_server_accepts(
    osc_cli: ModuleType, tmp_path: Path, spelling: str
) -> None:
    value = "7" if spelling == "seed" else "0.66"
    with _serving(tmp_path) as served:
        assert osc_cli.main(["--port", served.port, "set", spelling, value]) == 0
        served.wait_accepted(1)
    field = {"strength": "strength", "/strength": "strength", "prompt_mix": "prompt_mix"}
    snapshot = served.store.snapshot()
    if spelling == "seed":
        assert snapshot.seed == 7
    else:
        assert getattr(snapshot, field[spelling]) == pytest.approx(0.66)
    assert served.server.counters.rejected == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7", 7), ("-3", -3), ("0.5", 0.5), ("1e-2", 0.01), ("neon", "neon"), ("", "")],
)
def test_parse_value(osc_cli: ModuleType, text: str, expected: object) -> None:
    value = osc_cli.parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_set_sends_one_float(osc_cli: ModuleType, receiver: socket.socket) -> None:
    code = osc_cli.main(["--port", str(_port(receiver)), "set", "/strength", "0.6"])
    assert code == 0
    [(address, params)] = _receive(receiver, 1)
    assert address == "/strength"
    assert params == [pytest.approx(0.6)]
    assert isinstance(params[0], float)
    assert _nothing_more(receiver)
    command = parse_message(address, tuple(params))
    assert (command.spec.field, command.value) == ("strength", pytest.approx(0.6))


def test_options_after_the_command(osc_cli: ModuleType, receiver: socket.socket) -> None:
    argv = ["set", "/pause", "1", "--host", "127.0.0.1", "--port", str(_port(receiver))]
    assert osc_cli.main(argv) == 0
    assert _receive(receiver, 1) == [("/pause", [1])]


def test_set_sends_whole_numbers_as_ints(osc_cli: ModuleType, receiver: socket.socket) -> None:
    assert osc_cli.main(["--port", str(_port(receiver)), "set", "/seed", "1234"]) == 0
    [(address, params)] = _receive(receiver, 1)
    assert (address, params) == ("/seed", [1234])
    assert isinstance(params[0], int)
    command = parse_message(address, tuple(params))
    assert (command.spec.field, command.value) == ("seed", 1234)


def test_prompt_sends_one_string(osc_cli: ModuleType, receiver: socket.socket) -> None:
    port = str(_port(receiver))
    assert osc_cli.main(["--port", port, "prompt", "neon jellyfish"]) == 0
    assert osc_cli.main(["--port", port, "prompt", "deep", "sea", "glow"]) == 0
    assert _receive(receiver, 2) == [
        ("/prompt", ["neon jellyfish"]),
        ("/prompt", ["deep sea glow"]),
    ]
    command = parse_message("/prompt", ("neon jellyfish",))
    assert (command.spec.field, command.value) == ("prompt", "neon jellyfish")


def test_action_commands_send_the_table_addresses(
    osc_cli: ModuleType, receiver: socket.socket
) -> None:
    port = str(_port(receiver))
    for argv in (
        ["morph", "ink wash", "neon city"],
        ["morph", "a", "b", "--mix", "0.25"],
        ["preset", "save", "3"],
        ["preset", "recall", "12"],
        ["reset"],
    ):
        assert osc_cli.main(["--port", port, *argv]) == 0
    assert _receive(receiver, 8) == [
        ("/prompt/a", ["ink wash"]),
        ("/prompt/b", ["neon city"]),
        ("/prompt/a", ["a"]),
        ("/prompt/b", ["b"]),
        ("/prompt/mix", [0.25]),
        ("/preset/save", [3]),
        ("/preset/recall", [12]),
        ("/reset", []),
    ]
    assert _nothing_more(receiver)


def test_sweep_goes_from_start_to_end_monotonically(
    osc_cli: ModuleType, receiver: socket.socket
) -> None:
    argv = ["--port", str(_port(receiver)), "sweep", "/strength", "0.2", "1.0"]
    began = time.monotonic()
    assert osc_cli.main([*argv, "--seconds", "0.1", "--rate", "50"]) == 0
    elapsed = time.monotonic() - began
    messages = _receive(receiver, 6)  # 0.1 s at 50/s: 5 steps, 6 values
    assert _nothing_more(receiver)
    assert {address for address, _ in messages} == {"/strength"}
    values = [params[0] for _, params in messages]
    assert all(len(params) == 1 for _, params in messages)
    assert values[0] == pytest.approx(0.2)
    assert values[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert 0.09 <= elapsed < 0.9


def test_sweep_down_and_with_no_time(osc_cli: ModuleType, receiver: socket.socket) -> None:
    port = str(_port(receiver))
    assert osc_cli.main(["--port", port, "sweep", "/blend", "1", "0", "--seconds", "0"]) == 0
    assert _receive(receiver, 2) == [("/blend", [1.0]), ("/blend", [0.0])]
    assert _nothing_more(receiver)


def test_sweep_values(osc_cli: ModuleType) -> None:
    values = osc_cli.sweep_values(0.0, 1.0, 4.0, 30.0)
    assert len(values) == 121
    assert values[0] == 0.0
    assert values[-1] == 1.0


def test_cycle_prompts_loops_and_stops_at_count(
    osc_cli: ModuleType, receiver: socket.socket
) -> None:
    argv = ["--port", str(_port(receiver)), "cycle-prompts", "a", "b", "c"]
    assert osc_cli.main([*argv, "--every", "0.01", "--count", "5"]) == 0
    assert _receive(receiver, 5) == [("/prompt", [p]) for p in ["a", "b", "c", "a", "b"]]
    assert _nothing_more(receiver)


def test_bad_arguments_exit_with_usage(osc_cli: ModuleType) -> None:
    for argv in (
        ["set", "", "0.5"],  # no address at all
        ["set", "/", "0.5"],
        ["sweep", "/strength", "0", "1", "--rate", "0"],
        ["sweep", "/strength", "0", "1", "--seconds", "-1"],
        ["--prefix", "stage1", "reset"],  # a prefix starts with a slash ...
        ["reset", "--prefix", "/stage1/"],  # ... and does not end with one
        ["preset", "load", "3"],
        ["preset", "save", "three"],
        ["status", "--timeout", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            osc_cli.main(argv)
        assert exc.value.code == 2, argv


def test_the_server_accepts_what_the_client_sends(osc_cli: ModuleType, tmp_path: Path) -> None:
    with _serving(tmp_path) as served:
        for argv in (
            ["set", "/strength", "0.6"],
            ["set", "/seed", "1234"],
            ["set", "/bypass", "1"],
            ["set", "/glide", "2.5"],
            ["prompt", "neon", "jellyfish"],
            ["morph", "ink wash", "neon city", "--mix", "0.25"],
            ["reset"],
            ["sweep", "/feedback", "0", "0.5", "--seconds", "0.02", "--rate", "100"],
        ):
            assert osc_cli.main(["--port", served.port, *argv]) == 0
        served.wait_accepted(12)
        counters = served.server.counters
    assert (counters.accepted, counters.rejected, counters.malformed) == (12, 0, 0)
    controls = served.store.snapshot()
    assert controls.strength == pytest.approx(0.6)
    assert controls.seed == 1234
    assert controls.bypass is True
    assert controls.glide == pytest.approx(2.5)
    assert controls.prompt == "ink wash"  # /prompt/a is /prompt, and it came last
    assert controls.prompt_b == "neon city"
    assert controls.prompt_mix == pytest.approx(0.25)
    assert controls.feedback == pytest.approx(0.5)
    assert served.store.resets == 1


# -- asking: status and ping ----------------------------------------------------------------


def test_status_prints_the_labelled_fields(
    osc_cli: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _serving(tmp_path) as served:
        assert osc_cli.main(["--port", served.port, "status"]) == 0
        served.wait_accepted(1)  # counted once the handler has returned, after the reply
        counters = served.server.counters
    first, *rest = capsys.readouterr().out.splitlines()
    assert first == f"/status from 127.0.0.1:{served.port}"
    assert dict(line.split(maxsplit=1) for line in rest) == STATUS_SHOWN
    assert [line.split()[0] for line in rest] == list(osc_cli.STATUS_FIELDS)  # in order
    assert counters.accepted == 1


def test_status_with_nobody_answering(
    osc_cli: ModuleType, receiver: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _port(receiver)  # bound but silent: the question arrives, no answer comes
    began = time.monotonic()
    assert osc_cli.main(["--port", str(port), "status", "--timeout", "0.2"]) == 1
    assert 0.2 <= time.monotonic() - began < 1.5
    assert _receive(receiver, 1) == [("/status", [])]
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"no reply from 127.0.0.1:{port} in 0.2 s: "
        f"is livediffusion serve running with --osc-port {port}?"
    )


def test_ping_prints_the_round_trip(
    osc_cli: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _serving(tmp_path) as served:
        assert osc_cli.main(["--port", served.port, "ping", "--timeout", "2"]) == 0
    out = capsys.readouterr().out
    match = re.fullmatch(rf"/pong from 127\.0\.0\.1:{served.port} in (\d+\.\d\d) ms\n", out)
    assert match is not None, out
    assert 0.0 < float(match.group(1)) < 2000.0


def test_ping_ignores_junk_and_pongs_that_are_not_ours(
    osc_cli: ModuleType, receiver: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a /pong carrying our own token counts; junk on the socket is skipped."""
    port = _port(receiver)

    def answer_wrongly() -> None:
        data, sender = receiver.recvfrom(65_535)
        (token,) = OscMessage(data).params
        receiver.sendto(b"not osc at all", sender)
        receiver.sendto(_datagram("/pong", token + 1), sender)
        receiver.sendto(_datagram("/pang", token), sender)

    thread = threading.Thread(target=answer_wrongly)
    thread.start()
    assert osc_cli.main(["--port", str(port), "ping", "--timeout", "0.3"]) == 1
    thread.join(timeout=2)
    assert "no reply from" in capsys.readouterr().err


def test_prefix_goes_in_front_of_every_address(
    osc_cli: ModuleType, receiver: socket.socket
) -> None:
    port = str(_port(receiver))
    for argv in (
        ["--prefix", "/stage1", "set", "/strength", "0.5"],
        ["prompt", "ink", "--prefix", "/stage1"],
        ["--prefix", "/stage1", "preset", "recall", "2"],
        ["--prefix", "/stage1", "reset"],
        ["--prefix", "/stage1", "status", "--timeout", "0.05"],
    ):
        osc_cli.main(["--port", port, *argv])
    assert _receive(receiver, 5) == [
        ("/stage1/strength", [0.5]),
        ("/stage1/prompt", ["ink"]),
        ("/stage1/preset/recall", [2]),
        ("/stage1/reset", []),
        ("/stage1/status", []),
    ]


def test_prefix_against_a_prefixed_server(
    osc_cli: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _serving(tmp_path, prefix="/stage1") as served:
        port = served.port
        assert osc_cli.main(["--prefix", "/stage1", "--port", port, "set", "/strength", "0.3"]) == 0
        assert osc_cli.main(["--port", port, "set", "/feedback", "0.9"]) == 0  # no prefix
        assert _wait_for(lambda: served.server.counters.rejected == 1)
        assert osc_cli.main(["--port", port, "--prefix", "/stage1", "status"]) == 0
        assert osc_cli.main(["--port", port, "ping", "--prefix", "/stage1"]) == 0
        capsys.readouterr()
        assert osc_cli.main(["--port", port, "status", "--timeout", "0.1"]) == 1
        assert _wait_for(lambda: served.server.counters.rejected == 2)
        served.wait_accepted(3)
        counters = served.server.counters
    assert (counters.accepted, counters.rejected) == (3, 2)
    controls = served.store.snapshot()
    assert controls.strength == pytest.approx(0.3)
    assert controls.feedback == Controls().feedback  # the unprefixed one was dropped
    assert "no reply" in capsys.readouterr().err


def test_prefixed_replies_are_labelled_with_the_prefix(
    osc_cli: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with _serving(tmp_path, prefix="/stage2") as served:
        assert osc_cli.main(["--port", served.port, "--prefix", "/stage2", "status"]) == 0
        assert osc_cli.main(["--port", served.port, "--prefix", "/stage2", "ping"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"/stage2/status from 127.0.0.1:{served.port}"
    assert lines[-1].startswith(f"/stage2/pong from 127.0.0.1:{served.port} in ")


# -- presets --------------------------------------------------------------------------------


def test_preset_save_and_recall_round_trip(osc_cli: ModuleType, tmp_path: Path) -> None:
    with _serving(tmp_path) as served:
        port, store = served.port, served.store

        def send(*argv: str) -> None:
            before = served.server.counters.accepted
            assert osc_cli.main(["--port", port, *argv]) == 0
            served.wait_accepted(before + 1)  # in order: each lands before the next

        send("set", "/strength", "0.3")
        send("set", "/seed", "7")
        send("set", "/smoothing", "0.8")
        send("prompt", "ink wash")
        send("set", "/prompt/b", "neon city")
        send("set", "/prompt/mix", "0.25")
        saved = preset_values(store.snapshot())
        send("preset", "save", "3")
        document = json.loads((tmp_path / "presets.json").read_text("utf-8"))
        assert document["presets"]["3"] == saved

        send("set", "/strength", "0.9")
        send("set", "/seed", "99")
        send("prompt", "moss")
        send("set", "/bypass", "1")
        assert preset_values(store.snapshot()) != saved

        send("preset", "recall", "3")
        assert preset_values(store.snapshot()) == saved
        assert store.snapshot().prompt == "ink wash"

        before = served.server.counters.rejected
        assert osc_cli.main(["--port", port, "preset", "recall", "4"]) == 0  # never saved
        assert _wait_for(lambda: served.server.counters.rejected == before + 1)
    assert preset_values(store.snapshot()) == saved  # a failed recall changes nothing


# -- listening: listen, watch and the status panel ------------------------------------------


def test_listen_prints_what_arrives(
    osc_cli: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    client = SimpleUDPClient("127.0.0.1", port)
    argv = ["--port", str(port), "listen", "--count", "1", "--seconds", "2"]
    code = _run_while_sending(osc_cli.main, argv, lambda: client.send_message("/feedback", 0.25))
    assert code == 0
    assert "/feedback 0.25" in capsys.readouterr().out


def test_listen_shows_addresses_without_a_slash_inside_bundles(osc_cli: ModuleType) -> None:
    # What we can't check without TouchDesigner: does its OSC Out CHOP prefix a "/"?
    # `listen` must show either answer, including inside a bundle.
    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    for address, value in (("/strength", 0.5), ("feedback", 0.25)):
        message = osc_message_builder.OscMessageBuilder(address=address)
        message.add_arg(value)
        bundle.add_content(message.build())
    datagram = bundle.build().dgram
    parsed = [(m.address, m.params) for m in osc_cli.osc_messages(datagram)]
    assert parsed == [("/strength", [0.5]), ("feedback", [0.25])]
    plain = osc_message_builder.OscMessageBuilder(address="strength")
    plain.add_arg(0.5)
    assert [m.address for m in osc_cli.osc_messages(plain.build().dgram)] == ["strength"]


def test_listen_prints_bundled_messages(
    osc_cli: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    message = osc_message_builder.OscMessageBuilder(address="blend")
    message.add_arg(1.0)
    bundle.add_content(message.build())
    client = UDPClient("127.0.0.1", port)
    argv = ["listen", "--port", str(port), "--count", "1", "--seconds", "2"]
    assert _run_while_sending(osc_cli.main, argv, lambda: client.send(bundle.build())) == 0
    assert "blend 1.0" in capsys.readouterr().out


def test_watch_prints_the_reply_stream(
    osc_cli: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real --osc-reply stream: /status ticks and --osc-echo changes, one line each."""
    port = _free_port()
    with _serving(tmp_path, reply_to=("127.0.0.1", port), echo=True) as served:
        strengths = itertools.cycle([0.5, 0.75])

        def tick() -> None:
            served.surface.send_status()
            served.store.update(strength=next(strengths))  # echoed as /strength 0.5 ...

        argv = ["watch", "--port", str(port), "--count", "4", "--seconds", "3"]
        assert _run_while_sending(osc_cli.main, argv, tick) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    stamp = r"\d\d:\d\d:\d\d "
    status = "/status  " + "  ".join(f"{k}={v}" for k, v in STATUS_SHOWN.items())
    for line in lines:
        assert re.fullmatch(stamp + "(.*)", line), line
    texts = {line[9:] for line in lines}
    assert status in texts
    assert texts & {"/strength 0.5", "/strength 0.75"}
    assert texts <= {status, "/strength 0.5", "/strength 0.75"}


def test_watch_listens_on_9001_by_default(osc_cli: ModuleType) -> None:
    args = osc_cli.build_parser().parse_args(["watch"])
    assert args.port is None  # main() then picks REPLY_PORT, not the server's 9000
    assert (osc_cli.REPLY_PORT, osc_cli.SERVER_PORT) == (9001, 9000)


JUNK = [
    b"",
    b"not osc at all",
    b"#bundle\x00" + bytes(8),  # the server never sends bundles
    b"/status\x00,f\x00\x00",  # a float tag without its 4 bytes
    b"/status\x00,z\x00\x00",  # a type the panel does not read
    b"/status\x00,s\x00\x00abc",  # a string without its NUL
    b"/prompt\x00,s\x00\x00\xff\xfe\x00\x00",  # not UTF-8
    b"/x\x00\x00f\x00\x00\x00",  # type tags without the comma
    b"/x\x00\x00,i\x00\x00\x00\x00",  # an int tag with 2 of its 4 bytes
]


def test_status_panel_decodes_what_python_osc_builds(panel: ModuleType) -> None:
    address, args = panel.decode(_datagram("/status", *STATUS))
    assert address == "/status"
    assert args == [
        pytest.approx(29.97),
        pytest.approx(29.5),
        pytest.approx(41.234),
        3,
        "sdxs-512-0.9",
        "torch-cuda float16",
        0,
        pytest.approx(0.5),
        "0.8 0",
    ]
    assert panel.decode(_datagram("/prompt", "café ☕")) == ("/prompt", ["café ☕"])


def test_every_status_reader_takes_six_fields_and_any_added_after_them(
    osc_cli: ModuleType, panel: ModuleType
) -> None:
    """/status gained osc_rejected at the end: readers of the first six keep working, with a
    server older (6 fields) or newer (8) than themselves."""
    six, seven = STATUS[:6], (*STATUS[:6], 12)
    eight = (*seven, "a field from the future")
    assert panel.status_line(six) == PANEL_LINE
    assert panel.status_line(seven) == PANEL_LINE + "  OSC rejected 12"
    assert panel.status_line(eight) == PANEL_LINE + "  OSC rejected 12"
    with pytest.raises(ValueError):
        panel.status_line(STATUS[:5])
    for args in (six, seven, eight):
        line = osc_cli.watch_line(OscMessage(_datagram("/status", *args)))
        assert "latency_p50_ms=41.23" in line and "backend=torch-cuda float16" in line
    assert "osc_rejected=12" in osc_cli.watch_line(OscMessage(_datagram("/status", *seven)))
    tables = {"ld_status": FakeTableDAT(), "ld_values": FakeTableDAT()}
    callback = _readme_callback(tables)
    for args in (eight, six):
        callback(None, 0, None, b"", 0.0, "/status", list(args), None)
    rows = tables["ld_status"].rows
    assert rows[:6] == [[k, v] for k, v in list(STATUS_SHOWN.items())[:6]]
    assert rows[6] == ["osc_rejected", "12"]  # a 6-field server leaves the 7th as it was


@pytest.mark.parametrize("junk", JUNK)
def test_status_panel_decoder_rejects_junk(panel: ModuleType, junk: bytes) -> None:
    with pytest.raises(ValueError):
        panel.decode(junk)


def test_status_panel_prints_the_status_line_and_survives_junk(
    panel: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    datagrams = [
        *JUNK,
        _datagram("/status", *STATUS[:2]),  # a /status it cannot show: skipped too
        _datagram("/strength", 0.5),  # an --osc-echo change: shown after the next status
        _datagram("/status", *STATUS),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        def send() -> None:
            for datagram in datagrams:
                sock.sendto(datagram, ("127.0.0.1", port))

        argv = ["--port", str(port), "--count", "2", "--seconds", "3"]
        assert _run_while_sending(panel.main, argv, send) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(PANEL_LINE) for line in lines)
    assert lines[-1] == PANEL_LINE + "  | /strength 0.5"  # the second one came after an echo


def test_status_panel_shows_the_real_servers_status(
    panel: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _free_port()
    with _serving(tmp_path, prefix="/stage1", reply_to=("127.0.0.1", port)) as served:
        argv = ["--port", str(port), "--count", "1", "--seconds", "3"]
        assert _run_while_sending(panel.main, argv, served.surface.send_status) == 0
    assert capsys.readouterr().out == PANEL_LINE + "\n"


def test_status_panel_uses_only_the_standard_library() -> None:
    tree = ast.parse((EXAMPLES / "osc" / "status_panel.py").read_text("utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# -- what the TouchDesigner guide has TouchDesigner send and receive ------------------------

TD_README = EXAMPLES / "touchdesigner" / "README.md"


def _chop_bundle(channels: dict[str, float]) -> bytes:
    """What an OSC Out CHOP sends, per Derivative's docs: channel name as the address, one
    float each, time-stamped (so in a bundle with a real time tag, not "immediately")."""
    bundle = osc_bundle_builder.OscBundleBuilder(time.time() + 0.01)
    for name, value in channels.items():
        message = osc_message_builder.OscMessageBuilder(address=name)
        message.add_arg(float(value), "f")
        bundle.add_content(message.build())
    return bytes(bundle.build().dgram)


def test_chop_channel_names_reach_the_store(tmp_path: Path, receiver: socket.socket) -> None:
    channels = {
        "strength": 0.25,  # no leading slash
        "/feedback": 0.5,  # with one
        "prompt_mix": 0.75,  # an underscore for a slash
        "seed": 7.0,  # a whole float for an int control
        "bypass": 1.0,
        "seed_glide": 2.0,
    }
    with _serving(tmp_path) as served:
        receiver.sendto(_chop_bundle(channels), served.server.address)
        served.wait_accepted(len(channels))
        counters = served.server.counters
    assert (counters.accepted, counters.rejected, counters.malformed) == (6, 0, 0)
    controls = served.store.snapshot()
    assert (controls.strength, controls.feedback, controls.prompt_mix) == (0.25, 0.5, 0.75)
    assert controls.seed == 7
    assert isinstance(controls.seed, int)
    assert controls.bypass is True
    assert controls.seed_glide == 2.0


def test_prefixed_chop_channel_names(tmp_path: Path, receiver: socket.socket) -> None:
    with _serving(tmp_path, prefix="/stage1") as served:
        channels = {"stage1/strength": 0.25, "/stage1/prompt_mix": 0.5, "stage1_blend": 0.75}
        receiver.sendto(_chop_bundle(channels), served.server.address)
        served.wait_accepted(3)
        assert served.server.counters.rejected == 0
    controls = served.store.snapshot()
    assert (controls.strength, controls.prompt_mix, controls.blend) == (0.25, 0.5, 0.75)


def test_every_address_in_the_touchdesigner_guide_is_real() -> None:
    text = TD_README.read_text("utf-8")
    sent = re.findall(r'send(?:OSC)?\("(/[^"]*)"', text)
    assert len(sent) >= 8
    for address in sent:
        assert canonical_address(address) or canonical_address(address, prefix="/stage1"), address
    # section 3's table: channel name -> the address the server reads it as
    rows = re.findall(r"^\| `([a-z_]+)` \| `(/[a-z/]+)` \|", text, flags=re.MULTILINE)
    assert len(rows) == 11
    for channel, address in rows:
        assert canonical_address(channel) == address
        assert CONTROLS[address].kind in ("float", "int", "switch")  # a CHOP sends numbers


class FakeTableDAT:
    """The few Table DAT calls the guide's callback makes (TouchDesigner's camelCase names);
    cells hold strings, as in TouchDesigner."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []

    @property
    def numRows(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        self.rows = []

    def appendRow(self, cells: Sequence[object]) -> None:
        self.rows.append([str(cell) for cell in cells])

    def _index(self, key: int | str) -> int | None:
        if isinstance(key, int):
            return key if key < len(self.rows) else None
        return next((i for i, row in enumerate(self.rows) if row[0] == key), None)

    def row(self, key: int | str) -> list[str] | None:
        index = self._index(key)
        return None if index is None else self.rows[index]

    def __setitem__(self, where: tuple[int | str, int], value: object) -> None:
        index = self._index(where[0])
        assert index is not None, f"no row {where[0]!r}"  # TD would raise too
        self.rows[index][where[1]] = str(value)


def _readme_callback(tables: dict[str, FakeTableDAT]) -> Callable[..., None]:
    blocks = re.findall(r"```python\n(.*?)```", TD_README.read_text("utf-8"), flags=re.DOTALL)
    [block] = [b for b in blocks if "def onReceiveOSC" in b]
    namespace: dict[str, Any] = {"op": tables.get}
    exec(compile(textwrap.dedent(block), str(TD_README), "exec"), namespace)
    callback: Callable[..., None] = namespace["onReceiveOSC"]
    return callback


@pytest.mark.parametrize("prefix", ["", "/stage1"])
def test_the_guides_status_callback_fills_its_tables(
    tmp_path: Path, receiver: socket.socket, prefix: str
) -> None:
    """The real --osc-reply stream, decoded, into the guide's OSC In DAT callback."""
    suffix = prefix.replace("/", "_")
    tables = {"ld_status" + suffix: FakeTableDAT(), "ld_values": FakeTableDAT()}
    callback = _readme_callback(tables)
    reply_to = ("127.0.0.1", _port(receiver))
    with _serving(tmp_path, prefix=prefix, reply_to=reply_to, echo=True) as served:
        served.surface.send_status()
        served.store.update(strength=0.5, prompt="neon jellyfish", bypass=True)
        served.surface.send_status()  # a second tick rewrites the rows, adds none
        served.store.update(strength=0.75)
    for _ in range(6):
        message = OscMessage(receiver.recv(65_535))
        args = list(message.params)
        callback(None, 0, None, b"", 0.0, message.address, args, None)
    assert _nothing_more(receiver)
    assert tables["ld_status" + suffix].rows == [[k, v] for k, v in STATUS_SHOWN.items()]
    assert tables["ld_values"].rows == [
        [f"{prefix}/strength", "0.75"],
        [f"{prefix}/prompt", "neon jellyfish"],
        [f"{prefix}/bypass", "1"],
    ]
