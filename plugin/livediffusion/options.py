"""Every ``serve`` setting, once: the flags, the TOML config file and the docs are read from here.

Each :class:`Option` says its key (``osc_port`` is ``--osc-port`` and ``osc_port = 9000`` in
the ``[osc]`` table of a config file), its help, and one parser that accepts both a flag's
text and a TOML value and raises ``ValueError`` with a sentence naming what is allowed. The
defaults are not restated here: they are read from the dataclasses that hold them
(:class:`ServeConfig`, :class:`Controls`, :class:`CoreMLSettings`), so there is one place.

Precedence, lowest first: defaults, the config file, ``--preset`` (its look values), flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from livediffusion.config import ServeConfig, default_sink, default_source, parse_size
from livediffusion.control.controls import (
    CONTROLS,
    FIELD_ADDRESS,
    ControlError,
    Controls,
    parse_message,
)
from livediffusion_bridge import InvalidURIError, check_uri
from livediffusion_bridge.uri import shorten
from livediffusion_models.coreml import (
    COMPUTE_UNITS,
    PRECISIONS,
    SPECIALIZATIONS,
    TARGETS,
    VARIANTS,
    CoreMLSettings,
)
from livediffusion_models.imaging import FIT_MODES

__all__ = [
    "GROUPS",
    "OPTIONS",
    "ConfigFileError",
    "Option",
    "config_from_values",
    "format_toml",
    "options_table",
    "read_config_file",
    "show_default",
    "values_from_config",
]

GROUPS: Mapping[str, str] = {
    "frames": "frames",
    "model": "model",
    "coreml": "Core ML (Apple Silicon)",
    "look": "starting look (all changeable over OSC and MIDI)",
    "osc": "OSC",
    "midi": "MIDI",
    "run": "running",
}
"""Config-file table -> the heading of its flags in ``--help``."""


class ConfigFileError(ValueError):
    """A config file that cannot be read, or holds an unknown key or a bad value."""


Parser = Callable[[object], Any]


@dataclass(frozen=True, slots=True)
class Option:
    key: str
    group: str
    help: str
    parse: Parser
    default: Any
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # how the docs show a default that is not a value
    boolean: bool = False  # an on/off flag: --x / --no-x
    bare: str | None = None  # what the flag means given alone (--preview): its value is optional

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


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
        from livediffusion.control.midi import load_map

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


# -- the table ------------------------------------------------------------------------------


def _default(cls: type, name: str) -> Any:
    field = next(item for item in dataclasses.fields(cls) if item.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _serve(key: str, group: str, help: str, parse: Parser, **extra: Any) -> Option:
    return Option(key, group, help, parse, _default(ServeConfig, key), **extra)


def _coreml(key: str, help: str, parse: Parser, **extra: Any) -> Option:
    return Option(key, "coreml", help, parse, _default(CoreMLSettings, key), **extra)


def _look(field: str, help: str, **extra: Any) -> Option:
    spec = CONTROLS[FIELD_ADDRESS[field]]
    help = help or f"{spec.effect} ({spec.range_text})"
    return Option(field, "look", help, _control(field), _default(Controls, field), **extra)


def _build_options() -> tuple[Option, ...]:
    from livediffusion_models.registry import DEFAULT_MODEL

    return (
        _serve(
            "source",
            "frames",
            "ndi://NAME, ndi://HOST:PORT, syphon://SERVER, spout://NAME, test://pattern, "
            "file://PATH, camera://INDEX or camera://NAME (`livediffusion sources` lists them)",
            _uri("source", default_source()),
            metavar="URI",
            default_text=f"{default_source('darwin')} on macOS, else {default_source('linux')}",
        ),
        _serve(
            "sink",
            "frames",
            "ndi://NAME, syphon://NAME, spout://NAME, memory://NAME, window://TITLE (on screen)",
            _uri("sink", default_sink()),
            metavar="URI",
            default_text=f"{default_sink('darwin')} on macOS, else {default_sink('linux')}",
        ),
        _serve(
            "size",
            "frames",
            "model resolution, a multiple of 64",
            _size(multiple_of=64),
            metavar="N|WxH",
            default_text="the model's (512)",
        ),
        _serve(
            "fit",
            "frames",
            "fit other aspect ratios by centre crop or by padding",
            _choice(FIT_MODES),
            choices=FIT_MODES,
        ),
        _serve(
            "output_size",
            "frames",
            "output resolution",
            _size(multiple_of=1),
            metavar="WxH",
            default_text="the input's",
        ),
        Option(
            "model",
            "model",
            "see `livediffusion models`",
            _model,
            DEFAULT_MODEL,
            metavar="NAME",
        ),
        _serve(
            "weights",
            "model",
            "hub id, a local diffusers folder, random (the real architecture, random weights) "
            "or tiny (the same classes scaled down: demos, soak, CI)",
            _optional_text,
            metavar="HUB_ID|PATH|random",
            default_text="the model's hub id",
        ),
        _serve(
            "backend",
            "model",
            "auto: coreml on Apple Silicon with coremltools installed, else torch",
            _backend,
            metavar="auto|torch|coreml",
        ),
        _serve(
            "device",
            "model",
            "torch backend: auto = cuda, then mps, then cpu",
            _choice(("auto", "cuda", "mps", "cpu")),
            choices=("auto", "cuda", "mps", "cpu"),
        ),
        _serve(
            "dtype",
            "model",
            "torch backend: auto = float16 on GPUs, float32 on the CPU",
            _choice(("auto", "float16", "bfloat16", "float32")),
            choices=("auto", "float16", "bfloat16", "float32"),
        ),
        _serve(
            "compile",
            "model",
            "torch on CUDA: default = torch.compile and the whole frame in one CUDA graph "
            "(first start compiles for about a minute, cached afterwards); max also autotunes "
            "every kernel (many minutes once); off = eager, for a driver or card that "
            "misbehaves. Eager is also the automatic fallback when compiling fails; other "
            "devices always run eager",
            _choice(("off", "default", "max")),
            choices=("off", "default", "max"),
        ),
        _serve(
            "skip_similar",
            "model",
            "skip the model and republish the last output while the input changes less than "
            "this (mean absolute difference, 0..1; 0.01 is about 2.5 levels of 255) and no "
            "control moves; 0 = off",
            _fraction,
            metavar="THRESHOLD",
        ),
        _serve(
            "cache_dir",
            "model",
            "where weights and converted models live",
            _optional_text,
            metavar="DIR",
            default_text="the user cache directory",
        ),
        _coreml(
            "variant",
            "fused: the whole frame in one program; stages: encoder, UNet and decoder as "
            "three programs, as the paper did",
            _choice(VARIANTS),
            choices=VARIANTS,
        ),
        _coreml("precision", "program precision", _choice(PRECISIONS), choices=PRECISIONS),
        _coreml(
            "target",
            "oldest macOS the programs run on; macOS15 keeps the temporal state on the device",
            _choice(TARGETS, none="auto"),
            metavar="auto|" + "|".join(TARGETS),
            default_text="auto: a cached conversion this Mac runs (newest first), else "
            "macOS15 on a Mac running 15+, macOS14 elsewhere",
        ),
        _coreml(
            "compute_units",
            "the paper measured the Neural Engine 6x slower for this UNet",
            _choice(COMPUTE_UNITS),
            choices=COMPUTE_UNITS,
        ),
        _coreml(
            "states",
            "Core ML states for the temporal state (auto: on where the target allows)",
            _states,
            metavar="auto|on|off",
            default_text="auto",
        ),
        _coreml(
            "low_precision_accumulation",
            "Core ML optimization hint allowLowPrecisionAccumulationOnGPU (macOS 15+): sums in "
            "fp16 on the GPU; unmeasured here: compare `livediffusion bench` and `doctor`'s "
            "PSNR on your Mac with and without it",
            _switch,
            boolean=True,
        ),
        _coreml(
            "specialization",
            "Core ML optimization hint specializationStrategy (macOS 15+): fast-prediction "
            "trades a longer first load for faster frames; unmeasured here: compare with "
            "`livediffusion bench` on your Mac",
            _choice(SPECIALIZATIONS),
            choices=SPECIALIZATIONS,
        ),
        _look("prompt", "prompt A (/prompt)", metavar="TEXT"),
        _look("prompt_b", "prompt B for the morph (/prompt/b); '' for none", metavar="TEXT"),
        _look("prompt_mix", "", metavar="0..1"),
        Option(
            "strength",
            "look",
            "1 = full re-imagining, 0 = almost none",
            _control("strength"),
            None,
            metavar="0..1",
            default_text="the model's (1.0 for SDXS, 0.5 for sd-turbo)",
        ),
        _look("seed", "", metavar="N"),
        _look("feedback", "", metavar="0..1"),
        _look("smoothing", "", metavar="0..1"),
        _look("blend", "", metavar="0..1"),
        _look("glide", "", metavar="SECONDS"),
        _look("prompt_glide", "", metavar="SECONDS"),
        _look("seed_glide", "", metavar="SECONDS"),
        _serve(
            "preset",
            "look",
            "recall this preset at start-up (flags still win)",
            _optional_whole(0, 999),
            metavar="N",
        ),
        _serve(
            "presets",
            "look",
            "the preset file",
            _optional_text,
            metavar="FILE",
            default_text="presets.json in the user config directory",
        ),
        _serve(
            "recall_glide",
            "look",
            "seconds a preset recall glides when /glide is 0",
            _seconds(),
            metavar="SECONDS",
        ),
        _serve(
            "osc_host",
            "osc",
            "address to listen on: 127.0.0.1 this machine only, 0.0.0.0 every network",
            _host,
            metavar="ADDRESS",
        ),
        _serve("osc_port", "osc", "UDP port to listen on", _PORT, metavar="1..65535"),
        _serve(
            "osc_prefix",
            "osc",
            "every address lives under it, for several instances (/stage1/strength)",
            _prefix,
            metavar="/NAME",
        ),
        _serve(
            "osc_allow",
            "osc",
            "senders allowed when listening beyond this machine, comma-separated addresses "
            "or networks (loopback always allowed)",
            _allow,
            metavar="ADDR[,NET/BITS]",
        ),
        _serve(
            "osc_reply",
            "osc",
            "send /status here once a second (and --osc-echo changes)",
            _host_port,
            metavar="HOST:PORT",
        ),
        _serve(
            "osc_echo",
            "osc",
            "send every accepted change to --osc-reply (motorised faders, other panels)",
            _switch,
            boolean=True,
        ),
        _serve(
            "osc_rate",
            "osc",
            "datagrams per second one sender may send; more are dropped and counted",
            _positive("a number of datagrams per second > 0"),
            metavar="N",
        ),
        _serve(
            "midi",
            "midi",
            "MIDI input port name, or part of it (see `livediffusion midi --list`)",
            _optional_text,
            metavar="PORT",
        ),
        _serve(
            "midi_map",
            "midi",
            "a shipped map (nanokontrol2, midimix, launchcontrol_xl) or a TOML file; "
            "used with --midi",
            _midi_map,
            metavar="MAP",
        ),
        _serve(
            "on_source_loss",
            "frames",
            "what the output shows while the source is away: the last output, black, or the "
            "last input passed through",
            _choice(("last", "black", "hold-input")),
            choices=("last", "black", "hold-input"),
        ),
        _serve(
            "preview",
            "frames",
            "also show the output in a window, with the status line (--preview alone: on); "
            "side-by-side: the input beside it. Esc or closing the window stops the server",
            _preview,
            metavar="|".join(PREVIEW_MODES),
            bare="on",
        ),
        _serve(
            "log_level",
            "run",
            "how much to log (stderr, and --log-file)",
            _choice(("debug", "info", "warning", "error")),
            choices=("debug", "info", "warning", "error"),
        ),
        _serve(
            "log_file",
            "run",
            "also write the log to this file (appended)",
            _optional_text,
            metavar="FILE",
        ),
        _serve(
            "status_interval",
            "run",
            "seconds between status lines",
            _positive("a number of seconds > 0"),
            metavar="SECONDS",
        ),
        _serve(
            "duration",
            "run",
            "stop by itself this long after the model started processing (benchmarks, demos)",
            _seconds(optional=True),
            metavar="SECONDS",
            default_text="run until stopped",
        ),
    )


OPTIONS: tuple[Option, ...] = _build_options()
BY_KEY: Mapping[str, Option] = {option.key: option for option in OPTIONS}


def defaults() -> dict[str, Any]:
    return {option.key: option.default for option in OPTIONS}


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
            if field.name in BY_KEY and field.name != "strength"
        },
        strength=strength,
    )
    coreml = CoreMLSettings(
        **{field.name: merged[field.name] for field in dataclasses.fields(CoreMLSettings)}
    )
    serve = {
        field.name: merged[field.name]
        for field in dataclasses.fields(ServeConfig)
        if field.name in BY_KEY
    }
    if serve["osc_echo"] and serve["osc_reply"] is None:
        raise ValueError("--osc-echo (osc_echo) sends to --osc-reply: give osc_reply too")
    if serve["midi"] is not None and serve["midi_map"] is None:
        raise ValueError(
            "--midi needs --midi-map: a shipped map (nanokontrol2, midimix, launchcontrol_xl) "
            "or a TOML file; `livediffusion midi --learn` helps write one"
        )
    return ServeConfig(controls=controls, coreml=coreml, **serve)


def values_from_config(config: ServeConfig) -> dict[str, Any]:
    """The inverse of :func:`config_from_values`: every key's effective value."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if hasattr(config, option.key):
            values[option.key] = getattr(config, option.key)
        elif hasattr(config.controls, option.key):
            values[option.key] = getattr(config.controls, option.key)
        else:
            values[option.key] = getattr(config.coreml, option.key)
    return values


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        height, width = value
        return json.dumps(f"{width}x{height}")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _as_option_value(key: str, value: object) -> object:
    if key == "osc_reply" and isinstance(value, tuple):
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if key == "states":
        return "auto" if value is None else ("on" if value else "off")
    if key == "target" and value is None:
        return "auto"
    return value


