"""TAESD's convolution + ReLU pairs fused into one cuDNN call: the same picture, fewer passes."""

from __future__ import annotations

import copy

import torch

from livediffusion_models.backends.cuda_graph import FusedConvReLU, fuse_conv_relu
from tinymodel import make_tiny_modules


def test_every_conv_relu_pair_of_taesd_is_fused_and_the_output_is_unchanged() -> None:
    vae = make_tiny_modules().vae
    fused = copy.deepcopy(vae)
    pairs = sum(
        1
        for seq in vae.modules()
        if isinstance(seq, torch.nn.Sequential)
        for a, b in zip(list(seq), list(seq)[1:], strict=False)
        if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.ReLU)
    )
    assert pairs > 10  # the encoder's and decoder's blocks
    assert fuse_conv_relu(fused) == pairs
    assert sum(isinstance(m, FusedConvReLU) for m in fused.modules()) == pairs
    assert not any(
        isinstance(b, torch.nn.ReLU) and isinstance(a, FusedConvReLU)
        for seq in fused.modules()
        if isinstance(seq, torch.nn.Sequential)
        for a, b in zip(list(seq), list(seq)[1:], strict=False)
    )
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        latents = vae.encode(image).latents
        assert torch.equal(fused.encode(image).latents, latents)
        assert torch.equal(fused.decode(latents).sample, vae.decode(latents).sample)
    assert fuse_conv_relu(fused) == 0  # a second pass finds nothing left to fuse
