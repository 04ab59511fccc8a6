"""``livediffusion bench``: each stage of a frame, timed on this machine, beside the paper.

Every backend offers the same named stage timers (:meth:`Backend.stage_timers`), so the
table has one shape for torch on a GPU or CPU and for Core ML on a Mac, and the source
paper's M3 Ultra figures print beside them. A timer waits for the hardware before returning,
so the wall time around it is the stage's real time.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from livediffusion.backends import build_backend
from livediffusion.config import ServeConfig
from livediffusion.tools.measure import percentile, picture

__all__ = [
    "PAPER_M3_ULTRA_MS",
    "BenchResult",
    "StageTiming",
    "format_table",
    "run_bench",
    "run_comparison",
]

PAPER_M3_ULTRA_MS: dict[str, str] = {
    "pre": "~10 (pre+post)",
    "encode": "~5",
    "unet": "24.4",
    "decode": "~5",
    "step": "~34 (enc+unet+dec)",
    "post": "",
    "frame": "44.1 (22.7 FPS)",
}
"""The paper's per-frame budget on an M3 Ultra (Core ML, fp16, CPU_AND_GPU, 512x512)."""

_ORDER = ("pre", "encode", "unet", "decode", "step", "post", "frame")


@dataclass(frozen=True, slots=True)
class StageTiming:
    name: str
    ms_p50: float
    ms_p99: float
    ms_mean: float

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms_mean if self.ms_mean > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    backend: str
    model: str
    weights: str
    size: tuple[int, int]
    frames: int
    machine: str
    date: str
    stages: list[StageTiming] = field(default_factory=list)


def _machine() -> str:
    parts = [platform.system(), platform.release(), platform.machine()]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name())
        parts.append(f"torch {torch.__version__}")
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return ", ".join(parts)


def run_bench(config: ServeConfig, *, frames: int = 50, warmup: int = 5) -> BenchResult:
    """Build the backend as ``serve`` would, warm it up, then time each stage ``frames`` times."""
    if frames < 1 or warmup < 0:
        raise ValueError("--frames must be at least 1 and --warmup at least 0")
    from livediffusion_models.backends import FrameParams

    backend = build_backend(config)
    try:
        backend.set_prompt(backend.encode_prompt("a benchmark of light and colour"))
        height, width = backend.model_size
        pixels = picture(height, width)
        out = np.empty_like(pixels)
        for _ in range(max(1, warmup)):
            backend.step(pixels, FrameParams(), out=out)
        stages = []
        for name, timer in backend.stage_timers().items():
            samples = []
            for _ in range(frames):
                started = time.perf_counter()
                timer()
                samples.append(1000.0 * (time.perf_counter() - started))
            stages.append(
                StageTiming(
                    name=name,
                    ms_p50=percentile(samples, 50),
                    ms_p99=percentile(samples, 99),
                    ms_mean=statistics.fmean(samples),
                )
            )
        stages.sort(key=lambda s: _ORDER.index(s.name) if s.name in _ORDER else len(_ORDER))
        return BenchResult(
            backend=backend.name,
            model=config.model,
            weights=config.weights or "the model's hub weights",
            size=(height, width),
            frames=frames,
            machine=_machine(),
            date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            stages=stages,
        )
    finally:
        backend.close()


def format_table(result: BenchResult) -> str:
    height, width = result.size
    lines = [
        f"livediffusion bench: {result.model} ({result.weights}) at {width}x{height}, "
        f"{result.backend}, {result.frames} runs per stage",
        f"machine: {result.machine}; {result.date}",
        "",
        f"{'stage':<8} {'ms p50':>8} {'ms p99':>8} {'FPS':>8}   paper, M3 Ultra Core ML (ms)",
    ]
    for stage in result.stages:
        paper = PAPER_M3_ULTRA_MS.get(stage.name, "")
        lines.append(
            f"{stage.name:<8} {stage.ms_p50:8.2f} {stage.ms_p99:8.2f} {stage.fps:8.1f}   {paper}"
        )
    lines.append("")
    lines.append(
        "(frame: the whole step() the server runs, pre + model + post; FPS = 1000 / mean ms; "
        "the paper's 22.7 FPS is end to end with a camera)"
    )
    if result.backend.endswith((" graph", " compiled")):
        lines.append(
            "(the stage rows run the modules eagerly, one at a time; only the frame row is the "
            "compiled path: `bench --compare` times every mode whole)"
        )
    return "\n".join(lines)


