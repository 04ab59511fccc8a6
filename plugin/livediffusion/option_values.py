"""The checkers behind the options table: each takes a flag's text or a TOML value and returns
the checked value, or raises ``ValueError`` with a sentence that says what is allowed."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from livediffusion.config import StreamConfig, parse_size
from livediffusion.control.controls import (
    CONTROLS,
    FIELD_ADDRESS,
    ControlError,
    parse_message,
)
from livediffusion_bridge import InvalidURIError, check_uri
from livediffusion_bridge.uri import shorten

__all__ = ["PREVIEW_MODES", "Parser"]

Parser = Callable[[object], Any]

# -- parsers: flag text or TOML value in, checked value out ---------------------------------


def _show(value: object) -> str:
    """A value as an error message echoes it: cut, so a pasted 3 KB prompt is not a 3 KB line."""
    return shorten(repr(value) if isinstance(value, str) else str(value))


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_show(value)}")
    return value


def _optional_text(value: object) -> str | None:
    text = _text(value)
    return text or None


def _uri(role: Literal["source", "sink"], default: str) -> Parser:
    """A source or sink URI, checked without opening it. An empty one is refused: it used
    to mean the default silently, which a typo or an empty variable also produces."""

    def parse(value: object) -> str:
        text = _text(value).strip()
        if not text:
            raise ValueError(
                f"must be a {role} URI such as {default} or test://pattern; leave it out "
                f"for the default ({default})"
            )
        try:
            check_uri(text, role=role)
        except InvalidURIError as exc:
            raise ValueError(str(exc)) from None
        return text

    return parse


def _midi_map(value: object) -> str | None:
    """A shipped map's name or a file, read and checked now rather than after OSC started."""
    text = _optional_text(value)
    if text is not None:
        from livediffusion.control.midi_map import load_map

        load_map(text)  # MidiMapError is a ValueError naming the file, entry and value
    return text


def _choice(choices: Sequence[str], *, none: str | None = None) -> Parser:
    def parse(value: object) -> Any:
        if none is not None and value == none:
            return None
        allowed = (*([none] if none else []), *choices)
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {_show(value)}")
        return value

    return parse


def _number(value: object, kind: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be {kind}, got {_show(value)}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"must be {kind}, got {_show(value)}")


def _whole(low: int, high: int) -> Parser:
    kind = f"a whole number {low}..{high}"

    def parse(value: object) -> int:
        number = _number(value, kind)
        if not number.is_integer() or not low <= number <= high:
            raise ValueError(f"must be {kind}, got {_show(value)}")
        return int(number)

    return parse


def _optional_whole(low: int, high: int) -> Parser:
    whole = _whole(low, high)
    return lambda value: None if value in ("", None) else whole(value)


def _seconds(*, low: float = 0.0, optional: bool = False) -> Parser:
    kind = f"a number of seconds >= {low:g}"

    def parse(value: object) -> float | None:
        if optional and value in ("", None):
            return None
        number = _number(value, kind)
        if not number >= low or number == float("inf"):
            raise ValueError(f"must be {kind}, got {_show(value)}")
        return number

    return parse


def _positive(kind: str) -> Parser:
    def parse(value: object) -> float:
        number = _number(value, kind)
        if not 0 < number < float("inf"):
            raise ValueError(f"must be {kind}, got {_show(value)}")
        return number

    return parse


def _fraction(value: object) -> float:
    kind = "a number from 0 to 1"
    number = _number(value, kind)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be {kind}, got {_show(value)}")
    return number


def _size(*, multiple_of: int) -> Parser:
    def parse(value: object) -> tuple[int, int] | None:
        if value in ("", None):
            return None
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str):
            raise ValueError(f"must be N or WIDTHxHEIGHT, got {_show(value)}")
        return parse_size(text, multiple_of=multiple_of)

    return parse


def _host(value: object) -> str:
    host = _text(value).strip()
    if not host or any(char.isspace() for char in host):
        raise ValueError(f"must be an address like 127.0.0.1 or 0.0.0.0, got {_show(value)}")
    return host