def format_toml(values: Mapping[str, Any]) -> str:
    """Every key, in tables by group, each with its help; unset values are comments."""
    lines: list[str] = []
    for group in GROUPS:
        lines.append(f"[{group}]")
        for option in OPTIONS:
            if option.group != group:
                continue
            value = _as_option_value(option.key, values.get(option.key, option.default))
            lines.append(f"# {option.help}")
            if value is None:
                lines.append(f"# {option.key} =   (default: {option.default_text or 'unset'})")
            else:
                lines.append(f"{option.key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


_UNSET: Any = object()


def show_default(option: Option, value: Any = _UNSET) -> str:
    """How ``--help`` and the docs show a default: the option's own (its ``default_text``
    where the value alone would not say it), or ``value`` where a command sets another."""
    if value is _UNSET:
        if option.default_text is not None:
            return option.default_text
        value = option.default
    if value in ("", (), None):
        return option.default_text or "none"
    shown = _as_option_value(option.key, value)
    if isinstance(shown, tuple) and len(shown) == 2:
        height, width = shown
        return f"{width}x{height}"
    return str(shown)


def options_table() -> str:
    """The docs' table of every setting (flag, config key, default, meaning)."""
    rows = ["| flag | config file | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        if option.default_text is not None:
            default = option.default_text
        elif option.default in ("", (), None):
            default = "none"
        else:
            default = _toml_value(_as_option_value(option.key, option.default))
        flag = f"`{option.flag}`" + (f" / `--no-{option.flag[2:]}`" if option.boolean else "")
        help = option.help.replace("|", "\\|")
        rows.append(f"| {flag} | `[{option.group}] {option.key}` | {default} | {help} |")
    return "\n".join(rows)
