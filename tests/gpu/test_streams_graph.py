"""Several streams in one CUDA graph: equal to the batched eager step, controls live per stream.

Run on the device machine (`pytest -m gpu`); skipped where PyTorch sees no CUDA GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from livediffusion_models.backends import FrameParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SIZES = ((64, 64), (72, 128), (96, 64))
LOOKS = (
    FrameParams(strength=1.0, feedback=0.3, smoothing=0.4),
    FrameParams(strength=0.7, smoothing=0.6, blend=0.3),
    FrameParams(strength=0.9, feedback=0.5, blend=0.1),
)


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def _pair(make: Callable[..., Any]) -> tuple[Any, Any]:
    eager = make(device="cuda", dtype=torch.float32, streams=3)
    graph = make(device="cuda", dtype=torch.float32, compile="default", streams=3)
    for backend in (eager, graph):
        for stream, prompt in enumerate(("a fox", "jellyfish", "a tower")):
            backend.set_prompt(backend.encode_prompt(prompt), stream=stream)
            backend.set_seed(10 + stream, stream=stream)
    return eager, graph


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_the_batched_graph_equals_the_batched_eager_step(
    make_tiny_backend: Callable[..., Any],
) -> None:
    eager, graph = _pair(make_tiny_backend)
    for frame in range(5):
        pixels: list[np.ndarray | None] = [
            _picture(*SIZES[k], seed=10 * frame + k) for k in range(3)
        ]
        if frame == 2:
            pixels[1] = None  # stream 1 waits for one frame: its state must hold in both
        outs = {
            id(b): [None if p is None else np.zeros_like(p) for p in pixels] for b in (eager, graph)
        }
        params = [LOOKS[k] if pixels[k] is not None else None for k in range(3)]
        for backend in (eager, graph):
            assert backend.step_many(pixels, params, out=outs[id(backend)]) == [None] * 3
        assert graph.mode == "graph"
        for k in range(3):
            a, b = outs[id(eager)][k], outs[id(graph)][k]
            if a is None or b is None:
                continue
            assert _differ(a, b) < 0.5, (frame, k)
    eager.close()
    graph.close()


def test_a_control_change_on_one_stream_shows_next_frame_in_the_same_graph(
    make_tiny_backend: Callable[..., Any],
) -> None:
    eager, graph = _pair(make_tiny_backend)
    pixels = [_picture(*SIZES[k], seed=k) for k in range(3)]

    def frame(backend: Any, params: list[FrameParams]) -> list[np.ndarray]:
        outs = [np.zeros_like(p) for p in pixels]
        assert backend.step_many(pixels, params, out=outs) == [None] * 3
        return outs

    for backend in (eager, graph):
        frame(backend, list(LOOKS))
    captured = graph._graph
    assert captured is not None
    before = frame(graph, list(LOOKS))
    frame(eager, list(LOOKS))
    for stream in range(3):
        changed = list(LOOKS)
        changed[stream] = FrameParams(strength=0.4, blend=0.8)
        for backend in (eager, graph):
            backend.set_seed(99, stream=stream)
        after_e, after_g = frame(eager, changed), frame(graph, changed)
        assert graph._graph is captured, stream  # no re-capture
        for k in range(3):
            assert _differ(after_e[k], after_g[k]) < 0.5, (stream, k)
        assert _differ(before[stream], after_g[stream]) > 0.5, stream  # it showed at once
        before = after_g
    eager.close()
    graph.close()
