"""The OBS script against a contract fake of ``obspython``: its properties, the OSC it sends
(to a real UDP listener), the status it shows, how it finds, starts, restarts and stops the
server (here a stand-in executable), and ``livediffusion hosts``."""

from __future__ import annotations

import ast
import fnmatch
import functools
import os
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from livediffusion.cli import main
from livediffusion.control.controls import CONTROLS, Controls, parse_message
from livediffusion.hosts import HOST_FILES
from livediffusion_models.registry import MODELS
from loopback import free_udp_port
from obspython_fake import ContractError, Host, install, loaded

SCRIPT = HOST_FILES["obs"]
posix_only = pytest.mark.skipif(os.name == "nt", reason="stand-ins run by their #! line")


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Host]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the server logs go here
    yield from loaded(install(monkeypatch))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        yield sock


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _messages(sock: socket.socket, seconds: float = 0.3) -> list[OscMessage]:
    """Every message that arrives within ``seconds``, /status questions left out."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        message = OscMessage(data)
        if message.address != "/status":
            found.append(message)
    return found


def _controller(host: Host) -> Any:
    assert host.module is not None
    return host.module._controller


def _load(host: Host, **values: object) -> ModuleType:
    values.setdefault("autostart", False)
    module = host.load(SCRIPT, values)
    host.show()
    return module


# --- properties ----------------------------------------------------------------------------


def test_the_properties_hold_the_servers_controls_with_their_ranges(host: Host) -> None:
    _load(host)
    defaults = Controls()
    for name in ("strength", "feedback", "smoothing", "blend"):
        prop, spec = host.prop(name), CONTROLS["/" + name]
        assert (prop.kind, prop.slider) == ("float", True)
        assert (prop.low, prop.high) == (spec.low, spec.high)
        assert host.settings.get(name, float) == getattr(defaults, name)
    seed = host.prop("seed")
    assert seed.kind == "int" and seed.low == CONTROLS["/seed"].low
    assert seed.high == 2**31 - 1 and CONTROLS["/seed"].high is not None
    assert seed.high <= CONTROLS["/seed"].high
    assert host.settings.get("seed", int) == defaults.seed
    assert host.prop("bypass").kind == "bool" and host.settings.get("bypass", bool) is False
    assert host.prop("prompt").kind == "text"
    assert host.settings.get("prompt", str) == defaults.prompt
    model = host.prop("model")
    assert [value for _, value in model.items] == list(MODELS)
    assert host.settings.get("model", str) == next(iter(MODELS))
    assert (host.prop("osc_port").low, host.prop("osc_port").high) == (1, 65535)
    assert host.prop("status").text_type == 3  # OBS_TEXT_INFO: read-only
    assert host.props is not None
    buttons = {name for name, prop in host.props.items.items() if prop.kind == "button"}
    assert buttons == {"start", "stop", "refresh"}
    assert host.prop("executable").kind == "path"


def test_the_default_source_and_sink_suit_the_os(host: Host) -> None:
    module = _load(host)
    assert module.default_endpoints("darwin") == (
        "camera://OBS Virtual Camera",
        "syphon://livediffusion",
    )
    assert module.default_endpoints("win32")[1].startswith("spout://")
    assert module.default_endpoints("linux") == ("ndi://livediffusion-in", "ndi://livediffusion")
    source, sink = module.default_endpoints(sys.platform)
    assert (host.text("source"), host.text("sink")) == (source, sink)


def test_one_timer_runs_while_loaded_and_none_after(host: Host) -> None:
    module = _load(host)
    assert list(host.world.timers.values()) == [module.TICK_MS]
    host.set("strength", 0.5)  # updates add no timers
    assert len(host.world.timers) == 1
    host.unload()
    assert host.world.timers == {}


def test_the_fake_refuses_what_obs_refuses(host: Host) -> None:
    """So a script that misuses the API fails these tests rather than OBS."""
    _load(host)
    obs: Any = sys.modules["obspython"]
    with pytest.raises(ContractError, match="outside script_properties"):
        obs.obs_properties_create()
    with pytest.raises(ContractError, match="outside script_properties"):
        obs.obs_property_set_enabled(host.prop("seed"), False)  # later, from a timer
    with pytest.raises(TypeError, match="expected int"):
        obs.obs_data_set_int(host.settings, "seed", 1.5)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        obs.obs_data_get_string(host.settings)
    with pytest.raises(TypeError, match="expected int"):
        obs.timer_add(lambda: None, 2.5)
    host.prop("start").callback = lambda props, prop: None
    with pytest.raises(ContractError, match="not a bool"):
        host.click("start")


def test_a_button_callback_that_is_no_plain_function_is_dropped_as_obs_drops_it(
    host: Host,
) -> None:
    """obs-scripting-python.c properties_add_button: PyFunction_Check, else None and no
    button. Plain functions and lambdas are functions; bound methods, partials, callable
    objects and builtins are not."""
    _load(host)
    obs: Any = sys.modules["obspython"]

    class Panel:
        def press(self, props: object, prop: object) -> bool:
            return False

        def __call__(self, props: object, prop: object) -> bool:
            return False

    def plain(props: object, prop: object) -> bool:
        return False

    host.world.phase, host.world.showing = "properties", host.world.showing + 1
    props = obs.obs_properties_create()
    kept = {
        "plain": plain,
        "lambda": lambda props, prop: False,
    }
    dropped = {
        "method": Panel().press,
        "partial": functools.partial(lambda which, props, prop: False, "x"),
        "object": Panel(),
        "builtin": print,
    }
    for name, callback in {**kept, **dropped}.items():
        added = obs.obs_properties_add_button(props, name, name, callback)
        assert (added is None) is (name in dropped), name
    assert set(props.items) == set(kept)
    assert len(host.world.dropped) == len(dropped)
    # The script's own buttons all pass that rule (each is a module-level function).
    host.world.phase = "idle"
    host.show()
    assert len(host.world.dropped) == len(dropped)
    assert host.props is not None and {"start", "stop", "refresh"} <= set(host.props.items)


# --- OSC -----------------------------------------------------------------------------------


def test_the_osc_encoder_speaks_python_oscs_language(host: Host) -> None:
    module = _load(host)
    for address, args in (
        ("/strength", (0.25,)),
        ("/seed", (4_000_000,)),
        ("/prompt", ("neon jellyfish, ünïcode ✓",)),
        ("/prompt", ("abc",)),  # exactly 3 bytes + NUL: no extra padding
        ("/status", ()),
        ("/mixed", (1, 0.5, "x")),
    ):
        message = OscMessage(module.osc_message(address, *args))
        assert message.address == address
        assert list(message.params) == pytest.approx(list(args))
    with pytest.raises(TypeError):
        module.osc_message("/bypass", True)  # bools go as 0/1 ints, said once, here

    builder = OscMessageBuilder("/status")
    for value in (29.5, 20.25, 63.0, 12, "sdxs-512-0.9", "torch-cpu float32"):
        builder.add_arg(value)
    address, args = module.parse_osc(builder.build().dgram)
    assert address == "/status"
    assert args == [29.5, 20.25, 63.0, 12, "sdxs-512-0.9", "torch-cpu float32"]
    for junk in (b"", b"status\0\0", b"/x\0\0,q\0\0", b"/x\0\0,i\0\0\0\0"):
        with pytest.raises(ValueError):
            module.parse_osc(junk)


@pytest.mark.parametrize(
    ("name", "value", "sent"),
    [
        ("strength", 0.25, 0.25),
        ("feedback", 0.75, 0.75),
        ("smoothing", 0.5, 0.5),
        ("blend", 0.125, 0.125),
        ("seed", 12345, 12345),
        ("bypass", True, 1),
    ],
)
def test_a_property_change_sends_its_osc_message_to_the_servers_port(
    host: Host, listener: socket.socket, name: str, value: object, sent: object
) -> None:
    _load(host, osc_port=_port(listener))
    host.set(name, value)
    messages = _messages(listener)
    assert [(m.address, list(m.params)) for m in messages] == [("/" + name, [sent])]
    assert type(messages[0].params[0]) is type(sent)  # an int stays an int, a float a float
    command = parse_message(messages[0].address, tuple(messages[0].params))
    assert command.value == value  # and the server takes it as that value


def test_the_prompt_goes_once_typing_pauses(host: Host, listener: socket.socket) -> None:
    module = _load(host, osc_port=_port(listener))
    for typed in ("n", "ne", "neon jellyfish"):  # OBS calls script_update per keystroke
        host.set("prompt", typed)
    host.tick()
    assert _messages(listener, 0.1) == []
    time.sleep(module.PROMPT_SETTLE_S)
    host.tick()
    assert [(m.address, list(m.params)) for m in _messages(listener)] == [
        ("/prompt", ["neon jellyfish"])
    ]


def test_an_unchanged_value_sends_nothing(host: Host, listener: socket.socket) -> None:
    _load(host, osc_port=_port(listener))
    host.set("strength", 1.0)  # the default: no change
    host.set("source", "ndi://elsewhere")  # a server setting: applied on restart, not OSC
    assert _messages(listener) == []


@pytest.mark.parametrize("later", [(), (4,)], ids=["six fields", "osc_rejected after"])
def test_the_servers_status_shows_in_the_properties(
    host: Host, listener: socket.socket, later: tuple[int, ...]
) -> None:
    """A server (here a socket) answers /status; the script shows it and, meeting the server,
    gives it every current value. Fields after the first six (osc_rejected) are ignored."""
    _load(host, osc_port=_port(listener), bypass=True, seed=9)
    host.tick()
    data, sender = listener.recvfrom(65535)
    assert OscMessage(data).address == "/status"
    builder = OscMessageBuilder("/status")
    for value in (29.5, 20.0, 63.2, 12, "sdxs-512-0.9", "torch-cpu float32", *later):
        builder.add_arg(value)
    listener.sendto(builder.build().dgram, sender)
    assert host.tick_until(lambda: "29.5" in host.text("status"), 2.0), host.text("status")
    status = host.text("status")
    assert "in 29.5 fps, out 20.0 fps, latency 63 ms, dropped 12" in status
    assert "sdxs-512-0.9 on torch-cpu float32" in status
    assert "did not start" in status  # nothing of ours runs
    pushed = {m.address: list(m.params) for m in _messages(listener)}
    assert set(pushed) == {f"/{key}" for key in _controller(host).look}
    assert pushed["/bypass"] == [1] and pushed["/seed"] == [9]
    shown = host.props
    assert host.click("refresh") is True and host.props is not shown  # redrawn


# --- finding, starting, restarting and stopping the server ---------------------------------


def _executable(folder: Path, body: str, name: str = "livediffusion") -> Path:
    """A stand-in for the livediffusion command: a Python script that records its argv."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(
        f"#!{sys.executable}\nimport sys, os, signal, time\n"
        f"open({str(folder / 'runs')!r}, 'a').write(repr(sys.argv[1:]) + '\\n')\n{body}\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _runs(folder: Path) -> list[list[str]]:
    runs = folder / "runs"
    return (
        [ast.literal_eval(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    )


def test_the_executable_is_found_in_the_environment_the_script_was_installed_into(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load(host)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for layout, windows in (
        (("bin", "livediffusion"), False),
        (("Scripts", "livediffusion.exe"), True),
    ):
        env = tmp_path / ("win" if windows else "posix") / "env"
        packages = "Lib" if windows else "lib/python3.12"
        script = env / packages / "site-packages/livediffusion/hosts/obs/livediffusion_obs.py"
        script.parent.mkdir(parents=True)
        script.write_text("")
        command = env.joinpath(*layout)
        command.parent.mkdir()
        command.write_text("")
        assert module.find_executable("", script, windows=windows) == (
            str(command),
            "the environment this script belongs to",
        )
        user = tmp_path / "mine"
        user.write_text("")
        assert module.find_executable(str(user), script, windows=windows)[0] == str(user)
        missing, why = module.find_executable(str(tmp_path / "nope"), script, windows=windows)
        assert missing is None and "nope" in why


@posix_only
def test_path_is_the_last_resort_and_a_missing_command_is_said(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _load(host)
    alone = tmp_path / "alone" / "livediffusion_obs.py"
    alone.parent.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found, why = module.find_executable("", alone, windows=False)
    assert found is None and "livediffusion hosts --path obs" in why
    on_path = _executable(tmp_path / "on-path", "")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert module.find_executable("", alone, windows=False) == (str(on_path), "PATH")


def test_start_without_an_executable_says_so_and_runs_nothing(host: Host, tmp_path: Path) -> None:
    _load(host, executable=str(tmp_path / "nowhere" / "livediffusion"))
    assert host.click("start") is True
    assert _controller(host).proc is None
    status = host.text("status")
    assert status.startswith("stopped")
    assert f"livediffusion not found at {tmp_path / 'nowhere' / 'livediffusion'}" in status


@posix_only
def test_start_runs_serve_with_the_settings_and_stop_ends_it(host: Host, tmp_path: Path) -> None:
    command = _executable(tmp_path / "env", "time.sleep(60)")
    port = free_udp_port()
    _load(
        host,
        executable=str(command),
        osc_port=port,
        source="test://pattern",
        sink="memory://out",
        model="sd-turbo",
        strength=0.5,
        extra_args='--size 384 --prompt-b "ink wash"',
    )
    host.click("start")
    proc = _controller(host).proc
    assert proc is not None and proc.poll() is None
    assert f"starting (pid {proc.pid}" in host.text("status")
    assert host.tick_until(lambda: bool(_runs(command.parent)), 10)
    argv = _runs(command.parent)[0]
    assert argv[0] == "serve"
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--source"] == "test://pattern" and pairs["--sink"] == "memory://out"
    assert pairs["--model"] == "sd-turbo" and pairs["--osc-port"] == str(port)
    assert pairs["--strength"] == "0.5" and pairs["--seed"] == "42"
    assert argv[-4:] == ["--size", "384", "--prompt-b", "ink wash"]
    host.set("model", "sdxs-512-dreamshaper")
    assert "press 'Start / restart server' to apply" in host.text("status")
    host.click("stop")
    assert proc.returncode == -signal.SIGTERM
    assert _controller(host).proc is None and host.text("status").startswith("stopped")


@posix_only
def test_start_leaves_a_server_it_did_not_start_alone(
    host: Host, listener: socket.socket, tmp_path: Path
) -> None:
    """After an OBS crash the old server still holds the port: say so, start no second one."""
    command = _executable(tmp_path / "env", "time.sleep(60)")
    _load(host, executable=str(command), osc_port=_port(listener))
    host.tick()
    _, sender = listener.recvfrom(65535)
    builder = OscMessageBuilder("/status")
    for value in (30.0, 30.0, 40.0, 0, "sdxs-512-0.9", "torch-cuda float16"):
        builder.add_arg(value)
    listener.sendto(builder.build().dgram, sender)
    assert host.tick_until(lambda: "did not start" in host.text("status"), 2.0)
    host.click("start")
    assert _controller(host).proc is None and _runs(command.parent) == []
    assert "stop it, or set another OSC port" in host.text("status")


@posix_only
def test_a_server_that_dies_is_restarted_with_growing_waits(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = _executable(tmp_path / "env", "print('CUDA out of memory'); sys.exit(1)")
    module = _load(host, executable=str(command), osc_port=free_udp_port())
    monkeypatch.setattr(module, "BACKOFF_S", (0.1, 0.4, 30.0))
    host.click("start")
    assert host.tick_until(lambda: "restart 1 after 0.1 s" in host.text("status"), 10)
    assert "exit code 1" in host.text("status") and "CUDA out of memory" in host.text("status")
    assert host.tick_until(lambda: "restart 3 after 30 s" in host.text("status"), 10)
    assert len(_runs(command.parent)) == 3  # 0.1 s, then 0.4 s, then a long wait
    assert "restarting in" in host.text("status")
    host.click("stop")
    time.sleep(0.2)
    host.tick()
    assert len(_runs(command.parent)) == 3 and host.text("status").startswith("stopped")


@posix_only
def test_a_start_up_error_is_shown_and_not_retried(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = "livediffusion: error: unknown model 'sdxs-9' (see livediffusion models)"
    command = _executable(tmp_path / "env", f"print({error!r}, file=sys.stderr); sys.exit(2)")
    module = _load(host, executable=str(command), osc_port=free_udp_port())
    monkeypatch.setattr(module, "BACKOFF_S", (0.05,))
    host.click("start")
    assert host.tick_until(lambda: error in host.text("status"), 10), host.text("status")
    time.sleep(0.3)
    host.tick()
    assert len(_runs(command.parent)) == 1 and _controller(host).proc is None


@posix_only
def test_unload_kills_a_server_that_ignores_sigterm(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen(sys.argv[0] + '.ready', 'w')\n"
    command = _executable(tmp_path / "env", body + "time.sleep(60)")
    module = _load(host, executable=str(command), osc_port=free_udp_port(), autostart=True)
    monkeypatch.setattr(module, "STOP_TIMEOUT_S", 0.5)
    proc = _controller(host).proc
    assert proc is not None  # autostart started it at load
    ready = Path(str(command) + ".ready")
    assert host.tick_until(ready.exists, 10)  # SIGTERM is ignored from here on
    began = time.monotonic()
    host.unload()
    assert proc.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - began < 3.0
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)  # reaped: no orphan, no zombie


# --- the file itself, and how it is found ----------------------------------------------------


def test_the_script_needs_only_the_standard_library_and_python_3_8() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"obspython"}


def test_livediffusion_hosts_prints_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hosts", "--path", "obs"]) == 0
    assert capsys.readouterr().out == f"{SCRIPT}\n"
    assert SCRIPT.is_file()
    assert main(["hosts"]) == 0
    listing = capsys.readouterr().out
    for name, path in HOST_FILES.items():
        assert f"{name}\t{path}" in listing


def test_the_wheel_ships_both_host_files() -> None:
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["livediffusion"]
    package = root / "plugin" / "livediffusion"
    for path in HOST_FILES.values():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