def write_json(result: BenchResult, path: str | Path) -> None:
    data = asdict(result)
    for stage, timing in zip(data["stages"], result.stages, strict=True):
        stage["fps"] = timing.fps
    Path(path).write_text(json.dumps(data, indent=2), encoding="utf-8")


def run_comparison(
    config: ServeConfig,
    *,
    compare: bool,
    e2e: bool,
    still: float | None,
    frames: int,
    warmup: int,
    e2e_seconds: float,
    e2e_fps: float,
    json_path: str | None,
    plot_path: str | None,
    out: TextIO,
    streams: tuple[int, ...] = (),
    modes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """``bench --compare/--e2e/--still/--streams``: load the weights once, run what was asked,
    print each part as it finishes, then write the JSON and the chart."""
    from livediffusion.backends import BACKENDS, choose_backend
    from livediffusion.tools.bench_e2e import check_size, format_e2e, run_e2e
    from livediffusion.tools.bench_modes import (
        compare_modes,
        format_modes,
        format_still,
        still_saving,
    )
    from livediffusion.tools.bench_streams import (
        format_streams_table,
        time_streams,
        with_streams,
    )
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    name = choose_backend(config.backend)
    choice = BACKENDS[name]
    choice.check(config)
    spec = get_model(config.model)
    size = config.size or (spec.default_size, spec.default_size)
    if e2e:
        check_size(size)  # in one line now, not from the feeder after the weights loaded
    model = load_model(
        spec,
        config.weights or spec.hub_id,
        cache_dir=config.cache_dir,
        progress=True,
        torch_dtype=choice.load_dtype(config),
    )
    report: dict[str, Any] = {
        "model": config.model,
        "weights": config.weights or spec.hub_id,
        "size": list(size),
        "machine": _machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    out.write(f"livediffusion bench: {spec.name} ({report['weights']}) at {size[1]}x{size[0]}\n")
    out.write(f"machine: {report['machine']}; {report['date']}\n\n")
    rows = []
    if compare:
        if name != "torch":
            raise ValueError("--compare times the torch modes: use --backend torch")
        chosen = {"modes": modes} if modes else {}
        rows = compare_modes(config, model=model, frames=frames, warmup=warmup, **chosen)
        report["modes"] = [{**asdict(row), "fps": row.fps, "tflops": row.tflops} for row in rows]
        out.write(format_modes(rows) + "\n\n")
        out.flush()
    if streams and not e2e:  # with --e2e the counts are NDI pairs, timed end to end
        timings = time_streams(
            config, model=model, build=choice.build, counts=streams, frames=frames, warmup=warmup
        )
        report["streams"] = [{**asdict(row), "fps": row.fps} for row in timings]
        out.write(format_streams_table(timings) + "\n\n")
        out.flush()
    result = None
    if still is not None:
        backend = choice.build(config, model)
        backend.set_prompt(backend.encode_prompt("a benchmark of light and colour"))
        backend.warmup()
        saving = still_saving(backend, threshold=still)
        report["still"] = {**asdict(saving), "saved": saving.saved}
        out.write(format_still(saving) + "\n\n")
        out.flush()
        backend.close()
    if e2e:
        report["e2e"] = []
        for count in streams or (1,):
            serve = with_streams(config, count)
            backend = choice.build(serve, model)
            for k in range(count):
                embedding = backend.encode_prompt("a benchmark of light and colour")
                backend.set_prompt(embedding, stream=k)
            backend.warmup()
            result = run_e2e(
                serve, backend=backend, seconds=e2e_seconds, feed_fps=e2e_fps, streams=count
            )
            report["e2e"].append(asdict(result))
            out.write(format_e2e(result) + "\n")
            out.flush()
        if len(report["e2e"]) == 1:
            report["e2e"] = report["e2e"][0]  # one run: the shape it always had
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2), encoding="utf-8")
    if plot_path:
        from livediffusion.tools.bench_plot import plot

        title = f"livediffusion, {spec.name} {size[1]}x{size[0]}, {report['machine']}"
        plot(rows, result, plot_path, title=title)
    return report
