"""Crop/letterbox geometry, the RGBA <-> model tensor conversions, and strength -> timestep."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import torch

from livediffusion_models.imaging import Box, plan_geometry, to_model, to_pixels
from livediffusion_models.schedule import NoiseSchedule, strength_to_timestep


def test_crop_takes_the_centre_and_fills_the_model_square() -> None:
    g = plan_geometry((1080, 1920), (512, 512), fit="crop")
    assert g.input_crop == Box(0, 420, 1080, 1080)
    assert g.model_content == Box(0, 0, 512, 512)
    # Output at the input's 16:9: the square is cut to 16:9 around its centre.
    assert g.output_crop == Box(112, 0, 288, 512)


def test_letterbox_pads_and_cuts_the_padding_away_again() -> None:
    g = plan_geometry((1080, 1920), (512, 512), fit="letterbox")
    assert g.input_crop == Box(0, 0, 1080, 1920)
    assert g.model_content == Box(112, 0, 288, 512)
    assert g.output_crop == g.model_content


def test_unknown_fit_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="fit"):
        plan_geometry((10, 10), (8, 8), fit="stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        plan_geometry((0, 10), (8, 8))


def test_letterbox_round_trip_preserves_the_picture() -> None:
    rng = np.random.default_rng(0)
    # A smooth picture (resampling must not matter much), 2:1.
    y, x = np.mgrid[0:64, 0:128]
    pixels = np.zeros((64, 128, 4), np.uint8)
    pixels[..., 0] = x * 2
    pixels[..., 1] = y * 4
    pixels[..., 2] = rng.integers(100, 110, size=(64, 128))
    g = plan_geometry((64, 128), (128, 128), fit="letterbox")
    image = torch.empty(1, 3, 128, 128)
    to_model(torch.from_numpy(pixels), g, out=image)
    assert image.min() >= -1 and image.max() <= 1
    assert torch.all(image[:, :, :32] == -1)  # black padding above the picture
    out = torch.empty(64, 128, 4, dtype=torch.uint8)
    to_pixels(image, g, out=out)
    diff = np.abs(out.numpy()[..., :3].astype(int) - pixels[..., :3].astype(int))
    assert diff.mean() < 2.0
    assert np.all(out.numpy()[..., 3] == 255)


def test_crop_output_at_another_size() -> None:
    pixels = np.full((90, 160, 4), 200, np.uint8)
    g = plan_geometry((90, 160), (64, 64), output_size=(30, 40), fit="crop")
    image = torch.empty(1, 3, 64, 64)
    to_model(torch.from_numpy(pixels), g, out=image)
    out = torch.empty(30, 40, 4, dtype=torch.uint8)
    to_pixels(image, g, out=out)
    assert np.all(np.abs(out.numpy()[..., :3].astype(int) - 200) <= 1)


@pytest.mark.parametrize(
    ("strength", "timestep"),
    [(1.0, 999), (0.5, 499), (0.25, 249), (0.0, 0), (0.0004, 0), (2.0, 999), (-3.0, 0)],
)
def test_strength_maps_into_range(strength: float, timestep: int) -> None:
    assert strength_to_timestep(strength) == timestep


def test_strength_nan_is_rejected() -> None:
    with pytest.raises(ValueError):
        strength_to_timestep(float("nan"))


def test_schedule_matches_diffusers_alphas() -> None:
    from diffusers import EulerDiscreteScheduler

    path = resources.files("livediffusion_models") / "configs/sdxs-512-0.9/scheduler"
    config = json.loads((path / "scheduler_config.json").read_text())
    ours = NoiseSchedule.from_scheduler_config(config)
    theirs = EulerDiscreteScheduler.from_config(config).alphas_cumprod
    assert ours.num_train_timesteps == 1000
    np.testing.assert_allclose(np.array(ours.alphas_cumprod), theirs.numpy(), rtol=1e-6)
    level = ours.at_strength(1.0)
    assert level.timestep == 999
    assert level.sqrt_alpha == pytest.approx(0.068, abs=0.001)  # FACTS.md: sqrt(alpha_bar) at 999
    assert level.sqrt_alpha**2 + level.sqrt_one_minus_alpha**2 == pytest.approx(1.0)
