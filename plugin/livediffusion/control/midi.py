"""MIDI controllers in, the same control messages as OSC out.

A MIDI map (TOML, see ``docs/midi.md``) binds a controller's CCs and notes to control addresses.
Nothing here decides what a valid value is: :class:`MidiMapper` only turns a MIDI message into
``(address, args)`` tuples and :class:`MidiInput` hands them to the server's ``submit``,
which validates them with :func:`livediffusion.control.controls.parse_message` exactly as it
does OSC. Maps are checked against :data:`~livediffusion.control.controls.CONTROLS` when
they load, so a typo is a start-up error that names the file, the entry and the key, not a
silent dead fader mid-show.

mido and python-rtmidi are optional (``livediffusion[midi]``) and are imported only when a
port is opened or listed: loading, checking and describing maps needs neither.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO, cast

from livediffusion.control.controls import CONTROLS, ControlSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

__all__ = [
    "CURVES",
    "INSTALL_HINT",
    "MAPS_DIR",
    "Binding",
    "Learner",
    "MidiError",
    "MidiInput",
    "MidiMap",
    "MidiMapError",
    "MidiMapper",
    "MidiUnavailable",
    "describe_map",
    "find_port",
    "learn",
    "list_ports",
    "load_map",
    "midi_command",
    "parse_map",
    "shipped_maps",
]

log = logging.getLogger(__name__)

MAPS_DIR = Path(__file__).with_name("midi_maps")
"""The shipped maps: ``--midi-map NAME`` looks for ``NAME.toml`` here."""

INSTALL_HINT = 'MIDI needs mido and python-rtmidi: pip install "livediffusion[midi]"'

Submit = Callable[[str, tuple[Any, ...]], None]
"""The server's way in: validates with ``parse_message`` and raises ``ValueError`` if bad."""

Current = Callable[[str], Any]
"""``current(field)``: the control's present value, so a toggle knows which way to flip."""

Sent = tuple[str, tuple[Any, ...]]

Source = Literal["cc", "note"]
Curve = Literal["linear", "exp", "log", "s"]
Mode = Literal["value", "toggle", "trigger", "momentary"]

CURVES: Mapping[str, Callable[[float], float]] = {
    "linear": lambda x: x,
    "exp": lambda x: x * x,  # fine control at the bottom: glide seconds, small strengths
    "log": math.sqrt,  # fine control at the top
    "s": lambda x: x * x * (3.0 - 2.0 * x),  # smoothstep: gentle at both ends
}
"""0..1 -> 0..1 shapes applied to the controller position before it is scaled into range."""

_MODES: Mapping[str, tuple[Mode, ...]] = {
    "float": ("value",),
    "int": ("value",),
    "switch": ("toggle", "momentary"),
    "action": ("trigger",),
}
_DEFAULT_MODE: Mapping[str, Mode] = {
    "float": "value",
    "int": "value",
    "switch": "toggle",
    "action": "trigger",
}
_ENTRY_KEYS = ("cc", "note", "channel", "address", "range", "curve", "mode", "value", "label")
_TOP_KEYS = ("name", "description", "control")
_PRESS = 64  # a CC at or above this is a pressed button (buttons send 127 / 0)
_LOG_FIRST = 10
_LOG_EVERY = 100


class MidiError(RuntimeError):
    """A MIDI port that cannot be found, listed or opened; the message says what there is."""


