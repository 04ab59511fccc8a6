"""``livediffusion bench --compare``: the frame step in each mode beside diffusers' img2img.

One process, one set of weights, one picture: the weights are loaded once and every mode
(eager, compiled, graph) is a :class:`TorchBackend` built on the same modules, so the only
difference between rows is how the step runs. The reference row is diffusers'
``StableDiffusionImg2ImgPipeline`` on those same modules with tensors in and out (no PIL), one
step, no guidance: what a user of diffusers would write for the same effect.

FLOPs come from ``torch.utils.flop_counter`` over one call of each path, so TFLOP/s says how
much of the card a mode uses. Peak memory is ``torch.cuda.max_memory_allocated`` from just
before a mode is built to its last timed frame (weights included: what a card must hold).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from livediffusion.config import ServeConfig
from livediffusion.tools.measure import percentile, picture

if TYPE_CHECKING:
    import torch

    from livediffusion_models.weights import LoadedModel

__all__ = ["MODES", "ModeTiming", "compare_modes", "format_modes"]

log = logging.getLogger("livediffusion.tools.bench")

MODES = ("diffusers", "eager", "compiled", "graph")
"""Rows in the order they run: the reference first, before any mode changes global settings
(cuDNN benchmark mode, channels_last) that the compiled modes switch on."""

REFERENCE = "diffusers"
PROMPT = "a benchmark of light and colour"


@dataclass(frozen=True, slots=True)
class ModeTiming:
    mode: str
    description: str
    ms_p50: float | None = None
    ms_p99: float | None = None
    ms_mean: float | None = None
    gflop: float | None = None
    peak_gb: float | None = None
    skipped: str | None = None
    """Why this mode did not run here (no CUDA, compile failed), else None."""

    @property
    def fps(self) -> float | None:
        return None if not self.ms_mean else 1000.0 / self.ms_mean

    @property
    def tflops(self) -> float | None:
        if self.gflop is None or not self.ms_mean:
            return None
        return self.gflop / self.ms_mean  # GFLOP per ms is TFLOP per s


def _time(run: Callable[[], None], frames: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(frames):
        started = time.perf_counter()
        run()  # each run ends when the device is done (a download or a synchronize)
        samples.append(1000.0 * (time.perf_counter() - started))
    return percentile(samples, 50), percentile(samples, 99), statistics.fmean(samples)


def _count_gflop(run: Callable[[], None]) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            run()
    except Exception as exc:  # counting is a nicety; never lose the timings for it
        log.info("FLOP count failed: %s", exc)
        return None
    return float(counter.get_total_flops()) / 1e9


@contextlib.contextmanager
def _peak(device: torch.device) -> Iterator[list[float]]:
    import torch

    box: list[float] = []
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    yield box
    if device.type == "cuda":
        box.append(torch.cuda.max_memory_allocated(device) / 1024**3)


def _synchronize(device: torch.device) -> None:
    from livediffusion_models.backends.torch_backend import synchronize

    synchronize(device)


def _reference(
    model: LoadedModel, device: torch.device, dtype: torch.dtype, size: tuple[int, int]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """diffusers' img2img pipeline on our modules: (one frame, one frame for the FLOP count)."""
    import diffusers
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline

    scheduler_class = getattr(diffusers, str(model.scheduler_config["_class_name"]))
    scheduler = scheduler_class.from_config(dict(model.scheduler_config))
    pipe = StableDiffusionImg2ImgPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    ).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        embeds = pipe.encode_prompt(PROMPT, device, 1, False)[0]
    height, width = size
    pixels = torch.from_numpy(picture(height, width)[..., :3]).to(device)
    image = pixels.permute(2, 0, 1).unsqueeze(0).to(dtype) / 255.0  # tensors in, as in [0, 1]
    generator = torch.Generator(device).manual_seed(0)

    @torch.inference_mode()
    def frame() -> None:
        pipe(
            prompt_embeds=embeds,
            image=image,
            strength=1.0,
            num_inference_steps=1,
            guidance_scale=0.0,
            output_type="pt",
            generator=generator,
        )
        _synchronize(device)

    return frame, frame


def _ours(
    model: LoadedModel, config: ServeConfig, mode: str, size: tuple[int, int]
) -> tuple[Any, Callable[[], None], Callable[[], None]]:
    """(backend, one frame through step(), one eager FrameStep call for the FLOP count)."""
    import torch

    from livediffusion.backends import _torch_dtype
    from livediffusion_models.backends import FrameParams
    from livediffusion_models.backends.torch_backend import (
        TorchBackend,
        TorchOptions,
        resolve_device,
    )
    from livediffusion_models.cache import cache_dir

    options = TorchOptions(
        size=size,
        device=resolve_device(config.device),
        dtype=_torch_dtype(config),
        compile="off" if mode == "eager" else "max" if config.compile == "max" else "default",
        graph=mode == "graph",
        compile_cache=cache_dir(config.cache_dir) / "torch-compile",
    )
    backend = TorchBackend.from_components(model, options)
    backend.set_prompt(backend.encode_prompt(PROMPT))
    pixels = picture(*size)
    out = np.empty_like(pixels)
    params = FrameParams(feedback=0.1, smoothing=0.1)

    def frame() -> None:
        backend.step(pixels, params, out=out)

    @torch.inference_mode()
    def count() -> None:
        backend.frame_step(*backend.inputs.arguments(backend._image))

    return backend, frame, count


