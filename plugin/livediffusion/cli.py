"""The ``livediffusion`` command: serve, config, sources, download, convert, bench, doctor,
soak, models, hosts, osc, midi."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from livediffusion.config import ServeConfig
from livediffusion.hosts import HOST_FILES
from livediffusion.options import GROUPS, OPTIONS, Option, show_default
from livediffusion_models.coreml import CoreMLSettings

__all__ = ["build_parser", "main"]

log = logging.getLogger("livediffusion")


def _arguments(
    parser: argparse.ArgumentParser,
    keys: Sequence[str] | None = None,
    *,
    given_only: bool = False,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add flags for the table's options (all of them, or ``keys``), grouped as in the file.

    ``given_only``: leave a flag out of the namespace unless it was given, so it can override
    a config file without every default overriding it too.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in OPTIONS:
        if keys is not None and option.key not in keys:
            continue
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(GROUPS[option.group])
        overridden = defaults is not None and option.key in defaults
        default = defaults[option.key] if defaults is not None and overridden else option.default
        # A command that sets its own default (doctor's 256x256, bench's random weights) says
        # that one, not the text written for serve's.
        shown = show_default(option, default) if overridden else show_default(option)
        extra: dict[str, Any] = {
            "dest": option.key,
            "help": f"{option.help} (default: {shown})",
            "default": argparse.SUPPRESS if given_only else default,
        }
        if option.boolean:
            group.add_argument(option.flag, action=argparse.BooleanOptionalAction, **extra)
            continue
        if option.repeat:
            assert option.metavar is not None
            if option.nargs is None:  # one word each (--lora): argparse checks each one
                extra.update(type=_flag_type(option), metavar=option.metavar)
            else:  # each occurrence's words are checked with the others, later
                extra.update(nargs=option.nargs, metavar=tuple(option.metavar.split()))
            if not given_only:
                extra["default"] = None  # append would add to the table's () in place
            group.add_argument(option.flag, action="append", **extra)
            continue
        if option.bare is not None:
            extra.update(nargs="?", const=option.parse(option.bare))
        group.add_argument(
            option.flag,
            type=_flag_type(option),
            metavar=option.metavar or "|".join(option.choices or (option.key.upper(),)),
            choices=None,
            **extra,
        )


def _flag_type(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.key  # argparse names it in "invalid <name> value"
    return parse


def _seconds_above_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


_MODEL_KEYS = ("model", "weights", "backend", "device", "dtype", "cache_dir")
_COREML_KEYS = ("variant", "precision", "target", "compute_units", "states")
_COREML_HINT_KEYS = ("low_precision_accumulation", "specialization")
"""Load-time only (Core ML optimization hints): serve, bench and doctor, not convert."""
_STYLE_DOWNLOADS = ("lora", "controlnet")
_STYLE_BAKES = ("lora", "lora_styles", "controlnet")
"""What ``convert`` bakes into the programs (part of the cache key)."""
_STYLE_KEYS = ("lora", "lora_runtime", "lora_styles", "controlnet")


def _coreml_settings(args: argparse.Namespace) -> CoreMLSettings:
    keys = (*_COREML_KEYS, *_COREML_HINT_KEYS)
    return CoreMLSettings(**{key: getattr(args, key) for key in keys if hasattr(args, key)})


class _Parser(argparse.ArgumentParser):
    """A bad flag gets one sentence, not the whole usage block of forty flags."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="livediffusion",
        description="Live one-step diffusion for VJ hosts (Syphon / NDI / Spout in and out, OSC).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the effect",
        description="Run the effect. Every flag can also be set in a --config file "
        "(`livediffusion config --print` shows them all); flags win over the file.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="a TOML file of these settings (flags override it)"
    )
    _arguments(serve, given_only=True)

    config = commands.add_parser(
        "config",
        help="show the effective serve configuration (file + flags) as TOML",
        description="Print the configuration `serve` would run with, given the same --config "
        "and flags, as a TOML file you can save and edit.",
    )
    config.add_argument("--print", action="store_true", help="print it (the default action)")
    config.add_argument(
        "--table", action="store_true", help="print every setting as a markdown table instead"
    )
    config.add_argument("--config", metavar="FILE", help="a TOML file to start from")
    _arguments(config, given_only=True)

    sources = commands.add_parser(
        "sources", help="list the Syphon/NDI/Spout sources in view and the cameras"
    )
    sources.add_argument(
        "--timeout",
        type=_seconds_above_zero,
        default=2.0,
        metavar="SECONDS",
        help="how long to look for senders; NDI answers within a second or two (default: 2)",
    )

    download = commands.add_parser(
        "download",
        help="fetch a model's weights into the cache (or only --lora and --controlnet)",
        description="Fetch weights ahead of a show. With --lora or --controlnet alone only "
        "those are fetched; add --model or --weights to fetch the model too.",
    )
    _arguments(download, ("model", "weights", "cache_dir", *_STYLE_DOWNLOADS), given_only=True)

    convert = commands.add_parser(
        "convert",
        help="convert a model to Core ML programs (runs on any OS; serve --backend coreml "
        "also converts on first use)",
        description="Convert a model to Core ML programs in the cache. Works on Linux and "
        "Windows too, to prepare programs for a Mac.",
    )
    _arguments(convert, ("model", "weights", "cache_dir", "size", *_COREML_KEYS, *_STYLE_BAKES))
    convert.add_argument("--force", action="store_true", help="convert again even if cached")

    bench = commands.add_parser(
        "bench",
        help="time each stage of a frame on this machine",
        description="Time the frame step and each of its stages over N frames, beside the "
        "source paper's M3 Ultra figures. Weights are random unless --weights says otherwise "
        "(the speed is the architecture's).",
    )
    _arguments(
        bench,
        (*_MODEL_KEYS, "compile", "size", *_COREML_KEYS, *_COREML_HINT_KEYS, *_STYLE_KEYS),
        defaults={"weights": "random"},
    )
    bench.add_argument("--frames", type=int, default=50, help="timed runs per stage (50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed frames first (5)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument(
        "--compare",
        action="store_true",
        help="time the whole frame in each mode (eager, compiled, graph) beside diffusers' "
        "img2img pipeline, in one process on the same weights",
    )
    bench.add_argument(
        "--e2e",
        action="store_true",
        help="also time the whole server, NDI in and NDI out over loopback, frame by frame",
    )
    bench.add_argument(
        "--e2e-seconds", type=float, default=10.0, metavar="S", help="--e2e: how long (10)"
    )
    bench.add_argument(
        "--e2e-fps", type=float, default=300.0, metavar="FPS", help="--e2e: feed rate (300)"
    )
    bench.add_argument(
        "--still",
        type=float,
        metavar="THRESHOLD",
        help="measure --skip-similar THRESHOLD on a still input: the model's time saved",
    )
    bench.add_argument("--plot", metavar="FILE.png", help="draw the comparison as a chart")
    bench.add_argument(
        "--modes",
        metavar="MODE[,MODE...]",
        help="--compare: only these of diffusers, eager, compiled, graph (default: all)",
    )
    bench.add_argument(
        "--streams",
        metavar="N[,N...]",
        help="time N streams batched through one step (frames/s of all, each stream's "
        "latency, peak GPU memory) for each count; with --e2e instead N NDI pairs end to end",
    )

    doctor = commands.add_parser(
        "doctor",
        help="check that this machine's backends and transports work; paste it in bug reports",
        description="Check which backends and transports work here; on a Mac also the whole "
        "Core ML path on a tiny model (convert, compile, load, a frame against torch, one row "
        "each) and a Syphon round trip. The torch frame's weights are random unless --weights "
        "says otherwise, at 256x256 unless --size does (same paths, quicker).",
    )
    _arguments(
        doctor,
        (*_MODEL_KEYS, "size", *_COREML_KEYS, *_COREML_HINT_KEYS),
        defaults={"size": (256, 256), "weights": "random"},
    )
    doctor.add_argument(
        "--quick", action="store_true", help="only imports and transports, no model"
    )

    soak = commands.add_parser(
        "soak",
        help="run the whole pipeline over NDI loopback with tiny weights and report frames, "
        "errors, reconnects and memory growth",
        description="Feed the test pattern into NDI, serve it with --weights tiny on the CPU, "
        "receive the output and report frames, errors, reconnects and memory growth "
        "(docs/soak.md). Exit status 0 when it passed, 1 when it failed.",
    )
    soak.add_argument("--frames", type=int, metavar="N", help="stop after N frames came back")
    soak.add_argument(
        "--minutes",
        type=float,
        metavar="M",
        help="stop after M minutes (with --frames: whichever comes first; neither: until Ctrl-C)",
    )
    soak.add_argument(
        "--size",
        type=int,
        default=64,
        metavar="PX",
        help="pattern and model size in pixels, a multiple of 64 (default: 64)",
    )
    soak.add_argument("--fps", type=float, default=60.0, help="test pattern frame rate (60)")
    soak.add_argument(
        "--restart-every",
        type=float,
        metavar="SECONDS",
        help="close the feeder's NDI sender and open it again this often (more than 1 s)",
    )
    soak.add_argument(
        "--max-growth-mb",
        type=float,
        default=50.0,
        metavar="MB",
        help="memory growth after warm-up that still passes (default: 50)",
    )
    soak.add_argument("--json", metavar="FILE", help="also write the report to FILE as JSON")
    soak.add_argument(
        "--streams",
        type=int,
        default=1,
        metavar="N",
        help="N NDI pairs (each with its own feeder, restarts and receiver) through the one "
        "batched model (1)",
    )

    commands.add_parser("models", help="list the models livediffusion knows")
    hosts = commands.add_parser(
        "hosts",
        help="list the files shipped for VJ hosts (the OBS script, the TouchDesigner builder)",
        description="Print where the installed host files are, to load them in the host "
        "(OBS: Tools -> Scripts -> +).",
    )
    hosts.add_argument(
        "--path", choices=sorted(HOST_FILES), metavar="NAME", help="print only this host's file"
    )
    osc = commands.add_parser("osc", help="list the OSC addresses the server accepts")
    osc.add_argument("--osc-prefix", default="", metavar="/NAME", help="show them under a prefix")
    osc.add_argument("--markdown", action="store_true", help="as a markdown table (the docs')")

    midi = commands.add_parser(
        "midi",
        help="list MIDI ports, or print what each knob sends (for a map file)",
        description='MIDI needs the midi extra: pip install "livediffusion[midi]".',
    )
    action = midi.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="list MIDI input ports")
    action.add_argument(
        "--learn",
        action="store_true",
        help="print a map-file entry for every knob, fader and pad you touch (Ctrl-C ends)",
    )
    midi.add_argument("--port", metavar="NAME", help="the port to learn from (default: all)")
    midi.add_argument("--seconds", type=float, metavar="N", help="stop learning after N s")
    return parser


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    """Defaults, then the --config file, then --preset's look values, then the flags."""
    from livediffusion.config_file import config_from_values, read_config_file
    from livediffusion.control.presets import PresetFile

    flags = {
        option.key: getattr(args, option.key) for option in OPTIONS if hasattr(args, option.key)
    }
    for option in OPTIONS:
        if option.repeat and option.key in flags:
            given = flags[option.key]
            flags[option.key] = _repeated(option, given) if option.nargs else tuple(given)
    values = read_config_file(args.config) if args.config else {}
    values.update(flags)
    config = config_from_values(values)
    if config.preset is None:
        return config
    preset = PresetFile(config.presets).load(config.preset)
    kept = {key: value for key, value in preset.items() if key not in flags}
    log.info("starting from preset %d (%s)", config.preset, PresetFile(config.presets).path)
    streams = tuple(  # every stream starts from the preset too (flags still win)
        dataclasses.replace(stream, controls=dataclasses.replace(stream.controls, **kept))
        for stream in config.streams
    )
    return dataclasses.replace(
        config, controls=dataclasses.replace(config.controls, **kept), streams=streams
    )


