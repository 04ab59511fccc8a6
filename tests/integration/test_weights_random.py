"""The real SDXS-512 architecture with random weights: what `--weights random` gives a user.

Slow on a small CPU (~20 s: 670M parameters are initialised), so it lives here; the unit
tests check the same shapes on the meta device.
"""

from __future__ import annotations

import pytest
import torch

from livediffusion_models import get_model
from livediffusion_models.weights import load_model

pytestmark = pytest.mark.integration


def test_random_sdxs_is_the_real_architecture_and_runs() -> None:
    spec = get_model("sdxs-512-0.9")
    model = load_model(spec, "random", progress=False)

    assert sum(p.numel() for p in model.unet.parameters()) == 328_177_284
    assert sum(p.numel() for p in model.vae.encoder.parameters()) == 1_222_532
    assert sum(p.numel() for p in model.vae.decoder.parameters()) == 1_222_531
    for module in (model.unet, model.vae, model.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())

    ids = model.tokenizer(
        "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        embeddings = model.text_encoder(ids).last_hidden_state
        assert embeddings.shape == (1, 77, spec.prompt_embed_dim)
        # 128x128 pixels (16x16 latents) keeps the CPU forward pass short
        image = torch.zeros(1, 3, 128, 128)
        latents = model.vae.encode(image).latents
        assert latents.shape == (1, 4, 16, 16)
        noise = model.unet(latents, 999, encoder_hidden_states=embeddings).sample
        assert noise.shape == latents.shape
        assert torch.isfinite(noise).all()
        decoded = model.vae.decode(latents).sample
        assert decoded.shape == image.shape
