"""``bench --lora`` and ``bench --controlnet``: what a loaded LoRA, a LoRA weight change and a
ControlNet cost, beside the plain frame, in one process on the same weights.

Each row builds the backend as ``serve`` would (the same table, the same compile mode) on
weights loaded once, and times whole frames through ``step``, which returns pixels on the host,
so every frame's device work is inside its time. A weight change is timed as the frame thread
makes it (``set_lora_weights``, then waiting for the device), alternating between two weight
sets so every change does the work. The goal the issue set: a ControlNet under 40% of its
frame, a loaded LoRA under 2%.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from livediffusion.backends import BACKENDS, choose_backend
from livediffusion.config import ServeConfig
from livediffusion.tools.measure import percentile, picture
from livediffusion.tools.style_files import RANDOM_LORA, write_random_lora
from livediffusion_models.backends import Backend, FrameParams

__all__ = ["StyleRow", "format_styles", "run_style_bench"]


@dataclass(frozen=True, slots=True)
class StyleRow:
    name: str
    ms_p50: float
    ms_p99: float
    ms_mean: float
    extra_ms: float | None = None
    """Beside the plain frame (p50); None for the plain frame and for a weight change."""
    share: float | None = None
    """``extra_ms`` as a share of this row's frame."""


def _time(call: Callable[[], Any], runs: int) -> tuple[float, float, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append(1000.0 * (time.perf_counter() - started))
    return percentile(samples, 50), percentile(samples, 99), statistics.fmean(samples)


def _frames(backend: Backend, *, frames: int, warmup: int) -> tuple[float, float, float]:
    backend.set_prompt(backend.encode_prompt("a benchmark of light and colour"))
    height, width = backend.model_size
    pixels = picture(height, width)
    out = np.empty_like(pixels)
    params = FrameParams()
    for _ in range(max(1, warmup)):
        backend.step(pixels, params, out=out)
    return _time(lambda: backend.step(pixels, params, out=out), frames)


def _settle(backend: Backend) -> Callable[[], None]:
    """Wait for the device's queued work (a torch backend's), so a change's time is real."""
    device = getattr(backend, "device", None)
    if device is None:
        return lambda: None
    from livediffusion_models.backends.torch_backend import synchronize

    return lambda: synchronize(device)


def _resolve_random(config: ServeConfig, unet: Any, folder: Path) -> ServeConfig:
    """``--lora random``: written for this UNet before any backend touches it."""
    requests = []
    for number, request in enumerate(config.lora):
        if request.source == RANDOM_LORA:
            path = write_random_lora(unet, folder / f"random-{number}", seed=number)
            requests.append(dataclasses.replace(request, source=str(path)))
        else:
            requests.append(request)
    return dataclasses.replace(config, lora=tuple(requests))


def run_style_bench(
    config: ServeConfig, *, frames: int, warmup: int, out: TextIO
) -> list[StyleRow]:
    """The plain frame, then with the ``--controlnet``, then with the ``--lora`` (and a weight
    change): built in that order, since a LoRA stays in the modules it was applied to."""
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    if frames < 1 or warmup < 0:
        raise ValueError("--frames must be at least 1 and --warmup at least 0")
    choice = BACKENDS[choose_backend(config.backend)]
    choice.check(config)
    spec = get_model(config.model)
    model = load_model(
        spec,
        config.weights or spec.hub_id,
        cache_dir=config.cache_dir,
        progress=True,
        torch_dtype=choice.load_dtype(config),
    )
    rows: list[StyleRow] = []
    with tempfile.TemporaryDirectory(prefix="livediffusion-bench-lora-") as scratch:
        config = _resolve_random(config, model.unet, Path(scratch))
        plain = dataclasses.replace(config, lora=(), controlnet=None)
        backend = choice.build(plain, model)
        try:
            base = _frames(backend, frames=frames, warmup=warmup)
            out.write(f"{'frame, plain':<44} {base[0]:8.2f} ms  ({backend.name})\n")
        finally:
            backend.close()
        rows.append(StyleRow("frame, plain", *base))
        if config.controlnet is not None:
            with_cn = dataclasses.replace(config, lora=())
            backend = choice.build(with_cn, model)
            try:
                timed = _frames(backend, frames=frames, warmup=warmup)
            finally:
                backend.close()
            rows.append(_beside(f"frame + ControlNet {config.controlnet}", timed, base))
            out.write(format_styles(rows[-1:]) + "\n")
        if config.lora:
            with_lora = dataclasses.replace(config, controlnet=None)
            backend = choice.build(with_lora, model)
            try:
                timed = _frames(backend, frames=frames, warmup=warmup)
                names = ", ".join(backend.loras)
                rows.append(_beside(f"frame + LoRA {names} ({config.lora_runtime})", timed, base))
                rows.append(StyleRow("LoRA weight change", *_changes(backend, frames)))
            finally:
                backend.close()
            out.write(format_styles(rows[-2:]) + "\n")
    return rows


def _changes(backend: Backend, runs: int) -> tuple[float, float, float]:
    """A change of every LoRA's weight, as the frame thread makes it, each time another."""
    first = backend.lora_weights
    second = tuple(0.5 * weight if weight else 0.5 for weight in first)
    settle = _settle(backend)
    state = {"next": second}

    def change() -> None:
        backend.set_lora_weights(state["next"])
        settle()
        state["next"] = first if state["next"] == second else second

    return _time(change, runs)


def _beside(
    name: str, timed: tuple[float, float, float], base: tuple[float, float, float]
) -> StyleRow:
    extra = timed[0] - base[0]
    return StyleRow(name, *timed, extra_ms=extra, share=extra / timed[0] if timed[0] > 0 else None)


def format_styles(rows: list[StyleRow]) -> str:
    lines = []
    for row in rows:
        text = f"{row.name:<44} {row.ms_p50:8.2f} ms  p99 {row.ms_p99:8.2f}"
        if row.extra_ms is not None and row.share is not None:
            text += f"  {row.extra_ms:+.2f} ms, {100 * row.share:.1f}% of this frame"
        elif row.name == "LoRA weight change":
            text += "  (once per change)"
        lines.append(text)
    return "\n".join(lines)


def styles_command(config: ServeConfig, *, frames: int, warmup: int, json: str | None) -> int:
    """``bench --lora/--controlnet``: the rows as they finish, then the JSON if asked."""
    import json as json_module
    import sys

    size = config.size
    shown = f" at {size[1]}x{size[0]}" if size else ""
    print(
        f"livediffusion bench: {config.model} ({config.weights or 'hub weights'}){shown}, "
        f"{frames} frames per row"
    )
    rows = run_style_bench(config, frames=frames, warmup=warmup, out=sys.stdout)
    print("(the goal: a ControlNet under 40% of its frame, a loaded LoRA under 2%)")
    if json:
        data = [{**dataclasses.asdict(row)} for row in rows]
        Path(json).write_text(json_module.dumps({"styles": data}, indent=2), encoding="utf-8")
    return 0
