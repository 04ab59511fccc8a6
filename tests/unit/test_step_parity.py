"""The frame step equals diffusers' img2img (1 Euler step, strength 1, no guidance)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np
import pytest
import torch

from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, Control, FrameStep
from tinymodel import TINY_SIZE, make_tiny_modules


def _scheduler_config() -> dict[str, object]:
    path = resources.files("livediffusion_models") / "configs/sdxs-512-0.9/scheduler"
    return dict(json.loads((path / "scheduler_config.json").read_text()))


def _controls(strength: float, **values: float) -> torch.Tensor:
    level = NoiseSchedule.from_scheduler_config(_scheduler_config()).at_strength(strength)
    controls = torch.zeros(NUM_CONTROLS)
    controls[Control.TIMESTEP] = level.timestep
    controls[Control.SQRT_ALPHA] = level.sqrt_alpha
    controls[Control.SQRT_ONE_MINUS_ALPHA] = level.sqrt_one_minus_alpha
    controls[Control.PROMPT_MIX] = 1.0
    controls[Control.NOISE_TO] = 1.0
    for name, value in values.items():
        controls[Control[name.upper()]] = value
    return controls


@pytest.mark.parametrize("seed", [0, 7])
def test_one_frame_matches_diffusers_img2img(seed: int) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

    tiny = make_tiny_modules(seed=3)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=None,
        unet=tiny.unet,
        scheduler=EulerDiscreteScheduler.from_config(_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    gen = torch.Generator().manual_seed(100 + seed)
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen)  # [0, 1], as the pipeline takes
    embeds = torch.randn(1, 77, 32, generator=gen)

    with torch.no_grad():
        expected = pipe(
            prompt_embeds=embeds,
            image=image,
            strength=1.0,
            num_inference_steps=1,
            guidance_scale=0.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images

        noise = torch.randn(
            1, 4, TINY_SIZE // 8, TINY_SIZE // 8, generator=torch.Generator().manual_seed(seed)
        )
        step = FrameStep(tiny.unet, tiny.vae)
        zeros_latent = torch.zeros_like(noise)
        output, _, smoothed = step(
            image * 2 - 1,
            torch.zeros_like(noise),
            noise,
            embeds,
            embeds,
            zeros_latent,
            torch.zeros(1, 3, TINY_SIZE, TINY_SIZE),
            _controls(1.0),
        )
    ours = (output / 2 + 0.5).clamp(0, 1)
    assert expected.shape == ours.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # The step must actually depend on the model, not pass the picture through.
    assert (ours - image).abs().mean() > 0.05
    assert torch.equal(output, smoothed)  # blend 0


def test_feedback_smoothing_and_blend_mix_as_documented() -> None:
    tiny = make_tiny_modules(seed=1)
    step = FrameStep(tiny.unet, tiny.vae)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen) * 2 - 1
    noise = torch.randn(1, 4, 8, 8, generator=gen)
    embeds = torch.randn(1, 77, 32, generator=gen)
    prev_x0 = torch.randn(1, 4, 8, 8, generator=gen)
    prev_out = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen) * 2 - 1

    def run(**values: float) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return tuple(
                step(
                    image, noise, noise, embeds, embeds, prev_x0, prev_out, _controls(1.0, **values)
                )
            )

    plain = run()
    # smoothing 1 holds the previous output; blend 1 shows the input.
    torch.testing.assert_close(run(smoothing=1.0)[0], prev_out)
    torch.testing.assert_close(run(blend=1.0)[0], image)
    half = run(smoothing=0.5)[0]
    torch.testing.assert_close(half, (plain[0] + prev_out) / 2, atol=1e-5, rtol=1e-5)
    # feedback changes what the UNet sees, hence x0.
    assert not torch.allclose(run(feedback=0.5)[1], plain[1])


def test_prompt_and_noise_glides_interpolate() -> None:
    tiny = make_tiny_modules(seed=2)
    step = FrameStep(tiny.unet, tiny.vae)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen) * 2 - 1
    n1, n2 = torch.randn(2, 1, 4, 8, 8, generator=gen)
    e1, e2 = torch.randn(2, 1, 77, 32, generator=gen)
    zeros = torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, TINY_SIZE, TINY_SIZE)

    def out(
        nf: torch.Tensor, nt: torch.Tensor, ef: torch.Tensor, et: torch.Tensor, **c: float
    ) -> np.ndarray:
        # x0 rather than the picture: the tiny decoder saturates, its latents do not.
        with torch.no_grad():
            return step(image, nf, nt, ef, et, *zeros, _controls(1.0, **c))[1].numpy()

    # prompt_mix 0 shows the old embedding, 1 the new one, and both differ.
    np.testing.assert_allclose(
        out(n1, n1, e1, e2, prompt_mix=0.0), out(n1, n1, e1, e1), atol=1e-4, rtol=1e-4
    )
    np.testing.assert_allclose(
        out(n1, n1, e1, e2, prompt_mix=1.0), out(n1, n1, e2, e2), atol=1e-4, rtol=1e-4
    )
    assert np.abs(out(n1, n1, e1, e1) - out(n1, n1, e2, e2)).mean() > 1e-2
    # noise weights (cos, sin) = (1, 0) use the old noise only.
    np.testing.assert_allclose(
        out(n1, n2, e1, e1, noise_from=1.0, noise_to=0.0), out(n2, n1, e1, e1), atol=1e-4, rtol=1e-4
    )


def test_backend_glides_start_from_what_was_showing(make_tiny_backend: Any) -> None:
    backend = make_tiny_backend()
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(1, 77, 32, generator=gen) for _ in range(3))
    backend.set_prompt(a)  # the first prompt is set outright
    torch.testing.assert_close(backend.inputs.embeds_from, a)
    torch.testing.assert_close(backend.inputs.embeds_to, a)
    backend.set_prompt(b, from_mix=1.0)
    torch.testing.assert_close(backend.inputs.embeds_from, a)
    torch.testing.assert_close(backend.inputs.embeds_to, b)
    backend.set_prompt(c, from_mix=0.5)  # interrupted halfway: start from the mixture
    torch.testing.assert_close(backend.inputs.embeds_from, (a + b) / 2)
    torch.testing.assert_close(backend.inputs.embeds_to, c)

    settled = backend.inputs.noise_to.clone()
    backend.set_seed(5, from_mix=1.0)
    torch.testing.assert_close(backend.inputs.noise_from, settled)
    assert not torch.allclose(backend.inputs.noise_to, settled)
    # Same seed, same noise: a seed is a reproducible look.
    again = make_tiny_backend(seed=5)
    torch.testing.assert_close(again.inputs.noise_to, backend.inputs.noise_to)
