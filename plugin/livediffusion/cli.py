"""The ``livediffusion`` command: serve, sources, download, convert, bench, doctor, models, osc."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from livediffusion.backends import BACKENDS
from livediffusion.config import (
    ServeConfig,
    default_sink,
    default_source,
    parse_size,
)
from livediffusion.controls import CONTROL_ADDRESSES, Controls
from livediffusion_models.coreml import (
    COMPUTE_UNITS,
    PRECISIONS,
    TARGETS,
    VARIANTS,
    CoreMLSettings,
)
from livediffusion_models.registry import DEFAULT_MODEL

__all__ = ["build_parser", "main"]

log = logging.getLogger("livediffusion")


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text, multiple_of=64)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    weights_help: str = "hub id (default: the model's), a local diffusers folder, or random",
    backend: bool = True,
) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, help="see `livediffusion models`")
    model.add_argument("--weights", metavar="HUB_ID|PATH|random", help=weights_help)
    if backend:
        model.add_argument(
            "--backend",
            choices=("auto", *BACKENDS),
            default="auto",
            help="auto: coreml on Apple Silicon with coremltools installed, else torch",
        )
        model.add_argument(
            "--device",
            choices=("auto", "cuda", "mps", "cpu"),
            default="auto",
            help="torch backend: auto = cuda, then mps, then cpu",
        )
        model.add_argument(
            "--dtype",
            choices=("auto", "float16", "bfloat16", "float32"),
            default="auto",
            help="torch backend: auto = float16 on GPUs, float32 on the CPU",
        )
    model.add_argument("--cache-dir", metavar="DIR", help="where weights and converted models live")


def _add_coreml_arguments(parser: argparse.ArgumentParser) -> None:
    coreml = parser.add_argument_group("Core ML (Apple Silicon)")
    coreml.add_argument(
        "--variant",
        choices=VARIANTS,
        default="fused",
        help="fused: the whole frame in one program (default); stages: encoder, UNet and "
        "decoder as three programs, as the paper did",
    )
    coreml.add_argument("--precision", choices=PRECISIONS, default="fp16")
    coreml.add_argument(
        "--target",
        choices=TARGETS,
        help="oldest macOS the programs run on (default: macOS15 on a Mac running 15+, "
        "else macOS14); macOS15 keeps the temporal state on the device (Core ML states)",
    )
    coreml.add_argument(
        "--compute-units",
        choices=COMPUTE_UNITS,
        default="cpu_and_gpu",
        help="default cpu_and_gpu: the paper measured the Neural Engine 6x slower for this UNet",
    )
    coreml.add_argument(
        "--states",
        choices=("auto", "on", "off"),
        default="auto",
        help="Core ML states for the temporal state (auto: on where the target allows)",
    )


def _coreml_settings(args: argparse.Namespace) -> CoreMLSettings:
    states = {"auto": None, "on": True, "off": False}[args.states]
    return CoreMLSettings(
        variant=args.variant,
        precision=args.precision,
        target=args.target,
        compute_units=args.compute_units,
        states=states,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livediffusion",
        description="Live one-step diffusion for VJ hosts (Syphon / NDI / Spout in and out, OSC).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = Controls()
    serve = commands.add_parser("serve", help="run the effect", description="Run the effect.")
    frames = serve.add_argument_group("frames")
    frames.add_argument(
        "--source",
        default="",
        metavar="URI",
        help=f"ndi://NAME, ndi://HOST:PORT, syphon://SERVER, spout://NAME, "
        f"test://pattern, file://PATH (default here: {default_source()})",
    )
    frames.add_argument(
        "--sink",
        default="",
        metavar="URI",
        help=f"ndi://NAME, syphon://NAME, spout://NAME (default here: {default_sink()})",
    )
    frames.add_argument(
        "--size",
        type=_model_size,
        metavar="N|WxH",
        help="model resolution, a multiple of 64 (default: the model's, 512)",
    )
    frames.add_argument(
        "--fit",
        choices=("crop", "letterbox"),
        default="crop",
        help="fit other aspect ratios by centre crop or by padding (default crop)",
    )
    frames.add_argument(
        "--output-size", type=_size, metavar="WxH", help="output resolution (default: the input's)"
    )
    _add_model_arguments(serve)
    _add_coreml_arguments(serve)
    look = serve.add_argument_group("starting look (all changeable over OSC)")
    look.add_argument("--prompt", default=defaults.prompt)
    look.add_argument(
        "--strength", type=_unit, help="default: the model's own (1.0 for SDXS, 0.5 for sd-turbo)"
    )
    look.add_argument("--seed", type=int, default=defaults.seed)
    look.add_argument("--feedback", type=_unit, default=defaults.feedback)
    look.add_argument("--smoothing", type=_unit, default=defaults.smoothing)
    look.add_argument("--blend", type=_unit, default=defaults.blend)
    look.add_argument("--prompt-glide", type=float, default=0.5, metavar="SECONDS")
    look.add_argument("--seed-glide", type=float, default=0.5, metavar="SECONDS")
    control = serve.add_argument_group("control")
    control.add_argument(
        "--osc-host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)"
    )
    control.add_argument("--osc-port", type=int, default=9000)
    control.add_argument("--status-interval", type=float, default=1.0, metavar="SECONDS")
    control.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop by itself after this long (benchmarks, demos)",
    )

    sources = commands.add_parser("sources", help="list the Syphon/NDI/Spout sources in view")
    sources.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    download = commands.add_parser("download", help="fetch a model's weights into the cache")
    download.add_argument("--model", default="sdxs-512-0.9")
    download.add_argument("--weights", metavar="HUB_ID", help="default: the model's hub id")
    download.add_argument("--cache-dir", metavar="DIR")

    convert = commands.add_parser(
        "convert",
        help="convert a model to Core ML programs (runs on any OS; serve --backend coreml "
        "also converts on first use)",
        description="Convert a model to Core ML programs in the cache. Works on Linux and "
        "Windows too, to prepare programs for a Mac.",
    )
    _add_model_arguments(
        convert,
        weights_help="hub id (default: the model's), a local diffusers folder, or random",
        backend=False,
    )
    convert.add_argument(
        "--size", type=_model_size, metavar="N|WxH", help="model resolution (default 512)"
    )
    _add_coreml_arguments(convert)
    convert.add_argument("--force", action="store_true", help="convert again even if cached")

    bench = commands.add_parser(
        "bench",
        help="time each stage of a frame on this machine",
        description="Time the frame step and each of its stages over N frames, beside the "
        "source paper's M3 Ultra figures.",
    )
    _add_model_arguments(bench, weights_help="default: random (the speed is the architecture's)")
    bench.add_argument(
        "--size", type=_model_size, metavar="N|WxH", help="model resolution (default 512)"
    )
    _add_coreml_arguments(bench)
    bench.add_argument("--frames", type=int, default=50, help="timed runs per stage (50)")
    bench.add_argument("--warmup", type=int, default=5, help="untimed frames first (5)")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    doctor = commands.add_parser(
        "doctor",
        help="check that this machine's backends and transports work; paste it in bug reports",
        description="Check which backends and transports work here, with a one-frame "
        "Core ML vs torch comparison and a Syphon round trip on a Mac.",
    )
    _add_model_arguments(doctor, weights_help="default: random (checks the paths, not art)")
    doctor.add_argument(
        "--size",
        type=_model_size,
        default=(256, 256),
        metavar="N|WxH",
        help="model resolution for the one-frame checks (default 256: quicker, same paths)",
    )
    _add_coreml_arguments(doctor)
    doctor.add_argument(
        "--quick", action="store_true", help="only imports and transports, no model"
    )

    commands.add_parser("models", help="list the models livediffusion knows")
    commands.add_parser("osc", help="list the OSC addresses the server accepts")
    return parser


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    from livediffusion_models.registry import get_model

    strength = args.strength
    if strength is None:
        strength = get_model(args.model).default_strength
    return ServeConfig(
        source=args.source,
        sink=args.sink,
        model=args.model,
        weights=args.weights,
        device=args.device,
        dtype=args.dtype,
        size=args.size,
        fit=args.fit,
        output_size=args.output_size,
        backend=args.backend,
        coreml=_coreml_settings(args),
        osc_host=args.osc_host,
        osc_port=args.osc_port,
        controls=Controls(
            prompt=args.prompt,
            strength=strength,
            seed=args.seed,
            feedback=args.feedback,
            smoothing=args.smoothing,
            blend=args.blend,
        ),
        prompt_glide=args.prompt_glide,
        seed_glide=args.seed_glide,
        cache_dir=args.cache_dir,
        status_interval=args.status_interval,
        duration=args.duration,
    )


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
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import download

    spec = get_model(args.model)
    path = download(spec, args.weights, cache_dir=args.cache_dir)
    print(path)
    return 0


def _convert(args: argparse.Namespace) -> int:
    import sys as _sys

    from livediffusion_models.coreml import default_target, require_coremltools
    from livediffusion_models.coreml.convert import convert, resolve_stateful
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    require_coremltools()
    spec = get_model(args.model)
    weights = args.weights or spec.hub_id
    size = args.size or (spec.default_size, spec.default_size)
    settings = _coreml_settings(args)
    target = settings.target or default_target()
    # a contradiction in the options is said now, not after a minute of loading weights
    resolve_stateful(settings.variant, settings.precision, target, settings.states)
    log.info("loading %s (%s weights) in float32 for conversion", spec.name, weights)
    model = load_model(spec, weights, cache_dir=args.cache_dir, progress=True)
    converted = convert(
        model,
        model=spec.name,
        fingerprint=model.fingerprint,
        size=size,
        precision=settings.precision,
        target=target,
        variant=settings.variant,
        stateful=settings.states,
        cache_dir=args.cache_dir,
        force=args.force,
    )
    print(converted.folder)
    for program in converted.programs.values():
        print(f"  {program.package.name}")
    if _sys.platform != "darwin":
        print(
            "# to use these on a Mac, copy the folder to the same place under its cache "
            f"(~/Library/Caches/livediffusion/coreml/{spec.name}/) and serve there with the "
            "same --model, --weights, --size and Core ML options",
            file=_sys.stderr,
        )
    return 0


def _check_config(args: argparse.Namespace) -> ServeConfig:
    """bench and doctor build the backend as serve would; random weights unless told."""
    return ServeConfig(
        model=args.model,
        weights=args.weights or "random",
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        size=args.size,
        cache_dir=args.cache_dir,
        coreml=_coreml_settings(args),
    )


def _bench(args: argparse.Namespace) -> int:
    from livediffusion.bench import format_table, run_bench, write_json

    result = run_bench(_check_config(args), frames=args.frames, warmup=args.warmup)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from livediffusion.doctor import run_doctor

    return run_doctor(_check_config(args), quick=args.quick)


def _models() -> int:
    from livediffusion_models.registry import DEFAULT_MODEL, MODELS

    for name, spec in MODELS.items():
        marker = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{marker}\t{spec.hub_id}\t{spec.description}")
    return 0


def _osc() -> int:
    for address, (_, _, text) in CONTROL_ADDRESSES.items():
        print(f"{address:12} {text}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from livediffusion_bridge import BridgeError
    from livediffusion_models.errors import ModelError

    try:
        if args.command == "serve":
            from livediffusion.server import run_server

            return run_server(_serve_config(args))
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
        return _osc()
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
    code = main()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
