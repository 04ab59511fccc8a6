"""MIDI maps load and check, the mapper's semantics, and that what it sends is what
parse_message accepts; ports are faked here (the real one is tests/integration)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from livediffusion.control.controls import CONTROLS, ControlError, ControlStore, parse_message
from livediffusion.control.midi import (
    INSTALL_HINT,
    Learner,
    MidiError,
    MidiInput,
    MidiUnavailable,
    find_port,
    learn,
    list_ports,
    midi_command,
)
from livediffusion.control.midi_map import (
    MidiMap,
    MidiMapError,
    MidiMapper,
    describe_map,
    load_map,
    parse_map,
    shipped_maps,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DOCS = Path(__file__).resolve().parents[2] / "docs" / "midi.md"


def _mido() -> Any:
    return pytest.importorskip("mido")


def _cc(control: int, value: int, channel: int = 0) -> Any:
    return _mido().Message("control_change", control=control, value=value, channel=channel)


def _note_on(note: int, velocity: int = 127, channel: int = 0) -> Any:
    return _mido().Message("note_on", note=note, velocity=velocity, channel=channel)


def _note_off(note: int, channel: int = 0) -> Any:
    return _mido().Message("note_off", note=note, velocity=0, channel=channel)


def _map(*entries: dict[str, Any]) -> MidiMap:
    return parse_map({"name": "test", "control": list(entries)}, where="test.toml")


def _mapper(*entries: dict[str, Any], current: Callable[[str], Any] | None = None) -> MidiMapper:
    return MidiMapper(_map(*entries), current=current or (lambda field: False))


# --- shipped maps ---------------------------------------------------------------------------


def test_three_maps_are_shipped() -> None:
    assert set(shipped_maps()) >= {"nanokontrol2", "midimix", "launchcontrol_xl"}


@pytest.mark.parametrize("name", sorted(shipped_maps()))
def test_shipped_map_loads_by_name_and_by_path(name: str) -> None:
    by_name = load_map(name)
    assert by_name.name and by_name.description
    assert load_map(str(shipped_maps()[name])) == by_name
    assert all(binding.label for binding in by_name.controls)
    addresses = {binding.address for binding in by_name.controls}
    assert {"/strength", "/prompt/mix", "/bypass", "/pause", "/reset", "/preset/recall"} <= (
        addresses
    )
    recalled = {b.value for b in by_name.controls if b.address == "/preset/recall"}
    assert recalled == set(range(1, 9))
    # no two lines answer the same MIDI message: a press must do one thing
    keys = [(b.source, b.number, b.channel) for b in by_name.controls]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("name", sorted(shipped_maps()))
def test_docs_hold_each_shipped_maps_table(name: str) -> None:
    assert describe_map(load_map(name)) in DOCS.read_text(encoding="utf-8"), (
        f"docs/midi.md is out of date for {name}: paste describe_map(load_map({name!r}))"
    )


@pytest.mark.parametrize("name", sorted(shipped_maps()))
def test_every_message_a_shipped_map_can_send_is_accepted(name: str) -> None:
    """A full sweep of each mapped CC, and press/release of each mapped note, on its channel,
    with the toggles both ways round: everything sent passes the OSC path's validation."""
    sent = 0
    for state in (False, True):
        mapper = MidiMapper(load_map(name), current=lambda field, state=state: state)
        for binding in mapper.midi_map.controls:
            channel = (binding.channel or 1) - 1
            if binding.source == "cc":
                messages = [_cc(binding.number, value, channel) for value in range(128)]
            else:
                messages = [_note_on(binding.number, v, channel) for v in (1, 64, 127)]
                messages += [_note_off(binding.number, channel), _note_on(binding.number, 0)]
            for message in messages:
                for address, args in mapper.translate(message):
                    parse_message(address, args)  # raises if not
                    sent += 1
    assert sent > 0


# --- bad maps -------------------------------------------------------------------------------