class MidiUnavailable(MidiError):
    """mido or python-rtmidi is not installed: MIDI is an optional extra."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


class MidiMapError(ValueError):
    """A map file that does not check out; the message names file, entry, key and value."""


@dataclass(frozen=True, slots=True)
class Binding:
    """One checked ``[[control]]`` entry. ``channel`` is 1-based; None listens on all 16.

    ``low``/``high`` are the ends of the controller's travel (``high < low`` turns it round)
    and are set only in ``value`` mode; ``value`` is the argument of a numbered action.
    """

    source: Source
    number: int
    channel: int | None
    spec: ControlSpec
    mode: Mode
    label: str = ""
    curve: Curve = "linear"
    low: float | None = None
    high: float | None = None
    value: int | None = None

    @property
    def address(self) -> str:
        return self.spec.address


@dataclass(frozen=True, slots=True)
class MidiMap:
    """A whole checked map; ``where`` is the file it came from, for messages."""

    name: str
    description: str
    controls: tuple[Binding, ...]
    where: str = ""


# --- loading and checking ---------------------------------------------------------------------


def shipped_maps() -> dict[str, Path]:
    """The maps in the package, by the name ``--midi-map`` takes (the file stem)."""
    return {path.stem: path for path in sorted(MAPS_DIR.glob("*.toml"))}


def _mappable() -> list[str]:
    return [address for address, spec in CONTROLS.items() if spec.kind != "text"]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _resolve(name_or_path: str) -> Path:
    """A shipped name wins unless the text looks like a path; a missing file says both."""
    shipped = shipped_maps()
    looks_like_path = name_or_path.endswith(".toml") or any(
        sep in name_or_path for sep in ("/", "\\")
    )
    if not looks_like_path and name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    names = ", ".join(shipped) or "none"
    raise MidiMapError(
        f"no MIDI map {name_or_path!r}: not a file (looked at {path.resolve()}) "
        f"and not a shipped map; shipped: {names}"
    )


def load_map(name_or_path: str) -> MidiMap:
    """Read and fully check a map: a shipped name (``nanokontrol2``) or a TOML file path."""
    path = _resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MidiMapError(f"cannot read MIDI map {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MidiMapError(f"{path.name}: not valid TOML: {exc}") from None
    return parse_map(data, where=path.name, default_name=path.stem)


def parse_map(data: Mapping[str, Any], *, where: str, default_name: str = "") -> MidiMap:
    """Check an already-parsed map; ``where`` starts every error message (the file name)."""
    for key in data:
        if key not in _TOP_KEYS:
            raise MidiMapError(f"{where}: unknown key {key!r}; allowed: {', '.join(_TOP_KEYS)}")
    name = data.get("name", default_name)
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            raise MidiMapError(f"{where}: {key} {value!r} is not a string")
    entries = data.get("control")
    if entries is None:
        raise MidiMapError(f"{where}: no [[control]] entries; each binds one CC or note")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise MidiMapError(f"{where}: control must be a list of [[control]] tables")
    controls = tuple(
        _parse_entry(entry, where=where, index=index) for index, entry in enumerate(entries, 1)
    )
    return MidiMap(name=name, description=description, controls=controls, where=where)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _parse_entry(entry: Mapping[str, Any], *, where: str, index: int) -> Binding:
    label = entry.get("label", "")
    prefix = f"{where}: control {index}"
    if isinstance(label, str) and label:
        prefix += f' ("{label}")'

    def fail(message: str) -> MidiMapError:
        return MidiMapError(f"{prefix}: {message}")

    for key in entry:
        if key not in _ENTRY_KEYS:
            raise fail(f"unknown key {key!r}; allowed: {', '.join(_ENTRY_KEYS)}")
    if not isinstance(label, str):
        raise fail(f"label {label!r} is not a string")

    # what it listens to
    if "cc" in entry and "note" in entry:
        raise fail("has both cc and note; give exactly one")
    if "cc" not in entry and "note" not in entry:
        raise fail("needs cc = N or note = N (0..127)")
    source: Source = "cc" if "cc" in entry else "note"
    number = entry[source]
    if not _is_int(number) or not 0 <= number <= 127:
        raise fail(f"{source} {number!r} is not a whole number in 0..127")
    channel = entry.get("channel")
    if channel is not None and (not _is_int(channel) or not 1 <= channel <= 16):
        raise fail(f"channel {channel!r} is not one of 1..16 (leave it out for any channel)")

    # what it drives
    known = ", ".join(_mappable())
    if "address" not in entry:
        raise fail(f"address is missing; known: {known}")
    address = entry["address"]
    spec = CONTROLS.get(address) if isinstance(address, str) else None
    if spec is None:
        raise fail(f"address {address!r} is not a control; known: {known}")
    if spec.kind == "text":
        raise fail(f"address {address!r} takes text, which MIDI cannot send; known: {known}")

    mode = entry.get("mode", _DEFAULT_MODE[spec.kind])
    modes = ("value", "toggle", "trigger", "momentary")
    if not isinstance(mode, str) or mode not in modes:
        raise fail(f"mode {mode!r} is not one of: {', '.join(modes)}")
    allowed = _MODES[spec.kind]
    if mode not in allowed:
        raise fail(
            f"mode {mode!r} does not suit {address} (a {spec.kind} control); "
            f"allowed: {', '.join(allowed)}"
        )

    curve = entry.get("curve", "linear")
    if not isinstance(curve, str) or curve not in CURVES:
        raise fail(f"curve {curve!r} is not one of: {', '.join(CURVES)}")
    if "curve" in entry and mode != "value":
        raise fail(f"curve {curve!r} is only for mode 'value'; {address} uses mode {mode!r}")

    low, high = _parse_range(entry, spec, mode, fail)
    value = _parse_value(entry, spec, fail)
    return Binding(
        source=source,
        number=number,
        channel=channel,
        spec=spec,
        mode=allowed[allowed.index(mode)],  # typed as a Mode whatever the checker narrows
        label=label,
        curve=cast(Curve, curve),
        low=low,
        high=high,
        value=value,
    )


def _parse_range(
    entry: Mapping[str, Any], spec: ControlSpec, mode: str, fail: Callable[[str], MidiMapError]
) -> tuple[float | None, float | None]:
    if mode != "value":
        if "range" in entry:
            raise fail(
                f"range {entry['range']!r} is only for mode 'value'; "
                f"{spec.address} uses mode {mode!r}"
            )
        return None, None
    assert spec.low is not None and spec.high is not None  # every float/int control has both
    if "range" not in entry:
        return spec.low, spec.high
    given = entry["range"]
    own = f"{_num(spec.low)}..{_num(spec.high)}"
    if not (isinstance(given, list) and len(given) == 2 and all(map(_is_number, given))):
        raise fail(f"range {given!r} is not [low, high], two numbers within {own}")
    low, high = float(given[0]), float(given[1])
    if not (spec.low <= low <= spec.high and spec.low <= high <= spec.high):
        raise fail(f"range {given!r} is outside {spec.address}'s {own}")
    if low == high:
        raise fail(f"range {given!r} has equal ends; the control would never move")
    if spec.kind == "int" and not (low.is_integer() and high.is_integer()):
        raise fail(f"range {given!r} must be whole numbers: {spec.address} takes an int")
    return low, high


def _parse_value(
    entry: Mapping[str, Any], spec: ControlSpec, fail: Callable[[str], MidiMapError]
) -> int | None:
    numbered = [a for a, s in CONTROLS.items() if s.kind == "action" and s.argument == "whole"]
    if spec.kind != "action" or spec.argument != "whole":
        if "value" in entry:
            raise fail(
                f"value {entry['value']!r} is only for {', '.join(numbered)}; "
                f"{spec.address} takes none"
            )
        return None
    assert spec.low is not None and spec.high is not None
    own = f"{_num(spec.low)}..{_num(spec.high)}"
    if "value" not in entry:
        raise fail(f"{spec.address} needs value = N, the number it sends ({own})")
    value = entry["value"]
    if not _is_int(value) or not spec.low <= value <= spec.high:
        raise fail(f"value {value!r} is not a whole number in {own}")
    return int(value)


# --- translating ------------------------------------------------------------------------------


class MidiMapper:
    """Turns MIDI messages into ``(address, args)`` for ``submit``; knows no ports, no threads.

    ``message`` is anything shaped like a mido ``Message``; only control_change, note_on and
    note_off on a mapped number (and channel) produce anything, every other message gives [].
    """

    def __init__(self, midi_map: MidiMap, *, current: Current) -> None:
        self.midi_map = midi_map
        self._current = current
        index: dict[tuple[Source, int], list[Binding]] = {}
        for binding in midi_map.controls:
            index.setdefault((binding.source, binding.number), []).append(binding)
        self._index = {key: tuple(bindings) for key, bindings in index.items()}

    def translate(self, message: Any) -> list[Sent]:
        kind = getattr(message, "type", None)
        source: Source
        if kind == "control_change":
            source, number, level = "cc", message.control, message.value
            pressed = level >= _PRESS
        elif kind == "note_on":
            source, number, level = "note", message.note, message.velocity
            pressed = level > 0  # many controllers send note_on velocity 0 for a release
        elif kind == "note_off":
            source, number, level, pressed = "note", message.note, 0, False
        else:
            return []
        bindings = self._index.get((source, number))
        if not bindings:
            return []
        channel = message.channel + 1
        sent: list[Sent] = []
        for binding in bindings:
            if binding.channel is not None and binding.channel != channel:
                continue
            args = self._args(binding, level, pressed)
            if args is not None:
                sent.append((binding.address, args))
        return sent

    def _args(self, binding: Binding, level: int, pressed: bool) -> tuple[Any, ...] | None:
        mode = binding.mode
        if mode == "value":
            if binding.source == "note" and not pressed:
                return None  # a pad's velocity is the value; letting go is not a new one
            return (_scale(binding, level),)
        if mode == "momentary":
            return (1 if pressed else 0,)
        if not pressed:
            return None  # toggles and triggers act on the press only
        if mode == "toggle":
            assert binding.spec.field is not None
            return (0 if self._current(binding.spec.field) else 1,)
        return () if binding.value is None else (binding.value,)


def _scale(binding: Binding, level: int) -> float | int:
    assert binding.low is not None and binding.high is not None
    x = min(max(level / 127.0, 0.0), 1.0)
    y = CURVES[binding.curve](x)
    low, high = binding.low, binding.high
    value = low * (1.0 - y) + high * y  # exact at both ends, unlike low + y * (high - low)
    value = min(max(value, min(low, high)), max(low, high))
    if binding.spec.kind == "int":
        return round(value)
    return value


# --- ports ------------------------------------------------------------------------------------


def _mido() -> Any:
    """mido with its backend loaded, or :class:`MidiUnavailable`.

    mido itself imports without rtmidi and fails only at the first port, with a bare
    ``No module named 'rtmidi'``; loading the backend here turns both into the install hint.
    """
    try:
        import mido

        mido.backend.load()  # rtmidi, unless MIDO_BACKEND names another
    except ImportError as exc:
        raise MidiUnavailable from exc
    return mido


ALSA_SEQUENCER = Path("/dev/snd/seq")


@contextmanager
def _native_stderr_caught() -> Iterator[list[str]]:
    """Catch what C libraries write straight to file descriptor 2 meanwhile.

    Without a sequencer ALSA prints ``ALSA lib seq_hw.c:466:(snd_seq_hw_open) open
    /dev/snd/seq failed ...`` itself before rtmidi raises, so the user saw a raw C line above
    our one-line error. Its lines are handed back (and logged at debug level); anything else
    written meanwhile (another thread's log line) is passed on to stderr afterwards.
    """
    lines: list[str] = []
    if not sys.platform.startswith("linux"):
        yield lines
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield lines
        return
    with tempfile.TemporaryFile() as caught:
        with suppress(Exception):
            sys.stderr.flush()
        os.dup2(caught.fileno(), 2)
        try:
            yield lines
        finally:
            with suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("ALSA lib "):
                    lines.append(line)
                    log.debug("%s", line)
                else:
                    with suppress(Exception):
                        sys.stderr.write(line + "\n")
            with suppress(Exception):
                sys.stderr.flush()


def _port_problem(exc: BaseException) -> str:
    """rtmidi's reason, and what it means where it means one thing."""
    if sys.platform.startswith("linux") and not ALSA_SEQUENCER.exists():
        return (
            f"{exc} (there is no ALSA sequencer here: {ALSA_SEQUENCER} is missing, so no "
            "MIDI device can be reached; load the snd-seq kernel module, or run where the "
            "controller is plugged in)"
        )
    return str(exc)


def _input_names(backend: Any) -> list[str]:
    try:
        with _native_stderr_caught():
            return [str(name) for name in backend.get_input_names()]
    except (OSError, RuntimeError) as exc:  # rtmidi: no ALSA sequencer, no CoreMIDI server ...
        raise MidiError(f"cannot list MIDI ports: {_port_problem(exc)}") from exc


def list_ports(*, backend: Any = None) -> list[str]:
    """The MIDI input ports there are now, as ``--midi`` takes them."""
    return _input_names(backend if backend is not None else _mido())


def _is_through(name: str) -> bool:
    # Linux always has "Midi Through Port-0": never the controller someone means by default
    return "midi through" in name.lower()


def find_port(wanted: str | None, available: Sequence[str]) -> str:
    """The one port ``wanted`` names: exact, else the only case-insensitive substring match.

    Port names carry numbers that change when a controller is replugged (ALSA's ``20:0``,
    Windows' ``1``), so ``--midi nano`` is how people will name them. None means the only
    port there is, leaving out Linux's MIDI Through.
    """
    listing = ", ".join(repr(name) for name in available) or "none (is the controller plugged in?)"
    if wanted is None:
        candidates = [name for name in available if not _is_through(name)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise MidiError(f"no MIDI input ports; available: {listing}")
        raise MidiError(f"several MIDI input ports; name one: {listing}")
    if wanted in available:
        return wanted
    matches = [name for name in available if wanted.lower() in name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MidiError(f"no MIDI input port matches {wanted!r}; available: {listing}")
    found = ", ".join(repr(name) for name in matches)
    raise MidiError(f"MIDI port {wanted!r} is ambiguous: it matches {found}; say more of it")


class _Complaints:
    """Logs the first few, then one in a hundred: a knob stuck on a bad mapping sends
    dozens of messages a second and must not bury the rest of the log."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def __call__(self, detail: str, *, exc_info: bool = False) -> None:
        self.count += 1
        count = self.count
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            level = logging.ERROR if exc_info else logging.WARNING
            log.log(level, "MIDI %s (%d so far): %s", self.what, count, detail, exc_info=exc_info)


class MidiInput:
    """An open MIDI input whose messages are translated and submitted on rtmidi's thread.

    Nothing a message or the map can do stops it: ``submit`` rejecting a value
    (``ValueError``, ``ControlError`` among them) is counted in :attr:`rejected` and logged,
    any other exception in :attr:`failed`, and the next message is handled as usual.
    ``backend`` is anything with mido's ``get_input_names`` and ``open_input`` (tests).
    """

    def __init__(
        self,
        port: str | None,
        mapper: MidiMapper,
        submit: Submit,
        *,
        virtual: bool = False,
        backend: Any = None,
    ) -> None:
        self._mapper = mapper
        self._submit = submit
        self._rejected = _Complaints("message rejected")
        self._failed = _Complaints("message failed")
        self._close_lock = threading.Lock()
        self._closed = False
        self.received = 0
        backend = backend if backend is not None else _mido()
        if virtual:
            self.name = port or "livediffusion"
        else:
            self.name = find_port(port, _input_names(backend))
        try:
            # the callback may run at once, on rtmidi's thread: everything it uses is set above
            with _native_stderr_caught():
                self._port = backend.open_input(
                    self.name, virtual=virtual, callback=self._on_message
                )
        except (OSError, RuntimeError) as exc:
            kind = "create virtual MIDI port" if virtual else "open MIDI port"
            raise MidiError(f"cannot {kind} {self.name!r}: {_port_problem(exc)}") from exc
        log.info(
            "MIDI: %s %r with map %s",
            "virtual port" if virtual else "listening on",
            self.name,
            mapper.midi_map.name or mapper.midi_map.where,
        )

    @property
    def rejected(self) -> int:
        return self._rejected.count

    @property
    def failed(self) -> int:
        return self._failed.count

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_message(self, message: Any) -> None:
        if self._closed:
            return
        self.received += 1
        try:
            sent = self._mapper.translate(message)
        except Exception as exc:
            self._failed(f"translating {message!r}: {exc}", exc_info=True)
            return
        for address, args in sent:
            try:
                self._submit(address, args)
            except ValueError as exc:
                self._rejected(f"{address} {args!r}: {exc}")
            except Exception as exc:
                self._failed(f"{address} {args!r}: {exc}", exc_info=True)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._port.close()  # mido drops the callback before it closes the port

    def __enter__(self) -> MidiInput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- learning ---------------------------------------------------------------------------------


class Learner:
    """Turns the first message from each CC or note into a ``[[control]]`` stanza to paste."""

    def __init__(self) -> None:
        self._seen: set[tuple[Source, int, int]] = set()

    def feed(self, message: Any) -> str | None:
        kind = getattr(message, "type", None)
        source: Source
        if kind == "control_change":
            source, number, level = "cc", int(message.control), int(message.value)
        elif kind == "note_on" and message.velocity > 0:
            source, number, level = "note", int(message.note), int(message.velocity)
        else:
            return None  # releases, clock, sysex: nothing to bind
        channel = int(message.channel) + 1
        key = (source, number, channel)
        if key in self._seen:
            return None
        self._seen.add(key)
        hint = (
            ""
            if source == "cc"
            else '# a button: "/bypass" toggles; "/preset/recall" with value = N recalls N\n'
        )
        return (
            "[[control]]\n"
            f"{source} = {number}\n"
            f"channel = {channel}\n"
            'address = "/strength"  # placeholder: the control this should drive\n'
            f'label = "{source} {number}"\n'
            f"# value {level}\n"
            f"{hint}"
            "\n"
        )


def learn(
    port: str | None,
    *,
    seconds: float | None,
    out: TextIO,
    backend: Any = None,
    stop: threading.Event | None = None,
) -> int:
    """Print a stanza for every new CC/note on ``port`` until ``seconds`` (None: Ctrl-C).

    Returns how many distinct controls were seen. Polls rather than using a callback so that
    Ctrl-C lands in this thread and the port is closed on the way out.
    """
    backend = backend if backend is not None else _mido()
    name = find_port(port, _input_names(backend))
    try:
        with _native_stderr_caught():
            opened = backend.open_input(name)
    except (OSError, RuntimeError) as exc:
        raise MidiError(f"cannot open MIDI port {name!r}: {_port_problem(exc)}") from exc
    learner = Learner()
    found = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    until = "Ctrl-C" if seconds is None else f"{_num(seconds)} s"
    out.write(
        f"# listening on {name!r} until {until}: move each knob, fader and button\n"
        f"# addresses: {', '.join(_mappable())}\n\n"
    )
    out.flush()
    try:
        while deadline is None or time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            message = opened.poll()
            if message is None:
                time.sleep(0.005)
                continue
            stanza = learner.feed(message)
            if stanza is not None:
                found += 1
                out.write(stanza)
                out.flush()
    finally:
        opened.close()
    return found


# --- the command line and the docs -----------------------------------------------------------


def midi_command(*, list_ports: bool, learn: bool, port: str | None, seconds: float | None) -> int:
    """``livediffusion midi --list | --learn [--port P] [--seconds S]``; no flag lists."""
    try:
        if list_ports or not learn:
            names = _input_names(_mido())
            for name in names:
                print(name)
            if not names:
                print("no MIDI input ports found", file=sys.stderr)
        if learn:
            _learn(port, seconds=seconds, out=sys.stdout)
    except MidiError as exc:
        print(f"livediffusion: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --learn without --seconds ends
    return 0


_learn = learn  # midi_command's flags shadow the function's name


def _source_text(binding: Binding) -> str:
    return f"{'CC' if binding.source == 'cc' else 'note'} {binding.number}"


def _range_text(binding: Binding) -> str:
    if binding.value is not None:
        return f"sends {binding.value}"
    if binding.low is None or binding.high is None:
        return "-"
    return f"{_num(binding.low)}..{_num(binding.high)}"


def _rows(midi_map: MidiMap) -> Iterable[tuple[str, ...]]:
    for binding in midi_map.controls:
        yield (
            binding.label or "-",
            _source_text(binding),
            "any" if binding.channel is None else str(binding.channel),
            f"`{binding.address}`",
            _range_text(binding),
            binding.curve if binding.mode == "value" else "-",
            binding.mode,
        )


def describe_map(midi_map: MidiMap) -> str:
    """The map as a markdown table; docs/midi.md holds one per shipped map (a test checks)."""
    header = ("label", "cc/note", "channel", "address", "range", "curve", "mode")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
        for row in _rows(midi_map)
    ]
    return "\n".join(lines)
