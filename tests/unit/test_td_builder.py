"""The TouchDesigner builder, run against the strict fake ``td`` (tests/td_fake.py).

What it builds, how it is wired, the parameters it makes (checked against the server's own
control table), and what a parameter change sends: a real UDP datagram, decoded and fed to the
server's message parser.
"""

from __future__ import annotations

import ast
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

import td_fake as td
from livediffusion.cli import build_parser
from livediffusion.control.controls import CONTROLS, Controls, parse_message
from loopback import free_udp_port

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "plugin/livediffusion/hosts/touchdesigner/livediffusion_td_builder.py"


def _build(platform: str | None = None, monkeypatch: pytest.MonkeyPatch | None = None) -> td.COMP:
    project = td.new_project()
    builder = project.create(td.textDAT, "builder")
    assert isinstance(builder, td.DAT)
    builder.nodeX, builder.nodeY = 0, 0
    builder.par.file = str(BUILDER)
    builder.text = BUILDER.read_text("utf-8")
    if platform is not None:
        assert monkeypatch is not None
        monkeypatch.setattr(sys, "platform", platform)
    td.run_script(builder)
    comp = project.op("livediffusion")
    assert isinstance(comp, td.COMP)
    return comp


@pytest.fixture
def comp() -> Iterator[td.COMP]:
    built = _build()
    yield built
    if built.valid:
        built.destroy()  # closes the OSC In DAT's socket, stops any server


def _child(comp: td.COMP, name: str) -> td.OP:
    found = comp.op(name)
    assert found is not None, name
    return found


def _sources(connector: td.Connector) -> set[str]:
    return {c.owner.name for c in connector.connections}


def test_it_builds_the_operators_named_in_the_issue(comp: td.COMP) -> None:
    kinds = {child.name: child.OPType for child in comp.children}
    assert kinds == {
        "in1": "inTOP",
        "syphonspout_out": "syphonspoutoutTOP",
        "ndi_out": "ndioutTOP",
        "syphonspout_in": "syphonspoutinTOP",
        "ndi_in": "ndiinTOP",
        "picture": "switchTOP",
        "out1": "outTOP",
        "osc_out": "oscoutDAT",
        "osc_in": "oscinDAT",
        "osc_callbacks": "textDAT",
        "parameter_callbacks": "parameterexecuteDAT",
        "frame_callbacks": "executeDAT",
        "LivediffusionExt": "textDAT",
    }
    assert comp.parent().path == "/project1"  # next to the Text DAT that ran the builder
    assert comp.OPType == "baseCOMP"


def test_the_picture_goes_out_through_the_senders_and_back_to_the_output(comp: td.COMP) -> None:
    picture_in, picture, picture_out = (_child(comp, n) for n in ("in1", "picture", "out1"))
    assert len(comp.inputConnectors) == 1 and len(comp.outputConnectors) == 1
    assert comp.inputConnectors[0].owner is picture_in  # the COMP's input feeds in1
    assert comp.outputConnectors[0].owner is picture_out
    assert _sources(picture_in.outputConnectors[0]) == {"syphonspout_out", "ndi_out"}
    assert _sources(picture.inputConnectors[0]) == {"syphonspout_in"}  # index 0: Syphon/Spout
    assert _sources(picture.inputConnectors[1]) == {"ndi_in"}  # index 1: NDI
    assert _sources(picture_out.inputConnectors[0]) == {"picture"}


def test_the_callback_dats_point_at_the_component(comp: td.COMP) -> None:
    parexec = _child(comp, "parameter_callbacks")
    p = parexec.par
    assert parexec.resolve(p.op.eval()) is comp
    assert (p.pars.eval(), p.custom.eval(), p.builtin.eval()) == ("*", True, False)
    assert p.valuechange.eval() and p.onpulse.eval() and p.active.eval()
    osc_in = _child(comp, "osc_in")
    assert osc_in.resolve(osc_in.par.callbacks.eval()) is _child(comp, "osc_callbacks")
    assert _child(comp, "frame_callbacks").par.framestart.eval()
    assert comp.par.ext0promote.eval()
    assert [type(e).__name__ for e in comp.extensions] == ["LivediffusionExt"]
    assert comp.extensions[0].ownerComp is comp