def _write(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return str(path)


KNOWN = "known: /prompt/mix, /strength, /seed, /feedback, /smoothing, /blend, /bypass, /pause"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            'cc = 16\naddress = "/strenght"',
            "bad.toml: control 1 (\"knob 1\"): address '/strenght' is not a control; " + KNOWN,
        ),
        (
            'cc = 16\naddress = "/strength"\nrange = [0.0, 2.0]',
            'bad.toml: control 1 ("knob 1"): range [0.0, 2.0] is outside /strength\'s 0..1',
        ),
        (
            'cc = 16\naddress = "/glide"\nrange = [-1, 5]',
            'bad.toml: control 1 ("knob 1"): range [-1, 5] is outside /glide\'s 0..60',
        ),
        (
            'cc = 16\nchanel = 1\naddress = "/strength"',
            "bad.toml: control 1 (\"knob 1\"): unknown key 'chanel'; allowed: cc, note, "
            "channel, address, range, curve, mode, value, label",
        ),
        (
            'cc = 16\nnote = 16\naddress = "/strength"',
            'bad.toml: control 1 ("knob 1"): has both cc and note; give exactly one',
        ),
        (
            'address = "/strength"',
            'bad.toml: control 1 ("knob 1"): needs cc = N or note = N (0..127)',
        ),
        (
            'note = 41\naddress = "/preset/recall"',
            'bad.toml: control 1 ("knob 1"): /preset/recall needs value = N, '
            "the number it sends (0..999)",
        ),
        (
            'note = 41\naddress = "/preset/recall"\nvalue = 1000',
            'bad.toml: control 1 ("knob 1"): value 1000 is not a whole number in 0..999',
        ),
        (
            'note = 41\naddress = "/reset"\nvalue = 1',
            'bad.toml: control 1 ("knob 1"): value 1 is only for /preset/save, '
            "/preset/recall; /reset takes none",
        ),
        (
            'cc = 16\naddress = "/strength"\ncurve = "cubic"',
            "bad.toml: control 1 (\"knob 1\"): curve 'cubic' is not one of: linear, exp, log, s",
        ),
        (
            'cc = 16\nchannel = 0\naddress = "/strength"',
            'bad.toml: control 1 ("knob 1"): channel 0 is not one of 1..16 '
            "(leave it out for any channel)",
        ),
        (
            'cc = 16\nchannel = 17\naddress = "/strength"',
            'bad.toml: control 1 ("knob 1"): channel 17 is not one of 1..16 '
            "(leave it out for any channel)",
        ),
        (
            'cc = 128\naddress = "/strength"',
            'bad.toml: control 1 ("knob 1"): cc 128 is not a whole number in 0..127',
        ),
        (
            'cc = 16\naddress = "/prompt"',
            "bad.toml: control 1 (\"knob 1\"): address '/prompt' takes text, "
            "which MIDI cannot send; " + KNOWN,
        ),
        (
            'cc = 16\naddress = "/strength"\nmode = "toggle"',
            "bad.toml: control 1 (\"knob 1\"): mode 'toggle' does not suit /strength "
            "(a float control); allowed: value",
        ),
        (
            'cc = 16\naddress = "/strength"\nmode = "fader"',
            "bad.toml: control 1 (\"knob 1\"): mode 'fader' is not one of: "
            "value, toggle, trigger, momentary",
        ),
        (
            'cc = 16\naddress = "/bypass"\nrange = [0, 1]',
            "bad.toml: control 1 (\"knob 1\"): range [0, 1] is only for mode 'value'; "
            "/bypass uses mode 'toggle'",
        ),
        (
            'cc = 16\naddress = "/seed"\nrange = [0, 0.5]',
            'bad.toml: control 1 ("knob 1"): range [0, 0.5] must be whole numbers: '
            "/seed takes an int",
        ),
        (
            'cc = 16\naddress = "/strength"\nrange = [0.5, 0.5]',
            'bad.toml: control 1 ("knob 1"): range [0.5, 0.5] has equal ends; '
            "the control would never move",
        ),
    ],
)
def test_bad_entry_names_file_entry_key_and_value(tmp_path: Path, entry: str, message: str) -> None:
    path = _write(tmp_path, '[[control]]\nlabel = "knob 1"\n' + entry + "\n")
    with pytest.raises(MidiMapError) as caught:
        load_map(path)
    assert str(caught.value).startswith(message), str(caught.value)


