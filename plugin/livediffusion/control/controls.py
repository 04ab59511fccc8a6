"""What the performer controls, and the one place that decides what a valid change is.

Every way in (OSC, MIDI, presets, the command line's starting look) proposes a change as an
address and its arguments; :func:`parse_message` turns it into a validated :class:`Command` or
raises :class:`ControlError` (a ``ValueError``), which the caller logs and drops. The table
:data:`CONTROLS` is the only list of addresses: the server, ``livediffusion osc``, the README's
table and the MIDI map checks are all read from it.

:class:`ControlStore` holds one immutable :class:`Controls` snapshot and swaps it atomically,
so the inference thread reads a consistent set of values per frame without taking a lock.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CONTROLS",
    "Command",
    "ControlError",
    "ControlSpec",
    "ControlStore",
    "Controls",
    "address_table",
    "canonical_address",
    "parse_message",
]

DEFAULT_PROMPT = "a vivid oil painting, swirling colours, dramatic light"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1
MAX_GLIDE_SECONDS = 60.0
MAX_PRESET = 999
MAX_CONTROLNET_SCALE = 2.0
MAX_LORA_WEIGHT = 2.0
LORA_WEIGHT = "/lora/N/weight"
LORA_ON = "/lora/N/on"
"""The LoRA rows of the table: N is a LoRA's place in ``--lora`` order (control.styles)."""


@dataclass(frozen=True, slots=True)
class Controls:
    """One consistent set of control values. Replace, never mutate."""

    prompt: str = DEFAULT_PROMPT
    prompt_b: str = ""  # empty: no second prompt, the mix does nothing
    prompt_mix: float = 0.0
    strength: float = 1.0
    seed: int = 42
    feedback: float = 0.1
    smoothing: float = 0.4
    blend: float = 0.0
    bypass: bool = False
    paused: bool = False
    glide: float = 0.0
    prompt_glide: float = 0.5
    seed_glide: float = 0.5
    controlnet_scale: float = 1.0  # how much a --controlnet steers; nothing without one


Kind = Literal["float", "int", "switch", "text", "action"]


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """One address: what it takes and what it does.

    ``field`` names the :class:`Controls` value it sets; actions (``/reset``, ``/status`` ...)
    have none. ``glides``: the value ramps over ``/glide`` seconds instead of jumping.
    """

    address: str
    kind: Kind
    effect: str
    field: str | None = None
    low: float | None = None
    high: float | None = None
    glides: bool = False
    argument: Literal["none", "trigger", "whole"] = "none"  # actions only

    @property
    def type_name(self) -> str:
        if self.kind == "action":
            return {"none": "-", "trigger": "- or 0/1", "whole": "int"}[self.argument]
        return {"float": "float", "int": "int", "switch": "0/1", "text": "string"}[self.kind]

    @property
    def range_text(self) -> str:
        if self.kind == "text":
            return f"<= {MAX_PROMPT_CHARS} chars"
        if self.kind == "switch":
            return "0, 1"
        if self.low is None or self.high is None:
            return "-"
        return f"{_plain(self.low)}..{_plain(self.high)}"

    @property
    def default_text(self) -> str:
        if self.field is None:
            return "-"
        value = getattr(Controls(), self.field)
        if isinstance(value, bool):
            return str(int(value))
        if isinstance(value, str):
            return repr(value) if len(value) < 24 else repr(value[:21] + "...")
        return _plain(value)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _unit(address: str, field: str, effect: str) -> ControlSpec:
    return ControlSpec(address, "float", effect, field, 0.0, 1.0, glides=True)


def _seconds(address: str, field: str, effect: str) -> ControlSpec:
    return ControlSpec(address, "float", effect, field, 0.0, MAX_GLIDE_SECONDS)


