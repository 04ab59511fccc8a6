"""``--weights tiny``: each model's own classes and block layout, scaled down, fast on a CPU."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from livediffusion_models import MODELS, ModelError, get_model
from livediffusion_models.backends.base import FrameParams
from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
from livediffusion_models.weights import TINY, LoadedModel, download, load_model
from livediffusion_models.weights.fingerprint import random_fingerprint
from livediffusion_models.weights.tiny import TINY_EMBED_DIM, tiny_configs

SDXS = get_model("sdxs-512-0.9")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model(SDXS, TINY, progress=False)


@pytest.mark.parametrize("name", list(MODELS))
def test_tiny_is_the_models_own_layout_scaled_down(name: str) -> None:
    spec = get_model(name)
    shipped = spec.read_config("unet")
    small = tiny_configs(spec)["unet"]
    for key in ("down_block_types", "up_block_types", "use_linear_projection", "in_channels"):
        assert small[key] == shipped[key], key
    assert small.get("mid_block_type", "default") == shipped.get("mid_block_type", "default")
    assert len(small["block_out_channels"]) == len(shipped["block_out_channels"])
    assert max(small["block_out_channels"]) <= 128
    assert small["cross_attention_dim"] == TINY_EMBED_DIM
    vae = tiny_configs(spec)["vae"]
    assert len(vae["encoder_block_out_channels"]) == 4  # 8x down: latents as the real ones
    assert vae["latent_channels"] == spec.read_config("vae")["latent_channels"]
    text = tiny_configs(spec)["text_encoder"]
    assert text["vocab_size"] == 49408  # the real tokenizer's ids fit
    assert text["hidden_act"] == spec.read_config("text_encoder")["hidden_act"]


def test_tiny_builds_the_real_classes_ready_for_inference(tiny: LoadedModel) -> None:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(tiny.unet, UNet2DConditionModel)
    assert isinstance(tiny.vae, AutoencoderTiny)
    assert isinstance(tiny.text_encoder, CLIPTextModel)
    assert isinstance(tiny.tokenizer, CLIPTokenizer)
    for module in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert sum(p.numel() for p in tiny.unet.parameters()) < 5_000_000
    assert "tiny" in tiny.source and "nonsense" in tiny.source
    assert tiny.scheduler_config == SDXS.read_config("scheduler")
    assert tiny.tokenizer.pad_token == SDXS.pad_token

    ids = tiny.tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        hidden = tiny.text_encoder(ids.input_ids).last_hidden_state
    assert hidden.shape == (1, 77, TINY_EMBED_DIM)


def test_tiny_is_seeded_and_leaves_the_global_rng_alone(tiny: LoadedModel) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    again = load_model(SDXS, TINY, progress=False)
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(tiny.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert again.fingerprint == tiny.fingerprint

    other = load_model(SDXS, TINY, progress=False, seed=1)
    assert other.fingerprint != tiny.fingerprint
    assert any(
        not torch.equal(a, b)
        for a, b in zip(tiny.unet.parameters(), other.unet.parameters(), strict=True)
    )
    # a Core ML program converted from one is never taken for the other's
    assert tiny.fingerprint != random_fingerprint(SDXS, seed=0)


def test_tiny_needs_no_download() -> None:
    with pytest.raises(ModelError, match="tiny needs no download"):
        download(SDXS, TINY)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Ops this small gain nothing from intra-op threads, and on a busy 2-core machine two
    threads spin against each other (medians of 0.2-0.7 s instead of 35 ms were seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_one_frame_through_the_torch_backend_in_well_under_a_second(tiny: LoadedModel) -> None:
    backend = TorchBackend.from_components(tiny, TorchOptions(size=(64, 64), device="cpu"))
    try:
        backend.set_prompt(backend.encode_prompt("a test pattern"))
        backend.warmup()
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
        out = np.empty_like(pixels)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            backend.step(pixels, FrameParams(), out=out)
            times.append(time.perf_counter() - started)
    finally:
        backend.close()
    # the median, so one scheduling hiccup on a shared CI machine does not fail it
    assert sorted(times)[2] < 0.25, times
    assert out.shape == (64, 64, 4)
    assert out[..., :3].std() > 0  # a picture, not a constant


def test_a_cpu_warms_up_with_one_frame_unless_told_more(tiny: LoadedModel) -> None:
    """Eager on a CPU picks no kernels and captures no graph: one grey frame is the warm-up
    (a second cost as much as any frame after it), while ``frames=`` still wins."""
    backend = TorchBackend.from_components(tiny, TorchOptions(size=(64, 64), device="cpu"))
    steps = []
    real_step = backend.step

    def counted(pixels: Any, params: FrameParams, *, out: Any) -> None:
        steps.append(pixels.shape)
        real_step(pixels, params, out=out)

    try:
        backend.set_prompt(backend.encode_prompt("a test pattern"))
        backend.step = counted  # type: ignore[method-assign]
        backend.warmup()
        assert steps == [(64, 64, 4)]
        backend.warmup(frames=3)
        assert len(steps) == 4
    finally:
        backend.close()
