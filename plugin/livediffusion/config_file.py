"""The TOML config file: read and checked against the options table (unknown keys, keys in the
wrong table, bad values: each named), turned into a ``ServeConfig`` and back, and printed by
``livediffusion config --print``."""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from livediffusion.config import MAX_STREAMS, ServeConfig, StreamConfig
from livediffusion.control.controls import (
    Controls,
)
from livediffusion.control.styles import lora_tables, starting_scale
from livediffusion.options import (
    BY_KEY,
    GROUPS,
    OPTIONS,
    ConfigFileError,
    _as_option_value,
    _toml_value,
    defaults,
)
from livediffusion_bridge.uri import shorten
from livediffusion_models.coreml import (
    CoreMLSettings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["config_from_values", "format_toml", "read_config_file", "values_from_config"]

# -- config file ----------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A TOML file -> ``{key: checked value}``; keys may sit at the top or in their table."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for name, item in document.items():
        if isinstance(item, dict) and name in GROUPS:
            for key, value in item.items():
                _take(path, f"[{name}] {key}", key, value, values, group=name)
        else:
            _take(path, name, name, item, values, group=None)
    return values


def _take(
    path: Path,
    where: str,
    key: str,
    value: object,
    values: dict[str, Any],
    *,
    group: str | None,
) -> None:
    option = BY_KEY.get(key)
    if option is None:
        close = difflib.get_close_matches(key, list(BY_KEY), n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else "; see `livediffusion config --print`"
        )
        raise ConfigFileError(f"{path}: {where}: unknown key{hint}")
    if group is not None and option.group != group:
        raise ConfigFileError(f"{path}: {where}: {key} belongs in [{option.group}]")
    if key in values:
        raise ConfigFileError(f"{path}: {where}: {key} is given twice")
    if option.repeat:
        if not isinstance(value, list):
            raise ConfigFileError(
                f"{path}: {where}: write each as a [[{key}]] table (an array of tables)"
            )
        items = []
        for number, item in enumerate(value, 1):
            try:
                items.append(option.parse(item))
            except ValueError as exc:
                raise ConfigFileError(f"{path}: [[{key}]] number {number}: {exc}") from None
        values[key] = tuple(items)
        return
    try:
        values[key] = option.parse(value)
    except ValueError as exc:
        shown = shorten(_toml_value(value))
        raise ConfigFileError(f"{path}: {where} = {shown}: {exc}") from None


# -- to a ServeConfig and back --------------------------------------------------------------


def config_from_values(values: Mapping[str, Any]) -> ServeConfig:
    """Checked values (any subset) over the defaults -> a :class:`ServeConfig`."""
    merged = defaults() | dict(values)
    strength = merged["strength"]
    if strength is None:
        from livediffusion_models.registry import get_model

        strength = get_model(merged["model"]).default_strength
    controls = Controls(
        **{
            field.name: merged[field.name]
            for field in dataclasses.fields(Controls)
            if field.name in BY_KEY and field.name not in ("strength", "controlnet_scale")
        },
        strength=strength,
        controlnet_scale=starting_scale(merged["controlnet"], merged["controlnet_scale"]),
    )
    coreml = CoreMLSettings(
        **{field.name: merged[field.name] for field in dataclasses.fields(CoreMLSettings)}
    )
    serve = {
        field.name: merged[field.name]
        for field in dataclasses.fields(ServeConfig)
        if field.name in BY_KEY
    }
    serve["streams"] = _streams(values, merged["stream"], controls)
    names = [stream.name for stream in serve["streams"]]
    if serve["midi_stream"] is not None and serve["midi_stream"] not in names:
        known = ", ".join(names) if names else "none: give --stream"
        raise ValueError(f"--midi-stream {serve['midi_stream']}: no such stream ({known})")
    if serve["osc_echo"] and serve["osc_reply"] is None:
        raise ValueError("--osc-echo (osc_echo) sends to --osc-reply: give osc_reply too")
    if serve["midi"] is not None and serve["midi_map"] is None:
        raise ValueError(
            "--midi needs --midi-map: a shipped map (nanokontrol2, midimix, launchcontrol_xl) "
            "or a TOML file; `livediffusion midi --learn` helps write one"
        )
    return ServeConfig(controls=controls, coreml=coreml, **serve)


def _streams(
    given: Mapping[str, Any], streams: tuple[StreamConfig, ...], controls: Controls
) -> tuple[StreamConfig, ...]:
    """Each ``--stream``'s controls: the shared starting look, then its own table's keys."""
    if not streams:
        return ()
    for key in ("source", "sink"):
        if key in given:
            raise ValueError(
                f"--stream names each stream's source and sink: leave out --{key} "
                f"({key} in the config file), or give one stream with --source and --sink"
            )
    if len(streams) > MAX_STREAMS:
        raise ValueError(f"{len(streams)} streams; one serve takes at most {MAX_STREAMS}")
    seen: dict[str, str] = {}
    sinks: dict[str, str] = {}
    for stream in streams:
        folded = stream.name.lower()
        if folded in seen:
            raise ValueError(f"two streams are called {stream.name!r}: names must differ")
        if stream.sink in sinks:
            raise ValueError(
                f"streams {sinks[stream.sink]!r} and {stream.name!r} both publish to "
                f"{stream.sink}: give each its own sink"
            )
        seen[folded] = stream.name
        sinks[stream.sink] = stream.name
    return tuple(
        dataclasses.replace(stream, controls=dataclasses.replace(controls, **dict(stream.look)))
        for stream in streams
    )


def values_from_config(config: ServeConfig) -> dict[str, Any]:
    """The inverse of :func:`config_from_values`: every key's effective value."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.key == "stream":
            values[option.key] = config.streams
        elif hasattr(config, option.key):
            values[option.key] = getattr(config, option.key)
        elif hasattr(config.controls, option.key):
            values[option.key] = getattr(config.controls, option.key)
        else:
            values[option.key] = getattr(config.coreml, option.key)
    return values


def format_toml(values: Mapping[str, Any]) -> str:
    """Every key, in tables by group, each with its help; unset values are comments."""
    lines: list[str] = []
    streams: tuple[StreamConfig, ...] = tuple(values.get("stream", ()))
    for group in GROUPS:
        lines.append(f"[{group}]")
        for option in OPTIONS:
            if option.group != group or option.repeat:
                continue
            if streams and option.key in ("source", "sink"):
                lines.append(f"# {option.key}: each [[stream]] below names its own")
                continue
            value = _as_option_value(option.key, values.get(option.key, option.default))
            lines.append(f"# {option.help}")
            if value is None:
                lines.append(f"# {option.key} =   (default: {option.default_text or 'unset'})")
            else:
                lines.append(f"{option.key} = {_toml_value(value)}")
        lines.append("")
    if not streams:
        lines.append(f"# {BY_KEY['stream'].help}")
        lines.append(
            '# [[stream]]\n# name = "cam"\n# source = "ndi://CAM"\n# sink = "ndi://cam-out"'
        )
        lines.append("")
    for stream in streams:
        lines.append("[[stream]]")
        lines.append(f"name = {_toml_value(stream.name)}")
        lines.append(f"source = {_toml_value(stream.source)}")
        lines.append(f"sink = {_toml_value(stream.sink)}")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in stream.look)
        lines.append("")
    lines.extend(lora_tables(values.get("lora", ())))
    return "\n".join(lines)