def test_the_controls_match_the_server_table(comp: td.COMP) -> None:
    """Names, OSC addresses, ranges and defaults come from the server's own CONTROLS table."""
    ext_dat = _child(comp, "LivediffusionExt")
    assert isinstance(ext_dat, td.DAT)
    module = ext_dat.module
    styles = {"float": "Float", "int": "Int", "switch": "Toggle", "text": "Str"}
    defaults = Controls()
    for name, (address, _) in module.CONTROL_PARS.items():
        spec = CONTROLS[address]
        par = getattr(comp.par, name)
        assert par.style == styles[spec.kind], name
        assert par.eval() == par.default == getattr(defaults, spec.field), name
        if spec.kind == "float":
            assert (par.min, par.max, par.clampMin, par.clampMax) == (spec.low, spec.high, 1, 1)
    assert set(module.CONTROL_PARS) == {
        "Prompt", "Strength", "Feedback", "Smoothing", "Blend", "Seed", "Bypass"
    }  # fmt: skip
    pulses = [p.name for p in comp.customPars if p.style == "Pulse"]
    assert pulses == ["Reset", "Start", "Stop"]
    read_only = {p.name for p in comp.customPars if p.readOnly}
    assert read_only == {"Status", "Model", "Backend", "Infps", "Outfps", "Latency", "Dropped"}
    assert [page.name for page in comp.customPages] == ["Livediffusion", "Server"]


@pytest.mark.parametrize(
    ("platform", "transport", "index"),
    [("darwin", "syphonspout", 0), ("win32", "syphonspout", 0), ("linux", "ndi", 1)],
)
def test_the_transport_follows_the_platform_and_can_be_switched(
    monkeypatch: pytest.MonkeyPatch, platform: str, transport: str, index: int
) -> None:
    comp = _build(platform, monkeypatch)
    try:
        picture, ndi_in, ndi_out = (_child(comp, n) for n in ("picture", "ndi_in", "ndi_out"))
        syphon_out = _child(comp, "syphonspout_out")
        assert comp.par.Transport.eval() == transport
        assert picture.par.index.eval() == index
        assert ndi_in.par.active.eval() == ndi_out.par.active.eval() == (transport == "ndi")
        assert syphon_out.par.active.eval() == (transport != "ndi")

        other = "ndi" if transport != "ndi" else "syphonspout"
        comp.par.Transport = other
        comp.par.Sendername = "td_a"
        comp.par.Receivename = "stage1"
        td.frame(comp)
        assert picture.par.index.eval() == 1 - index
        assert ndi_out.par.active.eval() == (other == "ndi")
        assert syphon_out.par.active.eval() == (other != "ndi")
        assert ndi_out.par.name.eval() == syphon_out.par.sendername.eval() == "td_a"
        assert ndi_in.par.name.eval() == "stage1"
        assert _child(comp, "syphonspout_in").par.sendername.eval() == "stage1"
    finally:
        comp.destroy()


def test_the_receiver_picks_the_servers_entry_from_its_menu(comp: td.COMP) -> None:
    ndi_in = _child(comp, "ndi_in")
    ndi_in.par.name.menuNames = ["OTHER (livediffusion2)", "GPU-BOX (livediffusion)"]
    comp.par.Transport = "ndi"
    td.frame(comp)
    assert ndi_in.par.name.eval() == "GPU-BOX (livediffusion)"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def _received(sock: socket.socket, count: int) -> list[OscMessage]:
    return [OscMessage(sock.recv(65_535)) for _ in range(count)]


@pytest.mark.parametrize("prefix", ["", "/stage1"])
def test_a_parameter_change_sends_the_servers_osc_message(
    comp: td.COMP, listener: socket.socket, prefix: str
) -> None:
    comp.par.Oscport = listener.getsockname()[1]
    comp.par.Oscprefix = prefix
    td.frame(comp)  # the Server page change reaches the OSC Out DAT
    comp.par.Strength = 0.25
    comp.par.Prompt = "neon jellyfish"
    comp.par.Seed = 7
    comp.par.Bypass = True
    td.frame(comp)
    messages = {m.address: m for m in _received(listener, 4)}
    assert set(messages) == {prefix + a for a in ("/strength", "/prompt", "/seed", "/bypass")}
    expected = {"/strength": 0.25, "/prompt": "neon jellyfish", "/seed": 7, "/bypass": 1}
    for address, value in expected.items():
        message = messages[prefix + address]
        assert message.params == [value]
        assert type(message.params[0]) is type(value)  # f, s, i, i on the wire
        command = parse_message(address, tuple(message.params))  # the server accepts it
        assert command.value == (True if address == "/bypass" else value)
    comp.par.Reset.pulse()
    (reset,) = _received(listener, 1)
    assert (reset.address, reset.params) == (prefix + "/reset", [1])


