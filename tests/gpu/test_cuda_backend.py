"""The torch backend on a CUDA GPU: same pictures as the CPU, and the real architecture runs.

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


def _picture(height: int, width: int) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(make_tiny_backend: Callable[..., Any], dtype: torch.dtype) -> None:
    picture = _picture(72, 96)
    outputs = []
    for device, dt in (("cpu", torch.float32), ("cuda", dtype)):
        backend = make_tiny_backend(device=device, dtype=dt)
        backend.set_prompt(backend.encode_prompt("a test prompt"))
        out = np.empty_like(picture)
        for _ in range(3):  # temporal state too
            backend.step(picture, FrameParams(strength=0.8, feedback=0.3, smoothing=0.3), out=out)
        outputs.append(out.astype(int))
        backend.close()
    tolerance = 1.0 if dtype == torch.float32 else 4.0
    assert np.abs(outputs[0] - outputs[1]).mean() < tolerance


def test_prompt_morph_on_cuda_matches_cpu(make_tiny_backend: Callable[..., Any]) -> None:
    """The A/B morph is an in-place lerp of device buffers: the same on the GPU as the CPU."""
    picture = _picture(72, 96)
    outputs = []
    for device in ("cpu", "cuda"):
        backend = make_tiny_backend(device=device, dtype=torch.float32)
        backend.set_prompt(backend.encode_prompt("a test prompt"))
        backend.set_prompt(backend.encode_prompt("a completely different prompt"), slot="b")
        out = np.empty_like(picture)
        frames = []
        for morph in (0.0, 0.5, 1.0):
            backend.step(picture, FrameParams(strength=0.8, morph=morph), out=out)
            frames.append(out.astype(int))
        outputs.append(frames)
        backend.close()
    for cpu, cuda in zip(*outputs, strict=True):
        assert np.abs(cpu - cuda).mean() < 1.0
    assert np.abs(outputs[1][0] - outputs[1][2]).mean() > 0.1  # the morph changed something


def test_real_sdxs_architecture_runs_in_float16() -> None:
    from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    model = load_model(get_model("sdxs-512-0.9"), "random", progress=False)
    backend = TorchBackend.from_components(
        model, TorchOptions(size=(512, 512), device="cuda", dtype=torch.float16)
    )
    backend.set_prompt(backend.encode_prompt("neon jellyfish"))
    picture = _picture(720, 1280)
    out = np.zeros_like(picture)
    backend.step(picture, FrameParams(), out=out)
    assert out.shape == (720, 1280, 4)
    assert np.all(out[..., 3] == 255)
    assert out[..., :3].std() > 0  # a picture, not a constant (NaNs would give zeros)
    backend.close()