def _repeated(option: Option, given: list[Any]) -> tuple[Any, ...]:
    """Each occurrence of a repeatable flag, checked; a bad one is argparse's kind of error."""
    items = []
    for words in given:
        try:
            items.append(option.parse(words))
        except ValueError as exc:
            shown = " ".join(words) if isinstance(words, list) else words
            raise ValueError(f"{option.flag} {shown}: {exc}") from None
    return tuple(items)


def _list_sources(timeout: float) -> int:
    from livediffusion_bridge import list_sources

    listing = list_sources(timeout=timeout)
    for entry in listing.sources:
        print(f"{entry.uri}\t{entry.kind}\t{entry.name}")
    for problem in listing.errors:
        print(f"# {problem}", file=sys.stderr)
    if not listing.sources:
        print("no sources found", file=sys.stderr)
    return 0


def _download(args: argparse.Namespace) -> int:
    from livediffusion_models.registry import DEFAULT_MODEL, get_model
    from livediffusion_models.weights import download

    spec = get_model(getattr(args, "model", DEFAULT_MODEL))
    cache = getattr(args, "cache_dir", None)
    styles = hasattr(args, "lora") or hasattr(args, "controlnet")
    if not styles or hasattr(args, "model") or hasattr(args, "weights"):
        print(download(spec, getattr(args, "weights", None), cache_dir=cache))
    if styles:
        from livediffusion.tools.style_files import download_styles

        for path in download_styles(
            spec, getattr(args, "lora", []), getattr(args, "controlnet", None), cache_dir=cache
        ):
            print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    import sys as _sys

    from livediffusion.backends import find_loras, read_styles
    from livediffusion_models.coreml import default_target, require_coremltools
    from livediffusion_models.coreml.convert import convert, resolve_stateful
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    require_coremltools()
    spec = get_model(args.model)
    weights = args.weights or spec.hub_id
    size = args.size or (spec.default_size, spec.default_size)
    settings = _coreml_settings(args)
    # a contradiction in the options is said now, not after a minute of loading weights
    resolve_stateful(
        settings.variant, settings.precision, settings.target or default_target(), settings.states
    )
    log.info("loading %s (%s weights) in float32 for conversion", spec.name, weights)
    requests = tuple(args.lora or ())
    find_loras(requests, cache_dir=args.cache_dir)
    model = load_model(spec, weights, cache_dir=args.cache_dir, progress=True)
    styles = ServeConfig(lora=requests, controlnet=args.controlnet, cache_dir=args.cache_dir)
    loras, controlnet = read_styles(styles, model)
    converted = convert(
        model,
        model=spec.name,
        fingerprint=model.fingerprint,
        size=size,
        precision=settings.precision,
        target=settings.target,
        variant=settings.variant,
        stateful=settings.states,
        loras=loras,
        styles=args.lora_styles,
        controlnet=controlnet,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    print(converted.folder)
    for program in converted.programs.values():
        print(f"  {program.package.name}")
    if _sys.platform != "darwin":
        styled = _style_flags(requests, args.lora_styles, args.controlnet)
        for line in for_a_mac(
            converted, model=spec.name, weights=args.weights, given=settings, styles=styled
        ):
            print(f"# {line}", file=_sys.stderr)
    return 0


def _style_flags(requests: Sequence[Any], lora_styles: bool, controlnet: str | None) -> str:
    """The convert flags that are part of the cache key, for the command the Mac runs."""
    import shlex

    words = [f"--lora {shlex.quote(f'{r.source}:{r.weight:g}')}" for r in requests]
    words += ["--lora-styles"] if lora_styles else []
    words += [f"--controlnet {shlex.quote(controlnet)}"] if controlnet else []
    return "".join(" " + word for word in words)


def for_a_mac(
    converted: Any, *, model: str, weights: str | None, given: CoreMLSettings, styles: str = ""
) -> list[str]:
    """What to copy where, and the exact command that finds it, for programs made off macOS.

    The Mac finds the folder when its key is equal: the same model, weights fingerprint,
    size, precision, variant, states, coremltools version and livediffusion code, and a target
    ``--target auto`` accepts there (macOS14 on any Mac, macOS15 on 15+).
    """
    key = converted.key
    height, width = key.size
    flags = [f"--model {model}"]
    if weights:
        flags.append(f"--weights {weights}")
    flags.append(f"--size {width}x{height}")
    defaults = CoreMLSettings()
    if key.variant != defaults.variant:
        flags.append(f"--variant {key.variant}")
    if key.precision != defaults.precision:
        flags.append(f"--precision {key.precision}")
    if given.target is not None:
        flags.append(f"--target {key.target}")
    if given.states is not None:
        flags.append(f"--states {'on' if key.stateful else 'off'}")
    where = f"coreml/{model}/{converted.folder.name}"
    needs = "macOS 15 or newer" if key.target == "macOS15" else "macOS 14 or newer"
    return [
        f"for a Mac ({needs}, coremltools {key.coremltools}, the same weights): copy this "
        "folder, keeping its name, to",
        f"  ~/Library/Caches/livediffusion/{where}/",
        "(or $LIVEDIFFUSION_CACHE/..., or --cache-dir DIR/... there), then run there:",
        f"  livediffusion serve --backend coreml {' '.join(flags)}{styles}",
        "it is found as it is (no conversion): compiled once on the first start, then loaded",
    ]


def _check_config(args: argparse.Namespace) -> ServeConfig:
    """bench and doctor build the backend as serve would; random weights unless told."""
    return ServeConfig(
        model=args.model,
        weights=args.weights,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        size=args.size,
        cache_dir=args.cache_dir,
        coreml=_coreml_settings(args),
        lora=tuple(getattr(args, "lora", None) or ()),
        lora_runtime=getattr(args, "lora_runtime", "in-place"),
        lora_styles=getattr(args, "lora_styles", False),
        controlnet=getattr(args, "controlnet", None),
    )


def _bench(args: argparse.Namespace) -> int:
    from livediffusion.tools.bench import format_table, run_bench, run_comparison, write_json

    config = dataclasses.replace(_check_config(args), compile=args.compile)
    streams: tuple[int, ...] = ()
    if args.streams is not None:
        from livediffusion.tools.bench_streams import parse_counts

        streams = parse_counts(args.streams)
    if args.compare or args.e2e or args.still is not None or args.plot or streams:
        if args.still is not None and not 0.0 < args.still <= 1.0:
            raise ValueError(f"--still must be more than 0 and at most 1, got {args.still:g}")
        from livediffusion.tools.bench_modes import MODES

        modes = tuple(part.strip() for part in (args.modes or ",".join(MODES)).split(","))
        unknown = [mode for mode in modes if mode not in MODES]
        if unknown or not modes:
            raise ValueError(f"--modes takes {', '.join(MODES)}; got {args.modes!r}")
        run_comparison(
            config,
            modes=modes,
            streams=streams,
            compare=args.compare or bool(args.plot and not args.e2e),
            e2e=args.e2e,
            still=args.still,
            frames=args.frames,
            warmup=args.warmup,
            e2e_seconds=args.e2e_seconds,
            e2e_fps=args.e2e_fps,
            json_path=args.json,
            plot_path=args.plot,
            out=sys.stdout,
        )
        return 0
    if config.lora or config.controlnet:
        from livediffusion.tools.bench_styles import styles_command

        return styles_command(config, frames=args.frames, warmup=args.warmup, json=args.json)
    result = run_bench(config, frames=args.frames, warmup=args.warmup)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from livediffusion.tools.doctor import run_doctor

    return run_doctor(_check_config(args), quick=args.quick)


def _models() -> int:
    from livediffusion_models.registry import DEFAULT_MODEL, MODELS

    for name, spec in MODELS.items():
        marker = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{marker}\t{spec.hub_id}\t{spec.description}")
    return 0


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _configure_logging(config: ServeConfig, *, verbose: bool) -> None:
    """--log-level for stderr and the file; -v still means debug; --log-file appends."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else config.log_level.upper())
    if config.log_file:
        try:
            handler = logging.FileHandler(config.log_file, encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot write the log file {config.log_file}: {exc}") from None
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        root.addHandler(handler)


def _osc(args: argparse.Namespace) -> int:
    from livediffusion.control.controls import format_address_table
    from livediffusion.option_values import _prefix

    print(format_address_table(_prefix(args.osc_prefix), markdown=args.markdown))
    return 0


def _config(args: argparse.Namespace) -> int:
    from livediffusion.config_file import format_toml, values_from_config
    from livediffusion.options import options_table

    if args.table:
        print(options_table())
        return 0
    config = _serve_config(args)
    source = f" and {args.config}" if args.config else ""
    print(f"# livediffusion serve: the effective configuration (defaults{source} and flags)")
    print("# save it and run: livediffusion serve --config FILE\n")
    print(format_toml(values_from_config(config)), end="")
    return 0


def _hosts(args: argparse.Namespace) -> int:
    for name, path in HOST_FILES.items():
        if args.path in (None, name):
            print(path if args.path else f"{name}\t{path}")
    return 0


def _midi(args: argparse.Namespace) -> int:
    from livediffusion.control.midi import midi_command

    return midi_command(
        list_ports=args.list, learn=args.learn, port=args.port, seconds=args.seconds
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=_LOG_FORMAT,
        datefmt="%H:%M:%S",
    )
    from livediffusion_bridge import BridgeError
    from livediffusion_models.errors import ModelError

    try:
        if args.command == "serve":
            from livediffusion.run.server import run_server

            config = _serve_config(args)
            _configure_logging(config, verbose=args.verbose)
            return run_server(config)
        if args.command == "sources":
            return _list_sources(args.timeout)
        if args.command == "download":
            return _download(args)
        if args.command == "convert":
            return _convert(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "models":
            return _models()
        if args.command == "config":
            return _config(args)
        if args.command == "midi":
            return _midi(args)
        if args.command == "hosts":
            return _hosts(args)
        if args.command == "soak":
            from livediffusion.tools.soak import soak_command

            return soak_command(args)
        return _osc(args)
    except (BridgeError, ModelError, ValueError, RuntimeError) as exc:
        # Start-up problems a user can fix: say what and how, without a traceback.
        log.debug("start-up failure", exc_info=True)
        print(f"livediffusion: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def console_main() -> NoReturn:
    """The ``livediffusion`` command: :func:`main`, then a quick exit.

    Tearing down an interpreter that imported torch, diffusers and transformers takes about
    2 s (measured here: 1.9-2.2 s), which would break the promise that a stop answers within
    2 s. By now the command has closed everything it opened, so run the exit handlers (NDI's
    among them), flush, and leave without the teardown.
    """
    try:
        code = main()
    except BrokenPipeError:  # `livediffusion osc | head`: the reader left, nothing is wrong
        sys.stdout = None  # type: ignore[assignment]
        code = 0
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
