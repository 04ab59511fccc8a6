"""The LoRAs' live values: ``/lora/N/weight`` and ``/lora/N/on``, global to the model.

A LoRA's weight belongs to the one UNet every stream runs through, so it is not a value of a
stream's :class:`~livediffusion.control.controls.Controls`: it lives here, in one
:class:`StyleStore` per server, beside the controls. N is a LoRA's place in ``--lora`` order
(from 0); the count is known from the flags before the model loads, so a message for a LoRA
that is not there is refused at once like any bad message (logged, counted, nothing changes).

``/lora/N/on 0`` takes the LoRA off without forgetting its weight: ``/lora/N/on 1`` brings
that weight back. What the model runs at is ``weight`` when on, 0 when off, reached over
``/glide`` seconds by the frame thread (:mod:`livediffusion.run.lora_weights`), which also
writes back here what it applied, for ``/status``.

Values are validated through the address table's own rows (``/lora/N/weight``, ``/lora/N/on``
in :data:`~livediffusion.control.controls.CONTROLS`), so ranges and types are said the way
every other control says them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from livediffusion.control.controls import (
    CONTROLS,
    LORA_ON,
    LORA_WEIGHT,
    ControlError,
    ControlSpec,
    parse_message,
)

__all__ = ["LoraControl", "StyleStore", "lora_address", "lora_spec"]

Part = Literal["weight", "on"]
_ADDRESS = re.compile(r"^/lora/([^/]*)/(weight|on)$")
_TEMPLATES: Mapping[Part, str] = {"weight": LORA_WEIGHT, "on": LORA_ON}


@dataclass(frozen=True, slots=True)
class LoraControl:
    """One LoRA's two values, as the performer set them."""

    weight: float
    on: bool = True

    @property
    def effective(self) -> float:
        """What the model should run at: the weight, or 0 while off."""
        return self.weight if self.on else 0.0


def lora_address(address: str, *, prefix: str = "") -> tuple[str, Part] | None:
    """``(N as sent, "weight" | "on")`` when ``address`` is one of the LoRA rows, else None.

    Read like :func:`~livediffusion.control.controls.canonical_address` reads the others: the
    prefix, slash or not, and TouchDesigner channel names (``lora_0_weight``).
    """
    path = address if address.startswith("/") else "/" + address
    slashed = path.replace("_", "/")
    for candidate, head in ((path, prefix), (slashed, prefix.replace("_", "/"))):
        if head and not candidate.startswith(head + "/"):
            continue
        rest = candidate[len(head) :]
        for name in (rest, rest.replace("_", "/")):
            match = _ADDRESS.match(name)
            if match is not None:
                part: Part = "weight" if match.group(2) == "weight" else "on"
                return match.group(1), part
    return None


def lora_spec(address: str) -> ControlSpec | None:
    """The table row a concrete LoRA address (``/lora/0/weight``) is checked against."""
    found = lora_address(address)
    if found is None or not found[0].isdigit():
        return None
    return CONTROLS[_TEMPLATES[found[1]]]


Listener = Callable[[int, LoraControl], None]