_PORT = _whole(1, 65535)


def _host_port(value: object) -> tuple[str, int] | None:
    if value in ("", None):
        return None
    text = _text(value)
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise ValueError(f"must be HOST:PORT like 127.0.0.1:9001, got {_show(value)}")
    try:
        return _host(host.strip("[]")), _PORT(port)
    except ValueError as exc:
        raise ValueError(f"must be HOST:PORT like 127.0.0.1:9001 ({exc}), got {text!r}") from None


_PREFIX = re.compile(r"^(/[A-Za-z0-9_.\-]+)+$")


def _prefix(value: object) -> str:
    text = _text(value)
    if text == "":
        return ""
    if not _PREFIX.match(text):
        raise ValueError(
            "must be '' or like /stage1 (a leading slash, then letters, digits, _ . -, "
            f"no trailing slash), got {text!r}"
        )
    return text


def _allow(value: object) -> tuple[str, ...]:
    entries: Iterable[object]
    if isinstance(value, str):
        entries = [part for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        entries = value
    else:
        raise ValueError(f"must be addresses or networks, got {_show(value)}")
    checked = []
    for entry in entries:
        try:
            checked.append(str(ipaddress.ip_network(_text(entry).strip(), strict=False)))
        except ValueError:
            raise ValueError(
                f"must be addresses or networks like 192.168.1.20 or 192.168.1.0/24, "
                f"got {_show(entry)}"
            ) from None
    return tuple(checked)


def _switch(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "on",
        "yes",
        "1",
        "false",
        "off",
        "no",
        "0",
    ):
        return value.lower() in ("true", "on", "yes", "1")
    raise ValueError(f"must be true or false, got {_show(value)}")


PREVIEW_MODES = ("off", "on", "side-by-side")


def _preview(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(_choice(PREVIEW_MODES)(value))


def _states(value: object) -> bool | None:
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"must be one of auto, on, off; got {_show(value)}")


def _control(field: str) -> Parser:
    """A starting look value, checked exactly as the same OSC message would be."""
    spec = CONTROLS[FIELD_ADDRESS[field]]

    def parse(value: object) -> Any:
        argument: object = value
        if spec.kind != "text" and isinstance(value, str):
            argument = _number(value, "a number")
        try:
            return parse_message(spec.address, (argument,)).value
        except ControlError as exc:
            raise ValueError(str(exc).replace(spec.address + " ", "", 1)) from None

    return parse


def _model(value: object) -> str:
    from livediffusion_models.registry import MODELS

    return str(_choice(tuple(MODELS))(value))


def _backend(value: object) -> str:
    from livediffusion.backends import BACKENDS

    return str(_choice(("auto", *BACKENDS))(value))


# -- streams (--stream NAME SOURCE SINK, [[stream]] tables) ---------------------------------

_STREAM_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,31}$")
_TAKEN_BY_ADDRESSES = frozenset(address.split("/")[1].lower() for address in CONTROLS) | {
    "lora",
    "controlnet",
    "stream",
    "streams",
}
"""First address segments the server answers without a stream name: a stream called
``status`` would make ``/status/...`` mean two things."""


def _stream_name(value: object) -> str:
    """A stream's name: the first part of its OSC addresses (``/cam/strength``), so letters
    and digits only (TouchDesigner channel names turn ``/`` into ``_``: ``cam_strength``)."""
    text = _text(value).strip()
    if not _STREAM_NAME.match(text):
        raise ValueError(
            f"a stream name is a letter, then letters or digits (at most 32), like cam or "
            f"layer2; got {_show(text)}"
        )
    if text.lower() in _TAKEN_BY_ADDRESSES:
        raise ValueError(
            f"stream name {text!r} is already an OSC address (/{text.lower()}); pick another"
        )
    return text


