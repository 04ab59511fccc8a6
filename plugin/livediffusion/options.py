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
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10
    pass

from livediffusion.config import ServeConfig, default_sink, default_source
from livediffusion.control.controls import (
    CONTROLS,
    FIELD_ADDRESS,
    Controls,
)
from livediffusion.option_values import (
    _PORT,
    LORA_RUNTIMES,
    PREVIEW_MODES,
    Parser,
    _allow,
    _backend,
    _choice,
    _control,
    _controlnet,
    _device,
    _fraction,
    _host,
    _host_port,
    _lora,
    _midi_map,
    _model,
    _optional_stream_name,
    _optional_text,
    _optional_whole,
    _positive,
    _prefix,
    _preview,
    _seconds,
    _size,
    _states,
    _stream,
    _switch,
    _uri,
)
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
    "options_table",
    "show_default",
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
    nargs: int | None = None  # a flag of several words (--stream NAME SOURCE SINK)
    repeat: bool = False
    """Given again, it adds one more (``--stream``); in a config file an array of tables
    (``[[stream]]``) whose items are parsed one by one."""

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


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
        Option(
            "stream",
            "frames",
            "one named stream from SOURCE to SINK, with its own controls under /NAME "
            "(/cam/strength); repeat it for several, all through one batched model; instead "
            "of --source/--sink. In a config file: [[stream]] tables with name, source, sink "
            "and any starting look key",
            _stream,
            (),
            metavar="NAME SOURCE SINK",
            nargs=3,
            repeat=True,
            default_text="one stream, --source to --sink",
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
            "torch backend: auto = cuda, then mps, then cpu; cuda:N = the Nth GPU (one "
            "process per GPU is the way past one: docs/benchmarks.md)",
            _device,
            metavar="auto|cuda|cuda:N|mps|cpu",
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
        _serve(
            "lora",
            "model",
            "a LoRA style: a .safetensors file (kohya/A1111 or diffusers), a PEFT folder or a "
            "hub id, at WEIGHT (0..2, default 1); repeat it for several, /lora/N/weight and "
            "/lora/N/on in this order. In a config file: [[lora]] tables with path and weight",
            _lora,
            metavar="PATH|HUB_ID[:WEIGHT]",
            repeat=True,
        ),
        _serve(
            "lora_runtime",
            "model",
            "torch: in-place rewrites the touched weights on a weight change (nothing per "
            "frame); peft keeps PEFT's adapters unfused (a LoRA branch every frame, to compare)",
            _choice(LORA_RUNTIMES),
            choices=LORA_RUNTIMES,
        ),
        _serve(
            "controlnet",
            "model",
            "a ControlNet that keeps the input's shapes (a name from `livediffusion models`, a "
            "hub id or a folder; random builds one from the UNet for tests); /controlnet/scale",
            _controlnet,
            metavar="NAME|HUB_ID|FOLDER",
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
        Option(
            "lora_styles",
            "coreml",
            "bake each --lora as a function of one multifunction program (macOS 15), so "
            "/lora/N/on and weights switch between the baked styles live (a cut, not a "
            "crossfade); off: the LoRAs are baked at their weights, fixed",
            _switch,
            False,
            boolean=True,
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
        Option(
            "controlnet_scale",
            "look",
            "how much --controlnet keeps the input's shapes, 0 = none (/controlnet/scale)",
            _control("controlnet_scale"),
            None,
            metavar="0..2",
            default_text="the ControlNet's (0.8 for sdxs-sketch, 0.5 for sd21-canny, else 1)",
        ),
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
            "midi_stream",
            "midi",
            "with several streams: the one MIDI drives (default: every stream)",
            _optional_stream_name,
            metavar="NAME",
            default_text="every stream",
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
        key = f"[[{option.key}]]" if option.repeat else f"[{option.group}] {option.key}"
        if option.nargs:
            flag = f"`{option.flag}` {option.metavar}"
        rows.append(f"| {flag} | `{key}` | {default} | {help} |")
    return "\n".join(rows)