def test_errors_count_entries_from_one_and_work_without_a_label(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [[control]]
        cc = 1
        address = "/strength"

        [[control]]
        cc = 2
        address = "/strength"
        curve = "log "
        """,
    )
    with pytest.raises(MidiMapError, match=r"^bad\.toml: control 2: curve 'log ' is not one"):
        load_map(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('nmae = "x"\n', "bad.toml: unknown key 'nmae'; allowed: name, description, control"),
        ('name = "x"\n', "bad.toml: no [[control]] entries"),
        ("[control]\ncc = 1\n", "bad.toml: control must be a list of [[control]] tables"),
        ("[[control]\n", "bad.toml: not valid TOML"),
    ],
)
def test_bad_file_level(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(MidiMapError) as caught:
        load_map(_write(tmp_path, body))
    assert str(caught.value).startswith(message), str(caught.value)


def test_unknown_map_lists_shipped_ones() -> None:
    with pytest.raises(MidiMapError, match="shipped: launchcontrol_xl, midimix, nanokontrol2"):
        load_map("nanokontrol3")


def test_text_controls_are_not_in_the_known_list() -> None:
    with pytest.raises(MidiMapError) as caught:
        _map({"cc": 1, "address": "/nope"})
    known = str(caught.value).split("known: ")[1].split(", ")
    assert known == [a for a, spec in CONTROLS.items() if spec.kind != "text"]


# --- the mapper -----------------------------------------------------------------------------


def test_cc_ends_reach_the_range_ends_exactly() -> None:
    mapper = _mapper(
        {"cc": 1, "address": "/strength"},
        {"cc": 2, "address": "/feedback", "range": [0.1, 0.7]},
        {"cc": 3, "address": "/blend", "range": [1.0, 0.0]},  # turned round
    )
    assert mapper.translate(_cc(1, 0)) == [("/strength", (0.0,))]
    assert mapper.translate(_cc(1, 127)) == [("/strength", (1.0,))]
    assert mapper.translate(_cc(2, 0)) == [("/feedback", (0.1,))]
    assert mapper.translate(_cc(2, 127)) == [("/feedback", (0.7,))]
    assert mapper.translate(_cc(3, 0)) == [("/blend", (1.0,))]
    assert mapper.translate(_cc(3, 127)) == [("/blend", (0.0,))]


@pytest.mark.parametrize(
    ("curve", "shape"),
    [
        ("linear", lambda x: x),
        ("exp", lambda x: x * x),
        ("log", lambda x: x**0.5),
        ("s", lambda x: 3 * x * x - 2 * x**3),
    ],
)
def test_curves(curve: str, shape: Callable[[float], float]) -> None:
    mapper = _mapper({"cc": 7, "address": "/glide", "range": [0, 5], "curve": curve})
    values = []
    for value in range(128):
        ((address, (seconds,)),) = mapper.translate(_cc(7, value))
        assert address == "/glide"
        assert seconds == pytest.approx(5 * shape(value / 127))
        values.append(seconds)
    assert values == sorted(values)
    assert values[0] == 0.0 and values[-1] == 5.0


def test_curve_shapes_differ_in_the_middle() -> None:
    middle = {
        curve: _mapper({"cc": 7, "address": "/strength", "curve": curve}).translate(_cc(7, 32))
        for curve in ("linear", "exp", "log", "s")
    }
    assert middle["exp"][0][1][0] < middle["s"][0][1][0] < middle["linear"][0][1][0]
    assert middle["linear"][0][1][0] < middle["log"][0][1][0]


def test_int_controls_get_rounded_ints() -> None:
    mapper = _mapper(
        {"cc": 16, "address": "/seed", "range": [0, 127]},
        {"cc": 17, "address": "/seed", "range": [100, 110]},
    )
    for value in range(128):
        ((_, (seed,)),) = mapper.translate(_cc(16, value))
        assert type(seed) is int and seed == value
    assert mapper.translate(_cc(17, 64)) == [("/seed", (105,))]
    assert mapper.translate(_cc(17, 127)) == [("/seed", (110,))]


def test_default_range_is_the_controls_own() -> None:
    mapper = _mapper({"cc": 1, "address": "/prompt/glide"}, {"cc": 2, "address": "/seed"})
    assert mapper.translate(_cc(1, 127)) == [("/prompt/glide", (60.0,))]
    assert mapper.translate(_cc(2, 127)) == [("/seed", (2**32 - 1,))]


def test_channel_filter() -> None:
    mapper = _mapper(
        {"cc": 1, "channel": 2, "address": "/strength"},
        {"cc": 5, "address": "/blend"},  # any channel
    )
    assert mapper.translate(_cc(1, 127, channel=1)) == [("/strength", (1.0,))]  # MIDI ch 2
    assert mapper.translate(_cc(1, 127, channel=0)) == []
    assert mapper.translate(_cc(1, 127, channel=15)) == []
    for channel in range(16):
        assert mapper.translate(_cc(5, 0, channel=channel)) == [("/blend", (0.0,))]


def test_only_mapped_messages_produce_anything() -> None:
    mido = _mido()
    mapper = _mapper({"cc": 1, "address": "/strength"}, {"note": 1, "address": "/bypass"})
    assert mapper.translate(_cc(2, 127)) == []
    assert mapper.translate(_note_on(2)) == []
    assert mapper.translate(mido.Message("clock")) == []
    assert mapper.translate(mido.Message("pitchwheel", pitch=100)) == []
    assert mapper.translate(mido.Message("program_change", program=1)) == []
    assert mapper.translate(mido.Message("control_change", control=1, value=0)) != []


def test_toggle_flips_the_current_state_on_press_only() -> None:
    state = {"bypass": False, "paused": True}
    mapper = _mapper(
        {"cc": 48, "address": "/bypass"},
        {"note": 25, "address": "/pause", "mode": "toggle"},
        current=state.__getitem__,
    )
    assert mapper.translate(_cc(48, 127)) == [("/bypass", (1,))]
    assert mapper.translate(_cc(48, 0)) == []  # release
    assert mapper.translate(_cc(48, 63)) == []
    state["bypass"] = True
    assert mapper.translate(_cc(48, 64)) == [("/bypass", (0,))]
    assert mapper.translate(_note_on(25)) == [("/pause", (0,))]
    assert mapper.translate(_note_off(25)) == []
    state["paused"] = False
    assert mapper.translate(_note_on(25, velocity=1)) == [("/pause", (1,))]


def test_momentary() -> None:
    mapper = _mapper(
        {"cc": 49, "address": "/bypass", "mode": "momentary"},
        {"note": 105, "address": "/bypass", "mode": "momentary"},
    )
    assert mapper.translate(_cc(49, 127)) == [("/bypass", (1,))]
    assert mapper.translate(_cc(49, 0)) == [("/bypass", (0,))]
    assert mapper.translate(_note_on(105)) == [("/bypass", (1,))]
    assert mapper.translate(_note_off(105)) == [("/bypass", (0,))]
    assert mapper.translate(_note_on(105, velocity=0)) == [("/bypass", (0,))]


def test_trigger_acts_on_press_and_ignores_release() -> None:
    mapper = _mapper(
        {"cc": 46, "address": "/reset"},
        {"note": 41, "address": "/preset/recall", "value": 3},
        {"note": 42, "address": "/preset/save", "value": 0},
        {"cc": 47, "address": "/status"},
    )
    assert mapper.translate(_cc(46, 127)) == [("/reset", ())]
    assert mapper.translate(_cc(46, 0)) == []
    assert mapper.translate(_note_on(41)) == [("/preset/recall", (3,))]
    assert mapper.translate(_note_off(41)) == []
    assert mapper.translate(_note_on(42)) == [("/preset/save", (0,))]
    assert mapper.translate(_cc(47, 127)) == [("/status", ())]


def test_note_on_velocity_zero_is_a_release() -> None:
    mapper = _mapper({"note": 41, "address": "/preset/recall", "value": 1})
    assert mapper.translate(_note_on(41, velocity=0)) == []
    assert mapper.translate(_note_on(41, velocity=1)) == [("/preset/recall", (1,))]


def test_a_note_in_value_mode_sends_its_velocity() -> None:
    mapper = _mapper({"note": 36, "address": "/strength"})
    assert mapper.translate(_note_on(36, velocity=127)) == [("/strength", (1.0,))]
    assert mapper.translate(_note_off(36)) == []
    assert mapper.translate(_note_on(36, velocity=0)) == []


def test_one_cc_may_drive_several_controls() -> None:
    mapper = _mapper({"cc": 1, "address": "/strength"}, {"cc": 1, "address": "/feedback"})
    assert mapper.translate(_cc(1, 127)) == [("/strength", (1.0,)), ("/feedback", (1.0,))]


def test_mapper_takes_duck_typed_messages() -> None:
    class Message:
        type = "control_change"
        channel = 0
        control = 1
        value = 127

    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    assert mapper.translate(Message()) == [("/strength", (1.0,))]


# --- ports (faked) --------------------------------------------------------------------------


class FakePort:
    def __init__(self, name: str, callback: Callable[[Any], None] | None) -> None:
        self.name = name
        self.callback = callback
        self.pending: list[Any] = []
        self.closes = 0

    def poll(self) -> Any:
        return self.pending.pop(0) if self.pending else None

    def close(self) -> None:
        self.closes += 1


class FakeBackend:
    """What MidiInput and learn use of mido: ``get_input_names`` and ``open_input``."""

    def __init__(self, names: list[str], pending: list[Any] | None = None) -> None:
        self.names = names
        self.pending = pending or []
        self.opened: list[tuple[FakePort, bool]] = []

    def get_input_names(self) -> list[str]:
        return list(self.names)

    def open_input(
        self, name: str, virtual: bool = False, callback: Callable[[Any], None] | None = None
    ) -> FakePort:
        port = FakePort(name, callback)
        port.pending = list(self.pending)
        self.opened.append((port, virtual))
        return port


PORTS = ["Midi Through:Midi Through Port-0 14:0", "nanoKONTROL2:nanoKONTROL2 _ CTRL 20:0"]


def test_find_port() -> None:
    assert find_port(PORTS[1], PORTS) == PORTS[1]
    assert find_port("nanokontrol2", PORTS) == PORTS[1]
    assert find_port(None, PORTS) == PORTS[1]  # MIDI Through is never the default
    with pytest.raises(MidiError, match="ambiguous: it matches"):
        find_port("0", PORTS)
    with pytest.raises(MidiError, match=r"no MIDI input port matches 'midimix'; available: 'Midi"):
        find_port("midimix", PORTS)
    with pytest.raises(MidiError, match="several MIDI input ports"):
        find_port(None, [*PORTS, "MIDI Mix 24:0"])
    with pytest.raises(MidiError, match="is the controller plugged in"):
        find_port("x", [])


def _served() -> tuple[ControlStore, list[tuple[str, Any]], Callable[[str, tuple[Any, ...]], None]]:
    """What the server does with a message: validate, apply values, run actions."""
    store = ControlStore()
    actions: list[tuple[str, Any]] = []

    def submit(address: str, args: tuple[Any, ...]) -> None:
        command = parse_message(address, args)
        if not store.apply(command):
            actions.append((address, command.value))

    return store, actions, submit


def test_midi_input_submits_what_the_map_says() -> None:
    store, actions, submit = _served()
    backend = FakeBackend(PORTS)
    mapper = MidiMapper(load_map("nanokontrol2"), current=lambda f: getattr(store.snapshot(), f))
    with MidiInput("nano", mapper, submit, backend=backend) as midi:
        ((port, virtual),) = backend.opened
        assert port.name == PORTS[1] and not virtual and midi.name == PORTS[1]
        assert port.callback is not None
        port.callback(_cc(0, 0))  # fader 1
        port.callback(_cc(48, 127))  # M 1: bypass on
        port.callback(_cc(48, 0))
        port.callback(_cc(48, 127))  # and off again
        port.callback(_cc(32, 127))  # S 1: recall preset 1
        port.callback(_cc(46, 127))  # cycle: reset
    assert store.snapshot().strength == 0.0
    assert store.snapshot().bypass is False
    assert store.version == 3
    assert actions == [("/preset/recall", 1), ("/reset", True)]
    assert midi.received == 6 and midi.rejected == 0 and midi.closed


def test_midi_input_keeps_going_when_submit_rejects(caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[str, tuple[Any, ...]]] = []

    def submit(address: str, args: tuple[Any, ...]) -> None:
        if args == (0.0,):
            raise ControlError(f"{address} does not like 0")
        got.append((address, args))

    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    backend = FakeBackend(["x"])
    midi = MidiInput(None, mapper, submit, backend=backend)
    callback = backend.opened[0][0].callback
    assert callback is not None
    with caplog.at_level(logging.WARNING, logger="livediffusion.control.midi"):
        for _ in range(250):
            callback(_cc(1, 0))
        callback(_cc(1, 127))
    assert got == [("/strength", (1.0,))]
    assert midi.rejected == 250 and midi.failed == 0
    # the first 10, then every 100th (the INFO line of the open is not one of them; whether
    # it is captured depends on what earlier tests did to the root logger's level)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 12
    assert "/strength does not like 0" in warnings[0].getMessage()
    assert "(200 so far)" in warnings[-1].getMessage()
    midi.close()


def test_midi_input_survives_a_failing_submit_and_current(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def submit(address: str, args: tuple[Any, ...]) -> None:
        raise RuntimeError("server bug")

    def current(field: str) -> Any:
        raise KeyError(field)

    mapper = MidiMapper(
        _map({"cc": 1, "address": "/strength"}, {"cc": 2, "address": "/bypass"}), current=current
    )
    backend = FakeBackend(["x"])
    with caplog.at_level(logging.ERROR, logger="livediffusion.control.midi"):
        midi = MidiInput("x", mapper, submit, backend=backend)
        callback = backend.opened[0][0].callback
        assert callback is not None
        callback(_cc(1, 5))
        callback(_cc(2, 127))
    assert midi.failed == 2
    assert "server bug" in caplog.text and "bypass" in caplog.text


def test_midi_input_close_twice_and_no_messages_after() -> None:
    got: list[Any] = []
    backend = FakeBackend(["x"])
    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    midi = MidiInput("x", mapper, lambda a, args: got.append(a), backend=backend)
    port = backend.opened[0][0]
    midi.close()
    midi.close()
    assert port.closes == 1
    assert port.callback is not None
    port.callback(_cc(1, 1))
    assert got == []


def test_midi_input_virtual_port_takes_the_name_as_given() -> None:
    backend = FakeBackend([])
    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    with MidiInput(None, mapper, lambda a, args: None, virtual=True, backend=backend) as midi:
        assert midi.name == "livediffusion"
        assert backend.opened[0][1] is True


def test_midi_input_open_failure_is_a_midi_error() -> None:
    class Broken(FakeBackend):
        def open_input(self, name: str, virtual: bool = False, callback: Any = None) -> FakePort:
            raise OSError("MidiInAlsa::initialize: error creating ALSA sequencer client object.")

    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    with pytest.raises(MidiError, match=r"cannot create virtual MIDI port 'lv'.*ALSA"):
        MidiInput("lv", mapper, lambda a, args: None, virtual=True, backend=Broken([]))


def test_missing_mido_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mido", None)  # import mido -> ImportError
    with pytest.raises(MidiUnavailable) as caught:
        list_ports()
    assert str(caught.value) == INSTALL_HINT
    assert INSTALL_HINT == 'MIDI needs mido and python-rtmidi: pip install "livediffusion[midi]"'
    assert isinstance(caught.value, RuntimeError)
    mapper = MidiMapper(_map({"cc": 1, "address": "/strength"}), current=lambda f: None)
    with pytest.raises(MidiUnavailable):
        MidiInput("x", mapper, lambda a, args: None)


def test_importing_the_module_does_not_import_mido() -> None:
    code = (
        "import sys, livediffusion.control.midi; assert 'mido' not in sys.modules, 'mido imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- learn and the command ------------------------------------------------------------------


def test_learner_prints_each_control_once_and_the_stanzas_load() -> None:
    learner = Learner()
    messages = [
        _cc(16, 40),
        _cc(16, 41),  # same knob again
        _cc(16, 41, channel=1),  # same CC, other channel: another control
        _note_on(41, 100),
        _note_off(41),
        _note_on(41, 90),
        _mido().Message("clock"),
    ]
    stanzas = [s for s in map(learner.feed, messages) if s is not None]
    assert len(stanzas) == 3
    assert stanzas[0].startswith('[[control]]\ncc = 16\nchannel = 1\naddress = "/strength"')
    assert "# value 40\n" in stanzas[0]
    assert "note = 41\nchannel = 1\n" in stanzas[2] and "# value 100" in stanzas[2]
    pasted = parse_map(tomllib.loads("".join(stanzas)), where="learned.toml")
    assert [(b.source, b.number, b.channel) for b in pasted.controls] == [
        ("cc", 16, 1),
        ("cc", 16, 2),
        ("note", 41, 1),
    ]


def test_learn_reads_a_port_until_the_time_is_up() -> None:
    backend = FakeBackend(PORTS, pending=[_cc(0, 10), _cc(0, 11), _cc(1, 5)])
    out = io.StringIO()
    assert learn("nano", seconds=0.1, out=out, backend=backend) == 2
    assert out.getvalue().startswith(f"# listening on {PORTS[1]!r} until 0.1 s")
    assert out.getvalue().count("[[control]]") == 2
    assert backend.opened[0][0].closes == 1


def test_midi_command_lists_ports(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livediffusion.control import midi

    monkeypatch.setattr(midi, "_mido", lambda: FakeBackend(PORTS))
    assert midi_command(list_ports=True, learn=False, port=None, seconds=None) == 0
    assert capsys.readouterr().out.splitlines() == PORTS
    monkeypatch.setattr(midi, "_mido", lambda: FakeBackend([]))
    assert midi_command(list_ports=False, learn=False, port=None, seconds=None) == 0
    assert "no MIDI input ports found" in capsys.readouterr().err


def test_midi_command_learn_and_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livediffusion.control import midi

    monkeypatch.setattr(midi, "_mido", lambda: FakeBackend(PORTS, pending=[_cc(7, 1)]))
    assert midi_command(list_ports=False, learn=True, port="nano", seconds=0.05) == 0
    assert "cc = 7\n" in capsys.readouterr().out
    assert midi_command(list_ports=False, learn=True, port="zzz", seconds=0.05) == 2
    assert "livediffusion: error: no MIDI input port matches 'zzz'" in capsys.readouterr().err

    def unavailable() -> Any:
        raise MidiUnavailable

    monkeypatch.setattr(midi, "_mido", unavailable)
    assert midi_command(list_ports=True, learn=False, port=None, seconds=None) == 2
    assert INSTALL_HINT in capsys.readouterr().err


def test_describe_map() -> None:
    table = describe_map(
        _map(
            {"label": "k", "cc": 17, "address": "/glide", "range": [0, 5], "curve": "exp"},
            {"label": "b", "note": 3, "channel": 2, "address": "/preset/save", "value": 4},
            {"cc": 48, "address": "/bypass"},
        )
    )
    assert table.splitlines() == [
        "| label | cc/note | channel | address | range | curve | mode |",
        "|---|---|---|---|---|---|---|",
        "| k | CC 17 | any | `/glide` | 0..5 | exp | value |",
        "| b | note 3 | 2 | `/preset/save` | sends 4 | - | trigger |",
        "| - | CC 48 | any | `/bypass` | - | - | toggle |",
    ]


def test_the_example_map_loads_and_drives_the_controls() -> None:
    mido = pytest.importorskip("mido")
    example = Path(__file__).resolve().parents[2] / "examples" / "midi" / "my_controller.toml"
    mapper = MidiMapper(load_map(str(example)), current=lambda field: False)
    sent = mapper.translate(mido.Message("control_change", control=1, value=127))
    assert sent == [("/strength", (1.0,))]
    sent = mapper.translate(mido.Message("control_change", control=1, value=0))
    assert sent == [("/strength", (0.3,))]
    assert mapper.translate(mido.Message("note_on", note=36, velocity=90)) == [
        ("/preset/recall", (1,))
    ]
    held = mapper.translate(mido.Message("note_on", note=38, velocity=90))
    released = mapper.translate(mido.Message("note_off", note=38))
    assert (held, released) == ([("/bypass", (1,))], [("/bypass", (0,))])
    for address, args in held + released + sent:
        parse_message(address, args)  # the same validation as OSC accepts them


# --- without a sequencer (this machine has no /dev/snd/seq) ---------------------------------------


def _rtmidi_without_a_sequencer() -> None:
    pytest.importorskip("rtmidi")
    if not sys.platform.startswith("linux"):
        pytest.skip("ALSA is Linux's")
    if Path("/dev/snd/seq").exists():
        pytest.skip("this machine has an ALSA sequencer")


def test_midi_list_without_alsa_is_one_line_and_no_raw_alsa_text() -> None:
    """The real rtmidi and ALSA: ALSA printed `ALSA lib seq_hw.c:466:(snd_seq_hw_open) ...`
    to file descriptor 2 itself, above our error."""
    _rtmidi_without_a_sequencer()
    done = subprocess.run(
        [sys.executable, "-m", "livediffusion", "midi", "--list"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "ALSA lib" not in done.stderr and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("livediffusion: error: cannot list MIDI ports:")
    assert "/dev/snd/seq is missing" in line


def test_native_stderr_is_caught_and_the_rest_passed_on(capfd: pytest.CaptureFixture[str]) -> None:
    from livediffusion.control.midi import _native_stderr_caught

    if not sys.platform.startswith("linux"):
        pytest.skip("caught on Linux only, where ALSA prints")
    with _native_stderr_caught() as lines:
        os.write(2, b"ALSA lib seq_hw.c:466:(snd_seq_hw_open) open /dev/snd/seq failed\n")
        os.write(2, b"another thread's log line\n")
    assert lines == ["ALSA lib seq_hw.c:466:(snd_seq_hw_open) open /dev/snd/seq failed"]
    err = capfd.readouterr().err
    assert "ALSA lib" not in err and "another thread's log line" in err
    os.write(2, b"after\n")  # descriptor 2 is back where it was
    assert capfd.readouterr().err == "after\n"


def test_doctor_midi_row_checks_that_ports_can_be_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """doctor said PASS midi because mido and rtmidi import, where no port can be listed."""
    from livediffusion.config import ServeConfig
    from livediffusion.control import midi
    from livediffusion.tools import doctor

    _rtmidi_without_a_sequencer()
    context = doctor.Context(ServeConfig(), quick=True)
    status, detail = doctor._check_midi(context)  # the real rtmidi, no sequencer device here
    assert status == "SKIP" and "cannot list MIDI ports" in detail, detail
    assert "/dev/snd/seq is missing" in detail
    # a sequencer that is there but cannot be listed is a fault
    monkeypatch.setattr(midi, "ALSA_SEQUENCER", Path(__file__))
    status, detail = doctor._check_midi(context)
    assert status == "FAIL" and "cannot list MIDI ports" in detail, detail
    monkeypatch.setattr(midi, "_mido", lambda: FakeBackend(PORTS))
    status, detail = doctor._check_midi(context)
    assert status == "PASS" and "2 input ports" in detail and "nanoKONTROL2" in detail
