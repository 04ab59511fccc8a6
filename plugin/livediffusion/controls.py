"""What the performer controls, and the one place that decides what a valid change is.

The OSC layer only *proposes* changes: :func:`parse_message` turns an address and its
arguments into a validated change or raises :class:`ControlError` (a ``ValueError``), which
the OSC server logs and drops. :class:`ControlStore` holds one immutable :class:`Controls`
snapshot and swaps it atomically, so the inference thread reads a consistent set of values
per frame without taking a lock.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTROL_ADDRESSES",
    "ControlError",
    "ControlStore",
    "Controls",
    "parse_message",
]

DEFAULT_PROMPT = "a vivid oil painting, swirling colours, dramatic light"
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Controls:
    """One consistent set of control values. Replace, never mutate."""

    prompt: str = DEFAULT_PROMPT
    strength: float = 1.0
    seed: int = 42
    feedback: float = 0.1
    smoothing: float = 0.4
    blend: float = 0.0
    bypass: bool = False
    paused: bool = False


class ControlError(ValueError):
    """A control message that is ill-typed or out of range; it is dropped, nothing changes."""


def _number(address: str, args: tuple[Any, ...]) -> float:
    if len(args) != 1:
        raise ControlError(f"{address} takes one number, got {len(args)} arguments")
    (value,) = args
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{address} takes a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ControlError(f"{address} got {number}")
    return number


def _unit(address: str, args: tuple[Any, ...]) -> float:
    value = _number(address, args)
    if not 0.0 <= value <= 1.0:
        raise ControlError(f"{address} must be between 0 and 1, got {value}")
    return value


def _switch(address: str, args: tuple[Any, ...]) -> bool:
    # OSC has real booleans (T/F) but TouchDesigner and most controllers send 0/1 numbers.
    if len(args) == 1 and isinstance(args[0], bool):
        return args[0]
    value = _number(address, args)
    if value not in (0.0, 1.0):
        raise ControlError(f"{address} takes 0 or 1, got {value}")
    return value == 1.0


def _seed(address: str, args: tuple[Any, ...]) -> int:
    value = _number(address, args)
    rounded = round(value)
    if abs(value - rounded) > 1e-6:
        raise ControlError(f"{address} takes a whole number, got {value}")
    if not 0 <= rounded <= MAX_SEED:
        raise ControlError(f"{address} must be between 0 and {MAX_SEED}, got {rounded}")
    return rounded


def _prompt(address: str, args: tuple[Any, ...]) -> str:
    if len(args) != 1 or not isinstance(args[0], str):
        raise ControlError(f"{address} takes one string, got {args!r}"[:200])
    text: str = args[0]
    if len(text) > MAX_PROMPT_CHARS:
        raise ControlError(f"{address} is {len(text)} characters, at most {MAX_PROMPT_CHARS}")
    return text


_Parser = Callable[[str, tuple[Any, ...]], Any]

CONTROL_ADDRESSES: Mapping[str, tuple[str, _Parser, str]] = {
    "/prompt": ("prompt", _prompt, "string; glides to the new prompt"),
    "/strength": ("strength", _unit, "0..1; 1 = t 999 (full re-imagining), 0 = almost none"),
    "/seed": ("seed", _seed, f"whole number 0..{MAX_SEED}; glides to the new noise"),
    "/feedback": ("feedback", _unit, "0..1; share of the previous frame's latent"),
    "/smoothing": ("smoothing", _unit, "0..1; share of the previous output (EMA)"),
    "/blend": ("blend", _unit, "0..1; mix of the input picture into the output"),
    "/bypass": (
        "bypass",
        _switch,
        "0/1; pass the input through (framed and sized like the output)",
    ),
    "/pause": ("paused", _switch, "0/1; freeze the output on the last frame"),
}
"""address -> (field, parser, what it takes). The docs' OSC table is written from this."""


def parse_message(address: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """Validate one OSC message into ``{field: value}``; raise :class:`ControlError` if bad."""
    try:
        field, parser, _ = CONTROL_ADDRESSES[address]
    except KeyError:
        known = ", ".join(CONTROL_ADDRESSES)
        raise ControlError(f"unknown address {address!r}; known: {known}") from None
    return {field: parser(address, args)}


class ControlStore:
    """The current :class:`Controls`, swapped atomically; waiters learn of every change."""

    def __init__(self, initial: Controls | None = None) -> None:
        self._current = initial or Controls()
        self._version = 0
        self._changed = threading.Condition()

    def snapshot(self) -> Controls:
        """The latest values. A plain attribute read: no lock on the frame path."""
        return self._current

    @property
    def version(self) -> int:
        return self._version

    def update(self, **changes: Any) -> Controls:
        """Apply already-validated changes; unknown field names are a programming error."""
        with self._changed:
            self._current = dataclasses.replace(self._current, **changes)
            self._version += 1
            self._changed.notify_all()
            return self._current

    def handle_osc(self, address: str, args: tuple[Any, ...]) -> None:
        """An :class:`~livediffusion_bridge.osc.OscServer` handler: validate, then apply."""
        self.update(**parse_message(address, args))

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until the version differs from ``seen_version`` (or timeout); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout=timeout)
            return self._version
