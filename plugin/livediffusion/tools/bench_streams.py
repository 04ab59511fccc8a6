"""``livediffusion bench --streams N[,N...]``: several streams' frames through one batched step.

For each count the backend is built as ``serve --stream ...`` builds it (one compiled step and
on CUDA one graph for all streams, every stream its own prompt, seed, controls and temporal
state) and ``step_many`` is timed with a frame for every stream, as when all sources keep
up. A stream's frame is done when its batch is, so the batch's time is each stream's latency
through the model; frames/s counts the frames of all streams together.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from livediffusion.config import MAX_STREAMS, ServeConfig, StreamConfig
from livediffusion.tools.measure import percentile, picture

__all__ = ["StreamsTiming", "format_streams_table", "parse_counts", "time_streams"]

log = logging.getLogger("livediffusion.tools.bench")


def parse_counts(text: str) -> tuple[int, ...]:
    """``"1,4,8"`` -> ``(1, 4, 8)``, each 1..MAX_STREAMS."""
    counts = []
    for part in text.split(","):
        try:
            count = int(part.strip())
        except ValueError:
            count = 0
        if not 1 <= count <= MAX_STREAMS:
            raise ValueError(
                f"--streams takes counts from 1 to {MAX_STREAMS}, comma-separated (1,4,8); "
                f"got {text!r}"
            )
        counts.append(count)
    return tuple(dict.fromkeys(counts))


def with_streams(config: ServeConfig, count: int) -> ServeConfig:
    """``config`` as ``serve`` would run it with ``count`` streams (the backend's batch)."""
    if count == 1:
        return dataclasses.replace(config, streams=())
    return dataclasses.replace(
        config,
        streams=tuple(
            StreamConfig(f"s{k}", "test://pattern", f"memory://bench-{k}", config.controls)
            for k in range(count)
        ),
    )


@dataclass(frozen=True, slots=True)
class StreamsTiming:
    streams: int
    batch_ms_p50: float
    batch_ms_p99: float
    batch_ms_mean: float
    peak_gb: float | None  # GPU memory the process held at most (CUDA only)
    backend: str

    @property
    def fps(self) -> float:
        """Frames of all streams together, per second."""
        return self.streams * 1000.0 / self.batch_ms_mean if self.batch_ms_mean > 0 else 0.0


def time_streams(
    config: ServeConfig,
    *,
    model: Any,
    build: Any,
    counts: tuple[int, ...],
    frames: int = 200,
    warmup: int = 10,
) -> list[StreamsTiming]:
    """Time ``step_many`` for each stream count; ``build(config, model)`` makes a backend."""
    rows = []
    for count in counts:
        log.info("bench: %d stream%s ...", count, "s" if count > 1 else "")
        rows.append(_time_one(with_streams(config, count), model, build, count, frames, warmup))
    return rows


def _time_one(
    config: ServeConfig, model: Any, build: Any, count: int, frames: int, warmup: int
) -> StreamsTiming:
    from livediffusion_models.backends import FrameParams

    cuda = _cuda_device(config)
    if cuda is not None:
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(cuda)
    backend = build(config, model)
    try:
        height, width = backend.model_size
        base = picture(height, width)
        pictures = [np.roll(base, 7 * k, axis=1) for k in range(count)]  # each its own
        outs = [np.empty_like(base) for _ in range(count)]
        params = [
            FrameParams(strength=0.6 + 0.05 * k, feedback=0.1, smoothing=0.3) for k in range(count)
        ]
        prompts = ("a benchmark of light and colour", "ink on wet paper", "neon city rain")
        for k in range(count):
            embedding = backend.encode_prompt(prompts[k % len(prompts)])
            backend.set_prompt(embedding, stream=k)
            backend.set_seed(1 + k, stream=k)
        for _ in range(max(1, warmup)):
            _check(backend.step_many(pictures, params, out=outs))
        samples = []
        for _ in range(frames):
            started = time.perf_counter()
            errors = backend.step_many(pictures, params, out=outs)  # waits for the device
            samples.append(1000.0 * (time.perf_counter() - started))
            _check(errors)
        peak = None
        if cuda is not None:
            import torch

            peak = torch.cuda.max_memory_reserved(cuda) / 1024**3
        return StreamsTiming(
            streams=count,
            batch_ms_p50=percentile(samples, 50),
            batch_ms_p99=percentile(samples, 99),
            batch_ms_mean=statistics.fmean(samples),
            peak_gb=peak,
            backend=backend.name,
        )
    finally:
        backend.close()


def _check(errors: list[Exception | None]) -> None:
    for error in errors:
        if error is not None:
            raise RuntimeError(f"a stream's frame failed in the bench: {error}")


def _cuda_device(config: ServeConfig) -> Any:
    try:
        from livediffusion_models.backends.torch_backend import resolve_device

        device = resolve_device(config.device)
    except Exception:  # Core ML or no torch device: no GPU memory to report
        return None
    return device if device.type == "cuda" else None


def format_streams_table(rows: list[StreamsTiming]) -> str:
    lines = [
        "streams batched through one step (every stream its own prompt, seed and state):",
        f"{'streams':>7} {'frames/s':>9} {'per stream':>10} {'batch p50':>10} "
        f"{'p99 ms':>7} {'peak GB':>8}",
    ]
    for row in rows:
        peak = f"{row.peak_gb:8.2f}" if row.peak_gb is not None else f"{'-':>8}"
        lines.append(
            f"{row.streams:>7} {row.fps:9.1f} {row.fps / row.streams:10.1f} "
            f"{row.batch_ms_p50:10.2f} {row.batch_ms_p99:7.2f} {peak}"
        )
    backend = rows[0].backend if rows else ""
    lines.append(
        f"({backend}; a stream's frame is ready when its batch is: the batch time is each "
        "stream's latency through the model; peak: GPU memory reserved, weights included)"
    )
    return "\n".join(lines)
