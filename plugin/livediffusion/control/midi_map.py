"""MIDI maps: the TOML files that say which knob does what, checked against the control table
when they load, and the mapper that turns a controller's messages into control messages."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from livediffusion.control.controls import CONTROLS, ControlSpec
from livediffusion.control.styles import lora_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    import tomli as tomllib

__all__ = [
    "CURVES",
    "MAPS_DIR",
    "Binding",
    "MidiMap",
    "MidiMapError",
    "MidiMapper",
    "describe_map",
    "load_map",
    "parse_map",
    "shipped_maps",
]

MAPS_DIR = Path(__file__).with_name("midi_maps")
"""The shipped maps: ``--midi-map NAME`` looks for ``NAME.toml`` here."""

Submit = Callable[[str, tuple[Any, ...]], None]
"""The server's way in: validates with ``parse_message`` and raises ``ValueError`` if bad."""

Current = Callable[[str], Any]
"""``current(field)``: the control's present value, so a toggle knows which way to flip; for
a row without a field (``/lora/N/on``) it is asked by the concrete address."""

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
    at: str = ""
    """The address when it is not the row's own: ``/lora/0/weight`` for ``/lora/N/weight``."""

    @property
    def address(self) -> str:
        return self.at or self.spec.address


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
    if isinstance(address, str) and spec is None:
        spec = lora_spec(address)  # /lora/0/weight: N is checked by the server, which knows
    if spec is not None and "/N/" in address:
        raise fail(f"address {address!r} needs a LoRA's number for N: {address.replace('N', '0')}")
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
        at=address if address != spec.address else "",
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
            field = binding.spec.field
            return (0 if self._current(binding.address if field is None else field) else 1,)
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