def compare_modes(
    config: ServeConfig,
    *,
    model: LoadedModel,
    frames: int = 200,
    warmup: int = 10,
    modes: tuple[str, ...] = MODES,
) -> list[ModeTiming]:
    """Time each mode on ``model``. Modes that need CUDA are reported skipped elsewhere."""
    from livediffusion.backends import _torch_dtype
    from livediffusion_models.backends.torch_backend import resolve_device

    device = resolve_device(config.device)
    dtype = _torch_dtype(config)
    size = config.size or (model.spec.default_size, model.spec.default_size)
    rows: list[ModeTiming] = []
    for mode in modes:
        description = _DESCRIPTIONS[mode]
        if mode in ("compiled", "graph") and device.type != "cuda":
            rows.append(ModeTiming(mode, description, skipped=f"needs CUDA ({device.type} here)"))
            continue
        log.info("bench: %s ...", mode)
        backend = None
        with _peak(device) as peak:
            if mode == REFERENCE:
                frame, count = _reference(model, device, dtype, size)
            else:
                backend, frame, count = _ours(model, config, mode, size)
            for _ in range(max(1, warmup)):
                frame()
            if backend is not None and backend.mode != mode:
                skipped = f"fell back to {backend.mode} (see the warning above)"
                rows.append(ModeTiming(mode, description, skipped=skipped))
                backend.close()
                continue
            p50, p99, mean = _time(frame, frames)
        gflop = _count_gflop(count)
        rows.append(
            ModeTiming(
                mode,
                description,
                ms_p50=p50,
                ms_p99=p99,
                ms_mean=mean,
                gflop=gflop,
                peak_gb=peak[0] if peak else None,
            )
        )
        if backend is not None:
            backend.close()
    return rows


_DESCRIPTIONS = {
    "diffusers": "diffusers StableDiffusionImg2ImgPipeline, 1 step, tensors in and out",
    "eager": "livediffusion FrameStep, eager PyTorch",
    "compiled": "FrameStep under torch.compile (no CUDA graph)",
    "graph": "torch.compile + the whole frame in one CUDA graph (serve's default on CUDA)",
}


def format_modes(rows: list[ModeTiming]) -> str:
    reference = next((row for row in rows if row.mode == REFERENCE and row.fps), None)
    lines = [
        f"{'mode':<10} {'FPS':>8} {'ms p50':>8} {'ms p99':>8} {'TFLOP/s':>8} {'peak GB':>8} "
        f"{'x ref':>6}   what",
    ]

    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        if row.skipped:
            lines.append(f"{row.mode:<10} skipped: {row.skipped}")
            continue
        ratio = None if reference is None or not row.fps else row.fps / (reference.fps or 1)
        lines.append(
            f"{row.mode:<10} {number(row.fps, 1):>8} {number(row.ms_p50):>8} "
            f"{number(row.ms_p99):>8} {number(row.tflops, 1):>8} {number(row.peak_gb):>8} "
            f"{number(ratio, 2):>6}   {row.description}"
        )
    gflop = next((row.gflop for row in rows if row.mode != REFERENCE and row.gflop), None)
    if gflop:
        lines.append(f"(one livediffusion frame is {gflop:.0f} GFLOP by torch's FLOP counter)")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class StillSaving:
    """A still input through the engine, with and without ``--skip-similar``."""

    threshold: float
    seconds: float
    frames_off: int
    model_ms_per_s_off: float  # time in the model per second of show, skip off
    frames_on: int
    model_runs_on: int
    skipped_on: int
    model_ms_per_s_on: float

    @property
    def saved(self) -> float:
        """Fraction of the model's time saved."""
        if not self.model_ms_per_s_off:
            return 0.0
        return 1.0 - self.model_ms_per_s_on / self.model_ms_per_s_off


def still_saving(
    backend: Any, *, threshold: float = 0.01, seconds: float = 3.0, fps: float = 120.0
) -> StillSaving:
    """Feed one still picture at ``fps`` through the real engine, skip off then on."""
    import os

    from livediffusion.control.controls import Controls, ControlStore
    from livediffusion.run.engine import Engine, EngineOptions
    from livediffusion_bridge import open_sink, open_source
    from livediffusion_bridge.memory import channel

    height, width = backend.model_size
    still = picture(height, width)
    figures: dict[str, tuple[int, int, int, float]] = {}
    for label, skip in (("off", 0.0), ("on", threshold)):
        name = f"bench-still-{label}-{os.getpid()}"
        engine = Engine(
            source=open_source(f"memory://{name}-in"),
            sink=open_sink(f"memory://{name}-out"),
            backend=backend,
            controls=ControlStore(Controls(feedback=0.1, smoothing=0.3)),
            options=EngineOptions(skip_similar=skip),
        )
        feed = channel(f"{name}-in")
        with engine:
            started = time.monotonic()
            tick = started
            while time.monotonic() - started < seconds:
                feed.push(still)
                tick += 1.0 / fps
                time.sleep(max(0.0, tick - time.monotonic()))
            elapsed = time.monotonic() - started
        stats = engine.stats
        figures[label] = (
            stats.frames_out,
            stats.steps,
            engine.skipped,
            1000.0 * stats.step_seconds / elapsed,
        )
    off, on = figures["off"], figures["on"]
    return StillSaving(
        threshold=threshold,
        seconds=seconds,
        frames_off=off[0],
        model_ms_per_s_off=off[3],
        frames_on=on[0],
        model_runs_on=on[1],
        skipped_on=on[2],
        model_ms_per_s_on=on[3],
    )


def format_still(result: StillSaving) -> str:
    return (
        f"still input, --skip-similar {result.threshold:g}: the model ran "
        f"{result.model_runs_on} of {result.frames_on} frames ({result.skipped_on} republished); "
        f"time in the model {result.model_ms_per_s_off:.0f} ms per second without skipping, "
        f"{result.model_ms_per_s_on:.0f} ms per second with it ({100 * result.saved:.0f}% saved)"
    )