def _stream(value: object) -> StreamConfig:
    """``NAME SOURCE SINK`` from the command line, or a ``[[stream]]`` table (``name``,
    ``source``, ``sink`` and any starting look key: ``prompt``, ``strength`` ...) ->
    a :class:`~livediffusion.config.StreamConfig` whose controls the caller fills in."""
    if isinstance(value, list | tuple) and len(value) == 3:
        name, source, sink = value
        look: dict[str, Any] = {}
    elif isinstance(value, dict):
        table = dict(value)
        missing = [key for key in ("name", "source", "sink") if key not in table]
        if missing:
            raise ValueError(
                f"a [[stream]] table needs name, source and sink; {', '.join(missing)} missing"
            )
        name, source, sink = table.pop("name"), table.pop("source"), table.pop("sink")
        look = {}
        for key, item in table.items():
            if key not in FIELD_ADDRESS:
                known = ", ".join(("name", "source", "sink", *FIELD_ADDRESS))
                raise ValueError(f"stream {_show(name)}: unknown key {key!r}; known: {known}")
            try:
                look[key] = _control(key)(item)
            except ValueError as exc:
                raise ValueError(f"stream {_show(name)}: {key}: {exc}") from None
    else:
        raise ValueError(
            "must be NAME SOURCE SINK (--stream cam ndi://CAM ndi://cam-out) or a [[stream]] "
            f"table with name, source and sink; got {_show(value)}"
        )
    checked = _stream_name(name)
    try:
        source_uri = _uri("source", "ndi://NAME")(source)
        sink_uri = _uri("sink", "ndi://NAME")(sink)
    except ValueError as exc:
        raise ValueError(f"stream {checked!r}: {exc}") from None
    return StreamConfig(checked, source_uri, sink_uri, look=tuple(look.items()))


def _optional_stream_name(value: object) -> str | None:
    if value in ("", None):
        return None
    return _stream_name(value)


# -- LoRA and ControlNet --------------------------------------------------------------------

LORA_RUNTIMES = ("in-place", "peft")
"""``--lora-runtime``: the models' ``LORA_RUNTIMES``, named here without importing torch."""


def _lora_weight(value: object, source: str) -> float:
    from livediffusion.control.controls import LORA_WEIGHT

    try:
        weight: float = parse_message(LORA_WEIGHT, (value,)).value
    except ControlError as exc:
        shown = str(exc).replace(f"{LORA_WEIGHT} ", "", 1)
        raise ValueError(f"LoRA {source}: its weight {shown}") from None
    return weight


def _lora(value: object) -> Any:
    """``PATH|HUB_ID[:WEIGHT]`` (a flag) or a ``[[lora]]`` table (``path``, ``weight``) ->
    a ``LoraRequest``; the file itself is read once the model is there."""
    from livediffusion_models.lora import LoraRequest

    if isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "weight"})
        if unknown or "path" not in value:
            raise ValueError(
                f"a [[lora]] table takes path (a file, folder or hub id) and weight; got "
                f"{', '.join(map(str, value)) or 'nothing'}"
            )
        path = _text(value["path"]).strip()
        if not path:
            raise ValueError("a [[lora]] table's path is empty")
        weight = value.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"LoRA {path}: weight must be a number, got {_show(weight)}")
        return LoraRequest(source=path, weight=_lora_weight(weight, path))
    try:
        request = LoraRequest.parse(_text(value))
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    _lora_weight(request.weight, request.source)
    return request


def _controlnet(value: object) -> str | None:
    """A registry name, hub id or folder; ``random``/``tiny`` build one from the UNet."""
    text = _optional_text(value)
    return text.strip() if text else None


_DEVICE = re.compile(r"^(auto|cuda|cuda:\d{1,2}|mps|cpu)$")


def _device(value: object) -> str:
    """``auto``, ``cuda``, ``cuda:N``, ``mps`` or ``cpu``; whether that GPU exists is known
    only once torch is loaded, which says how many there are."""
    text = _text(value).strip()
    if not _DEVICE.match(text):
        raise ValueError(f"must be one of auto, cuda, cuda:N, mps, cpu; got {_show(value)}")
    return text
