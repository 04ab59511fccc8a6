"""The ``livediffusion`` command: ``serve``, ``sources``, ``download``, ``models``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from livediffusion.config import ServeConfig, default_sink, default_source, parse_size
from livediffusion.controls import CONTROL_ADDRESSES, Controls

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
    model = serve.add_argument_group("model")
    model.add_argument("--model", default="sdxs-512-0.9", help="see `livediffusion models`")
    model.add_argument(
        "--weights",
        metavar="HUB_ID|PATH|random",
        help="hub id (default: the model's), a local diffusers folder, or random",
    )
    model.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    model.add_argument(
        "--dtype",
        choices=("auto", "float16", "bfloat16", "float32"),
        default="auto",
        help="auto: float16 on GPUs, float32 on the CPU",
    )
    model.add_argument("--cache-dir", metavar="DIR", help="where downloaded weights live")
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


if __name__ == "__main__":
    sys.exit(main())