class StyleStore:
    """Every LoRA's :class:`LoraControl`, swapped atomically; the frame thread reads it
    without a lock and learns of changes through :attr:`version`."""

    def __init__(self, weights: Sequence[float] = ()) -> None:
        self._current = tuple(LoraControl(float(weight)) for weight in weights)
        self._glide_override: float | None = None
        self._version = 0
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.applied: tuple[float, ...] = tuple(float(weight) for weight in weights)
        """The weights the model runs at now (set by the frame thread; ``/status`` says it)."""

    def __len__(self) -> int:
        return len(self._current)

    def snapshot(self) -> tuple[LoraControl, ...]:
        return self._current

    @property
    def version(self) -> int:
        return self._version

    def glide_override(self) -> float | None:
        """Seconds the latest change should take when it was not ``/glide`` (a recall)."""
        return self._glide_override

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(N, values)`` for each LoRA a change touched (``--osc-echo``)."""
        self._listeners.append(listener)

    # -- in --------------------------------------------------------------------------------

    def parse(
        self, address: str, args: tuple[Any, ...], *, prefix: str = ""
    ) -> tuple[int, Part, Any] | None:
        """``(N, part, value)`` for a valid LoRA message; None when the address is not one
        of the LoRA rows; :class:`ControlError` when it is one, but bad."""
        found = lora_address(address, prefix=prefix)
        if found is None:
            return None
        text, part = found
        shown = f"/lora/{text[:20]}/{part}"
        count = len(self._current)
        if not count:
            raise ControlError(f"{shown}: no LoRA is loaded (serve --lora FILE adds one)")
        if not text.isdigit() or int(text) >= count:
            raise ControlError(
                f"{shown}: N must be a LoRA's number, 0..{count - 1} in --lora order"
            )
        try:
            value = parse_message(_TEMPLATES[part], args).value
        except ControlError as exc:
            raise ControlError(str(exc).replace(_TEMPLATES[part], shown, 1)) from None
        return int(text), part, value

    def submit(self, address: str, args: tuple[Any, ...], *, prefix: str = "") -> bool:
        """Validate and apply one message; False when it is not a LoRA address at all."""
        parsed = self.parse(address, args, prefix=prefix)
        if parsed is None:
            return False
        index, part, value = parsed
        if part == "weight":
            self.set(index, weight=value)
        else:
            self.set(index, on=value)
        return True

    def set(
        self,
        index: int,
        *,
        weight: float | None = None,
        on: bool | None = None,
        ramp_seconds: float | None = None,
    ) -> LoraControl:
        with self._lock:
            current = list(self._current)
            changed = current[index]
            if weight is not None:
                changed = replace(changed, weight=float(weight))
            if on is not None:
                changed = replace(changed, on=bool(on))
            current[index] = changed
            self._publish(tuple(current), ramp_seconds)
        for listener in self._listeners:
            listener(index, changed)
        return changed

    def replace_all(
        self, values: Sequence[LoraControl], *, ramp_seconds: float | None = None
    ) -> None:
        """Every LoRA at once (a preset recall), in one step the frame thread sees whole."""
        if len(values) != len(self._current):
            raise ValueError(f"{len(values)} LoRA values for {len(self._current)} LoRAs")
        with self._lock:
            self._publish(tuple(values), ramp_seconds)
        for index, value in enumerate(values):
            for listener in self._listeners:
                listener(index, value)

    def _publish(self, values: tuple[LoraControl, ...], ramp_seconds: float | None) -> None:
        self._current = values
        self._glide_override = ramp_seconds
        self._version += 1

    # -- presets -----------------------------------------------------------------------------

    def preset_entry(self) -> list[dict[str, Any]]:
        """What a preset keeps: each LoRA's weight and switch, in ``--lora`` order."""
        return [{"weight": value.weight, "on": value.on} for value in self._current]

    def from_preset(self, entry: object, *, where: str) -> tuple[LoraControl, ...] | None:
        """A preset's LoRA values checked like messages, fitted to the LoRAs loaded now: a
        preset saved with fewer LoRAs leaves the others as they are, one saved with more
        sets the ones there are. None when the preset holds none."""
        if entry is None:
            return None
        if not isinstance(entry, list):
            raise ControlError(f"{where}: lora must be a list of {{weight, on}} tables")
        values = list(self._current)
        for index, item in enumerate(entry[: len(values)]):
            if not isinstance(item, dict) or set(item) - {"weight", "on"}:
                raise ControlError(f"{where}: lora {index} must be a table of weight and on")
            try:
                weight = parse_message(LORA_WEIGHT, (item.get("weight", values[index].weight),))
                on = parse_message(LORA_ON, (item.get("on", values[index].on),))
            except ControlError as exc:
                raise ControlError(f"{where}: lora {index}: {exc}") from None
            values[index] = LoraControl(weight.value, on.value)
        return tuple(values)

    # -- out ---------------------------------------------------------------------------------

    def value_at(self, address: str) -> Any:
        """The value now at a concrete address (a MIDI toggle flips it); None if none."""
        found = lora_address(address)
        if found is None or not found[0].isdigit() or int(found[0]) >= len(self._current):
            return None
        value = self._current[int(found[0])]
        return value.weight if found[1] == "weight" else value.on

    def status_text(self) -> str:
        """The applied weights for ``/status``: ``"0.8 0"``; '' without LoRAs."""
        return " ".join(f"{weight:.4g}" for weight in self.applied)


# -- the starting values, from the configuration ----------------------------------------------


def starting_scale(controlnet: str | None, given: float | None) -> float:
    """``/controlnet/scale`` at start: ``--controlnet-scale``, else the registry's default
    for a known ControlNet (what its authors or demos use), else 1."""
    if given is not None:
        return given
    from livediffusion_models.registry import CONTROLNETS

    known = CONTROLNETS.get(controlnet or "")
    return known.default_scale if known is not None else 1.0


def lora_tables(requests: Sequence[Any]) -> list[str]:
    """``[[lora]]`` tables for ``config --print`` (``LoraRequest`` items), or a commented
    example when there are none."""
    if not requests:
        return [
            "# LoRA styles, one table each (/lora/0/weight is the first):",
            '# [[lora]]\n# path = "ink.safetensors"\n# weight = 0.8',
            "",
        ]
    lines = []
    for request in requests:
        lines += ["[[lora]]", f"path = {json.dumps(request.source)}"]
        lines += [f"weight = {request.weight!r}", ""]
    return lines