CONTROLS: Mapping[str, ControlSpec] = {
    spec.address: spec
    for spec in (
        ControlSpec("/prompt", "text", "the prompt (prompt A); glides to it", "prompt"),
        ControlSpec("/prompt/a", "text", "same as /prompt", "prompt"),
        ControlSpec("/prompt/b", "text", "a second prompt for /prompt/mix; '' = none", "prompt_b"),
        _unit("/prompt/mix", "prompt_mix", "morph A -> B in embedding space (0 = A, 1 = B)"),
        _unit("/strength", "strength", "1 = full re-imagining (t 999), 0 = almost none"),
        ControlSpec("/seed", "int", "the noise; glides to the new one", "seed", 0, MAX_SEED, False),
        _unit("/feedback", "feedback", "share of the previous frame's latent"),
        _unit("/smoothing", "smoothing", "share of the previous output (EMA)"),
        _unit("/blend", "blend", "mix of the input picture into the output"),
        ControlSpec(
            "/bypass", "switch", "pass the input through, framed like the output", "bypass"
        ),
        ControlSpec("/pause", "switch", "freeze the output on the last frame", "paused"),
        _seconds("/glide", "glide", "seconds numeric values ramp to a new value"),
        _seconds("/prompt/glide", "prompt_glide", "seconds a new prompt fades in"),
        _seconds("/seed/glide", "seed_glide", "seconds a new seed fades in"),
        ControlSpec(
            "/controlnet/scale",
            "float",
            "how much --controlnet keeps the input's shapes (starts at its own); 0 = none",
            "controlnet_scale",
            0.0,
            MAX_CONTROLNET_SCALE,
            glides=True,
        ),
        ControlSpec(
            LORA_WEIGHT,
            "float",
            "LoRA N's weight (N from 0, in --lora order; starts at its --lora weight); global",
            low=0.0,
            high=MAX_LORA_WEIGHT,
            glides=True,
        ),
        ControlSpec(LORA_ON, "switch", "LoRA N on, or off (weight 0, its weight kept); global"),
        ControlSpec(
            "/preset/save",
            "action",
            "store every value (prompts included) as preset N",
            low=0,
            high=MAX_PRESET,
            argument="whole",
        ),
        ControlSpec(
            "/preset/recall",
            "action",
            "glide to preset N",
            low=0,
            high=MAX_PRESET,
            argument="whole",
        ),
        ControlSpec(
            "/reset", "action", "forget feedback and smoothing; start afresh", argument="trigger"
        ),
        ControlSpec(
            "/status",
            "action",
            "reply /status in_fps out_fps latency_p50_ms dropped model backend osc_rejected "
            "controlnet_scale lora_weights",
        ),
        ControlSpec("/ping", "action", "reply /pong with the same arguments"),
    )
}
"""The address space. Order is the order of the docs' table."""

FIELD_ADDRESS: Mapping[str, str] = {
    spec.field: spec.address for spec in reversed(list(CONTROLS.values())) if spec.field is not None
}
"""Controls field -> its canonical address (``prompt`` -> ``/prompt``, not ``/prompt/a``)."""

GLIDING_FIELDS: tuple[str, ...] = tuple(
    spec.field for spec in CONTROLS.values() if spec.glides and spec.field is not None
)


class ControlError(ValueError):
    """A control message that is ill-typed or out of range; it is dropped, nothing changes."""


@dataclass(frozen=True, slots=True)
class Command:
    """A validated message: ``value`` is a float, int, bool, str or None (actions)."""

    spec: ControlSpec
    value: Any


def canonical_address(address: str, *, prefix: str = "") -> str | None:
    """Map what hosts send to a table address, or None if it is not ours.

    TouchDesigner's OSC Out CHOP uses channel names as addresses: ``strength`` or
    ``/strength``, and channel names cannot hold every character, so ``prompt_mix`` is read as
    ``/prompt/mix``. With a prefix (``--osc-prefix /stage1``) addresses must carry it, slash or
    not: ``/stage1/strength``, ``stage1/strength``, ``stage1_strength``.
    """
    path = address if address.startswith("/") else "/" + address
    slashed = path.replace("_", "/")  # "stage1_strength" too
    for candidate, head in ((path, prefix), (slashed, prefix.replace("_", "/"))):
        if head and not candidate.startswith(head + "/"):
            continue
        rest = candidate[len(head) :]
        for name in (rest, rest.replace("_", "/")):
            if name in CONTROLS:
                return name
    return None


def _number(address: str, args: tuple[Any, ...]) -> float:
    if len(args) != 1:
        raise ControlError(f"{address} takes one number, got {len(args)} arguments")
    (value,) = args
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{address} takes a number, got {type(value).__name__} {value!r}"[:200])
    number = float(value)
    if not math.isfinite(number):
        raise ControlError(f"{address} got {number}")
    return number


def _in_range(spec: ControlSpec, value: float) -> None:
    low, high = spec.low, spec.high
    if low is not None and high is not None and not low <= value <= high:
        raise ControlError(
            f"{spec.address} must be between {_plain(low)} and {_plain(high)}, got {_plain(value)}"
        )


def _whole(spec: ControlSpec, args: tuple[Any, ...]) -> int:
    # TouchDesigner sends every channel as a float: 7.0 means 7.
    value = _number(spec.address, args)
    rounded = round(value)
    if abs(value - rounded) > 1e-6:
        raise ControlError(f"{spec.address} takes a whole number, got {value}")
    _in_range(spec, rounded)
    return int(rounded)


def _switch(spec: ControlSpec, args: tuple[Any, ...]) -> bool:
    # OSC has real booleans (T/F) but TouchDesigner and most controllers send 0/1 numbers.
    if len(args) == 1 and isinstance(args[0], bool):
        return args[0]
    value = _number(spec.address, args)
    if value not in (0.0, 1.0):
        raise ControlError(f"{spec.address} takes 0 or 1, got {_plain(value)}")
    return value == 1.0


def _text(spec: ControlSpec, args: tuple[Any, ...]) -> str:
    if len(args) != 1 or not isinstance(args[0], str):
        raise ControlError(f"{spec.address} takes one string, got {args!r}"[:200])
    text: str = args[0]
    if len(text) > MAX_PROMPT_CHARS:
        raise ControlError(f"{spec.address} is {len(text)} characters, at most {MAX_PROMPT_CHARS}")
    if "\0" in text:
        raise ControlError(f"{spec.address} holds a NUL character")
    return text