@pytest.mark.parametrize("later", [(), ((12, "i"),)], ids=["six fields", "osc_rejected after"])
def test_status_fills_the_read_only_parameters(
    comp: td.COMP, later: tuple[tuple[int, str], ...]
) -> None:
    """The server's /status gained osc_rejected at the end: the first six still fill in."""
    status_port = free_udp_port()
    comp.par.Statusport = status_port
    td.frame(comp)
    td.frame(comp)  # the OSC In DAT binds its new port
    message = OscMessageBuilder(address="/status")
    for value, kind in (
        (29.97, "f"), (29.5, "f"), (41.234, "f"), (3, "i"),
        ("sdxs-512-0.9", "s"), ("torch-cuda float16", "s"), *later,
    ):  # fmt: skip
        message.add_arg(value, kind)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.build().dgram, ("127.0.0.1", status_port))
    assert td.frames_until(comp, lambda: comp.par.Model.eval() != "", timeout=5)
    p = comp.par
    assert (p.Infps.eval(), p.Outfps.eval(), p.Latency.eval()) == (29.97, 29.5, 41.23)
    assert (p.Dropped.eval(), p.Model.eval(), p.Backend.eval()) == (
        3, "sdxs-512-0.9", "torch-cuda float16"
    )  # fmt: skip


def test_the_command_line_is_one_serve_accepts(
    comp: td.COMP, monkeypatch: pytest.MonkeyPatch
) -> None:
    ext = comp.extensions[0]
    comp.par.Transport = "ndi"
    comp.par.Oscport, comp.par.Statusport, comp.par.Oscprefix = 9100, 9101, "stage1"
    comp.par.Weights = "tiny"
    comp.par.Strength = 0.5
    comp.par.Extraargs = "--size 256 --prompt 'ink wash'"
    command = ext.Command()
    assert command[0] == comp.par.Executable.eval()
    args = build_parser().parse_args(command[1:])  # an unknown flag would exit here
    assert (args.osc_port, args.osc_prefix, args.prompt) == (9100, "/stage1", "ink wash")
    flags = dict(zip(command[2::2], command[3::2], strict=False))
    assert flags["--source"] == "ndi://td_livediffusion"
    assert flags["--sink"] == "ndi://livediffusion"
    assert (flags["--osc-port"], flags["--osc-reply"]) == ("9100", "127.0.0.1:9101")
    assert (flags["--osc-prefix"], flags["--weights"], flags["--strength"]) == (
        "/stage1", "tiny", "0.5"
    )  # fmt: skip
    assert command[-4:] == ["--size", "256", "--prompt", "ink wash"]  # last, so they win
    comp.par.Transport = "syphonspout"
    for platform, scheme in (("darwin", "syphon"), ("win32", "spout")):
        monkeypatch.setattr(sys, "platform", platform)
        command = ext.Command()
        assert command[command.index("--source") + 1] == f"{scheme}://td_livediffusion"
        assert command[command.index("--sink") + 1] == f"{scheme}://livediffusion"


