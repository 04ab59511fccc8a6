"""The example OSC client, over real loopback UDP, parsed back with python-osc."""

from __future__ import annotations

import importlib.util
import itertools
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pythonosc import osc_bundle_builder, osc_message_builder
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient, UDPClient

from livediffusion.controls import CONTROL_ADDRESSES, ControlStore, parse_message
from livediffusion_bridge.osc import OscServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "osc" / "livediffusion_osc.py"


@pytest.fixture(scope="module")
def osc_cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("livediffusion_osc_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(1.0)
        yield sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


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


def test_known_addresses_match_the_server(osc_cli: ModuleType) -> None:
    assert set(osc_cli.KNOWN_ADDRESSES) == set(CONTROL_ADDRESSES)


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
    assert parse_message(address, tuple(params)) == {"strength": pytest.approx(0.6)}


def test_options_after_the_command(osc_cli: ModuleType, receiver: socket.socket) -> None:
    argv = ["set", "/pause", "1", "--host", "127.0.0.1", "--port", str(_port(receiver))]
    assert osc_cli.main(argv) == 0
    assert _receive(receiver, 1) == [("/pause", [1])]


def test_set_sends_whole_numbers_as_ints(osc_cli: ModuleType, receiver: socket.socket) -> None:
    assert osc_cli.main(["--port", str(_port(receiver)), "set", "/seed", "1234"]) == 0
    [(address, params)] = _receive(receiver, 1)
    assert (address, params) == ("/seed", [1234])
    assert isinstance(params[0], int)
    assert parse_message(address, tuple(params)) == {"seed": 1234}


def test_prompt_sends_one_string(osc_cli: ModuleType, receiver: socket.socket) -> None:
    port = str(_port(receiver))
    assert osc_cli.main(["--port", port, "prompt", "neon jellyfish"]) == 0
    assert osc_cli.main(["--port", port, "prompt", "deep", "sea", "glow"]) == 0
    assert _receive(receiver, 2) == [
        ("/prompt", ["neon jellyfish"]),
        ("/prompt", ["deep sea glow"]),
    ]
    assert parse_message("/prompt", ("neon jellyfish",)) == {"prompt": "neon jellyfish"}


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
        ["set", "strength", "0.5"],  # no leading slash
        ["sweep", "/strength", "0", "1", "--rate", "0"],
        ["sweep", "/strength", "0", "1", "--seconds", "-1"],
    ):
        with pytest.raises(SystemExit) as exc:
            osc_cli.main(argv)
        assert exc.value.code == 2


def test_listen_prints_what_arrives(
    osc_cli: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = _port(probe)  # free now; listen binds it again below
    codes: list[int] = []
    argv = ["--port", str(port), "listen", "--count", "1", "--seconds", "2"]
    thread = threading.Thread(target=lambda: codes.append(osc_cli.main(argv)))
    thread.start()
    client = SimpleUDPClient("127.0.0.1", port)
    while thread.is_alive():  # datagrams sent before the bind are simply lost: resend
        client.send_message("/feedback", 0.25)
        thread.join(timeout=0.02)
    assert codes == [0]
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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = _port(probe)
    bundle = osc_bundle_builder.OscBundleBuilder(osc_bundle_builder.IMMEDIATELY)
    message = osc_message_builder.OscMessageBuilder(address="blend")
    message.add_arg(1.0)
    bundle.add_content(message.build())
    codes: list[int] = []
    argv = ["listen", "--port", str(port), "--count", "1", "--seconds", "2"]
    thread = threading.Thread(target=lambda: codes.append(osc_cli.main(argv)))
    thread.start()
    client = UDPClient("127.0.0.1", port)
    while thread.is_alive():
        client.send(bundle.build())
        thread.join(timeout=0.02)
    assert codes == [0]
    assert "blend 1.0" in capsys.readouterr().out


def test_the_server_accepts_what_the_client_sends(osc_cli: ModuleType) -> None:
    store = ControlStore()
    with OscServer(store.handle_osc, host="127.0.0.1", port=0, poll_interval=0.02) as server:
        port = str(server.address[1])
        for argv in (
            ["set", "/strength", "0.6"],
            ["set", "/seed", "1234"],
            ["set", "/bypass", "1"],
            ["prompt", "neon", "jellyfish"],
            ["sweep", "/feedback", "0", "0.5", "--seconds", "0.02", "--rate", "100"],
        ):
            assert osc_cli.main(["--port", port, *argv]) == 0
        deadline = time.monotonic() + 1.0
        while server.counters.accepted < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        counters = server.counters
    assert (counters.accepted, counters.rejected, counters.malformed) == (7, 0, 0)
    controls = store.snapshot()
    assert controls.strength == pytest.approx(0.6)
    assert controls.seed == 1234
    assert controls.bypass is True
    assert controls.prompt == "neon jellyfish"
    assert controls.feedback == pytest.approx(0.5)