def _action(spec: ControlSpec, args: tuple[Any, ...]) -> Any:
    if spec.argument == "whole":
        return _whole(spec, args)
    if spec.argument == "trigger":
        # a button sends 1 on press and 0 on release: only the press acts (None: ignore)
        if not args:
            return True
        return True if _switch(spec, args) else None
    return args  # /ping echoes them; /status ignores them


def parse_message(address: str, args: tuple[Any, ...]) -> Command:
    """Validate one message for a table address; raise :class:`ControlError` if bad."""
    spec = CONTROLS.get(address)
    if spec is None:
        raise ControlError(f"unknown address {address[:80]!r}; see `livediffusion osc`")
    if spec.kind == "float":
        # OSC floats are 32-bit: 0.4 arrives as 0.4000000059604645. Keep float32's precision
        # and no more, so echoes, presets and logs show what the performer sent.
        value: Any = float(f"{_number(address, args):.7g}")
        _in_range(spec, value)
    elif spec.kind == "int":
        value = _whole(spec, args)
    elif spec.kind == "switch":
        value = _switch(spec, args)
    elif spec.kind == "text":
        value = _text(spec, args)
    else:
        value = _action(spec, args)
    return Command(spec, value)


def validate_values(values: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check ``{field: value}`` (a preset, a config file) through the same parsers."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        address = FIELD_ADDRESS.get(field)
        if address is None:
            known = ", ".join(FIELD_ADDRESS)
            raise ControlError(f"{where}: unknown control {field!r}; known: {known}")
        try:
            checked[field] = parse_message(address, (value,)).value
        except ControlError as exc:
            raise ControlError(f"{where}: {field}: {exc}") from None
    return checked


def address_table(prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(address, type, range, default, effect) rows, for ``livediffusion osc`` and the docs."""
    return [
        (prefix + spec.address, spec.type_name, spec.range_text, spec.default_text, spec.effect)
        for spec in CONTROLS.values()
    ]


def format_address_table(prefix: str = "", *, markdown: bool = False) -> str:
    rows = [("address", "type", "range", "default", "effect"), *address_table(prefix)]
    if markdown:
        header, *body = rows
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for address, kind, span, default, effect in body:
            shown = default if default == "-" else f"`{default}`"
            lines.append(f"| `{address}` | {kind} | {span} | {shown} | {effect} |")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


ChangeListener = Callable[[Mapping[str, Any]], None]


class ControlStore:
    """The current :class:`Controls`, swapped atomically; waiters learn of every change.

    Besides values it carries two things the frame thread must see in order: a reset counter
    (``/reset``) and the glide time of the latest change when it was not ``controls.glide``
    (a preset recall glides even when ``/glide`` is 0).
    """

    def __init__(self, initial: Controls | None = None) -> None:
        self._current = initial or Controls()
        self._glide_override: float | None = None
        self._version = 0
        self._resets = 0
        self._changed = threading.Condition()
        self._listeners: list[ChangeListener] = []

    def snapshot(self) -> Controls:
        """The latest values. A plain attribute read: no lock on the frame path."""
        return self._current

    def glide_seconds(self) -> float:
        """How long numeric values should take to reach the latest snapshot's."""
        override = self._glide_override
        return self._current.glide if override is None else override

    @property
    def version(self) -> int:
        return self._version

    @property
    def resets(self) -> int:
        """How many ``/reset`` were asked for; the frame thread acts when it grows."""
        return self._resets

    def subscribe(self, listener: ChangeListener) -> None:
        """Call ``listener({field: value})`` after each change, on the changing thread."""
        self._listeners.append(listener)

    def update(self, *, ramp_seconds: float | None = None, **changes: Any) -> Controls:
        """Apply already-validated changes; unknown field names are a programming error.

        ``ramp_seconds``: how long numeric values take to get there, instead of ``glide``.
        """
        with self._changed:
            self._current = dataclasses.replace(self._current, **changes)
            self._glide_override = ramp_seconds
            self._version += 1
            self._changed.notify_all()
            current = self._current
        for listener in self._listeners:
            listener(changes)
        return current

    def request_reset(self) -> None:
        with self._changed:
            self._resets += 1
            self._version += 1
            self._changed.notify_all()

    def apply(self, command: Command) -> bool:
        """Apply a value command; False for actions, which are the caller's to run."""
        if command.spec.field is None:
            return False
        self.update(**{command.spec.field: command.value})
        return True

    def handle_osc(self, address: str, args: tuple[Any, ...]) -> None:
        """Validate and apply one value message (tests and simple embedders; no actions)."""
        command = parse_message(address, args)
        if not self.apply(command):
            raise ControlError(f"{address} is an action; it needs the control surface")

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until the version differs from ``seen_version`` (or timeout); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout=timeout)
            return self._version


def preset_values(controls: Controls) -> dict[str, Any]:
    """What a preset keeps: every value but ``paused`` (a transport switch, not a look)."""
    values = dataclasses.asdict(controls)
    values.pop("paused")
    return values


def iter_fields() -> Iterable[dataclasses.Field[Any]]:
    return dataclasses.fields(Controls)