def test_the_default_executable_is_the_environment_the_builder_came_from(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(compile(BUILDER.read_text("utf-8"), str(BUILDER), "exec"), namespace)
    default_executable = namespace["default_executable"]
    assert callable(default_executable)
    installed = tmp_path / "venv/lib/python3.11/site-packages/livediffusion/hosts/touchdesigner"
    installed.mkdir(parents=True)
    script = tmp_path / "venv/bin/livediffusion"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert default_executable(str(installed / BUILDER.name)) == str(script)
    # this checkout: an editable install into .venv
    here = ROOT / ".venv/bin/livediffusion"
    if here.exists():
        assert default_executable(str(BUILDER)) == str(here)


def test_building_twice_refuses_instead_of_renaming(comp: td.COMP) -> None:
    builder = comp.parent().op("builder")
    assert isinstance(builder, td.DAT)
    with pytest.raises(RuntimeError, match="exists already"):
        td.run_script(builder)


def test_a_pasted_fragment_says_what_is_missing() -> None:
    project = td.new_project()
    builder = project.create(td.textDAT, "builder")
    assert isinstance(builder, td.DAT)
    text = BUILDER.read_text("utf-8")
    builder.text = text.replace("# <<< osc callbacks\n", "")
    with pytest.raises(ValueError, match="no 'osc callbacks' section"):
        td.run_script(builder)


def test_the_builder_imports_only_the_standard_library() -> None:
    tree = ast.parse(BUILDER.read_text("utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_outside_touchdesigner_the_file_builds_nothing() -> None:
    namespace: dict[str, object] = {"__name__": "livediffusion_td_builder"}
    exec(compile(BUILDER.read_text("utf-8"), str(BUILDER), "exec"), namespace)
    assert namespace["_builder"] is None


# -- the fake itself refuses what TouchDesigner refuses ------------------------------------


def test_the_fake_refuses_misuse() -> None:
    project = td.new_project()
    with pytest.raises(ValueError, match="unknown operator type"):
        project.create("syphonOutTOP", "x")
    with pytest.raises(TypeError):
        project.create(dict, "x")  # type: ignore[arg-type]
    base = project.create(td.baseCOMP, "base1")
    assert isinstance(base, td.COMP)
    page = base.appendCustomPage("Look")
    for bad in ("strength", "StrengthA", "Strength_1", "1strength"):
        with pytest.raises(ValueError, match="uppercase letter"):
            page.appendFloat(bad)
    # Page Class: appendFloat(name, label=None, size=1, order=None, replace=True)
    assert page.appendFloat("Gain", "Gain (dB)")[0].label == "Gain (dB)"  # label by position
    assert page.appendToggle("Mute", "Mute it")[0].label == "Mute it"
    with pytest.raises(ValueError, match="number of values"):
        page.appendFloat("Level", "Level", 0.0, 1.0)  # (name, label, min, max) is not it
    with pytest.raises(TypeError):
        page.appendFloat("Level", min=0.0)  # type: ignore[call-arg]
    par = page.appendFloat("Strength", label="Strength")[0]
    with pytest.raises(AttributeError):
        par.nomMax = 1.0  # not a Par member
    with pytest.raises(TypeError):
        par.val = "loud"
    with pytest.raises(AttributeError, match="no parameter 'strength'"):
        base.par.strength = 0.5
    ndi = project.create(td.ndioutTOP, "ndi1")
    with pytest.raises(AttributeError, match="no parameter 'sourcename'"):
        ndi.par.sourcename = "x"  # the NDI Out TOP's Source Name is `name`
    with pytest.raises(AttributeError):
        ndi.nodex = 3  # a misspelt member
    dat = project.create(td.textDAT, "t")
    with pytest.raises(TypeError, match="cannot wire"):
        ndi.outputConnectors[0].connect(dat)
    syphon_in = project.create(td.syphonspoutinTOP, "s")
    with pytest.raises(ValueError, match="no free connector"):
        ndi.outputConnectors[0].connect(syphon_in)  # a receiver has no input
    assert project.create(td.nullTOP, "s").name == "s2"  # TouchDesigner renames, never fails
    with pytest.raises(TypeError, match="Pulse"):
        par.pulse()


def test_the_fake_osc_out_sends_real_datagrams(listener: socket.socket) -> None:
    project = td.new_project()
    osc_out = project.create(td.oscoutDAT, "o")
    assert isinstance(osc_out, td.oscoutDAT)
    osc_out.par.address, osc_out.par.port = "127.0.0.1", listener.getsockname()[1]
    osc_out.sendOSC("/seed", [7])
    (message,) = _received(listener, 1)
    assert (message.address, message.params) == ("/seed", [7])
    with pytest.raises(TypeError, match="list of values"):
        osc_out.sendOSC("/prompt", "neon")
