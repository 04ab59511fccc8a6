"""ControlNet in the frame step: edges made on the device, residuals scaled by a live column.

The reference is diffusers' ``StableDiffusionControlNetImg2ImgPipeline`` on the same tiny
modules (one Euler step at strength 1, guidance 0, the same condition picture).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from livediffusion_models.backends.base import FrameParams
from livediffusion_models.condition import EdgeCondition, condition_for
from livediffusion_models.controlnet import controlnet_from_unet, load_controlnet
from livediffusion_models.errors import ControlNetMismatchError
from livediffusion_models.registry import CONTROLNETS, controlnets_for, get_model
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, Control, FrameStep
from tinymodel import TINY_EMBED_DIM, TINY_SIZE, make_tiny_modules

LATENT = (1, 4, TINY_SIZE // 8, TINY_SIZE // 8)


def _scheduler_config() -> dict[str, object]:
    path = resources.files("livediffusion_models") / "configs/sdxs-512-0.9/scheduler"
    return dict(json.loads((path / "scheduler_config.json").read_text()))


def _controls(scale: float) -> torch.Tensor:
    level = NoiseSchedule.from_scheduler_config(_scheduler_config()).at_strength(1.0)
    controls = torch.zeros(NUM_CONTROLS)
    controls[Control.TIMESTEP] = level.timestep
    controls[Control.SQRT_ALPHA] = level.sqrt_alpha
    controls[Control.SQRT_ONE_MINUS_ALPHA] = level.sqrt_one_minus_alpha
    controls[Control.PROMPT_MIX] = 1.0
    controls[Control.NOISE_TO] = 1.0
    controls[Control.CONTROLNET_SCALE] = scale
    return controls


def _square(size: int = 32, *, top: int = 8, left: int = 10, height: int = 12, width: int = 14):
    image = -torch.ones(1, 3, size, size)
    image[..., top : top + height, left : left + width] = 1.0
    ring = torch.zeros(size, size)
    ring[top : top + height, left : left + width] = 1.0
    ring[top + 1 : top + height - 1, left + 1 : left + width - 1] = 0.0
    return image, ring


@pytest.fixture(scope="module")
def tiny() -> Any:
    return make_tiny_modules(seed=5)


@pytest.fixture(scope="module")
def controlnet(tiny: Any) -> Any:
    return controlnet_from_unet(tiny.unet, seed=1)


# -- the condition ---------------------------------------------------------------------------


def test_canny_edges_of_a_white_square_are_exactly_its_border() -> None:
    image, ring = _square()
    edges = EdgeCondition("canny").edges(image)[0, 0]
    assert torch.equal(edges, ring)
    # and it moves with the square: not a fixed pattern
    shifted, ring_shifted = _square(top=3, left=4, height=20, width=9)
    assert torch.equal(EdgeCondition("canny").edges(shifted)[0, 0], ring_shifted)


def test_flat_pictures_and_soft_gradients_have_no_edges() -> None:
    flat = torch.full((1, 3, 32, 32), 0.3)
    ramp = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32) * 0.2  # gradient below `low`
    for picture in (flat, ramp):
        assert EdgeCondition("canny").edges(picture).sum() == 0


def test_canny_is_white_on_black_and_sketch_dark_strokes_on_white() -> None:
    image, ring = _square()
    canny = EdgeCondition("canny")(image)
    assert canny.shape == (1, 3, 32, 32)
    assert torch.equal(canny[0, 1], ring) and torch.equal(canny[0, 0], canny[0, 2])
    sketch = EdgeCondition("sketch", stroke=3)(image)[0, 0]
    grown = torch.nn.functional.max_pool2d(ring[None, None], 3, stride=1, padding=1)[0, 0]
    assert torch.equal(sketch, 1 - grown)
    assert sketch[0, 0] == 1.0  # the background is white paper


def test_each_stream_gets_the_edges_of_its_own_picture() -> None:
    a, ring_a = _square()
    b, ring_b = _square(top=2, left=2, height=6, width=6)
    both = EdgeCondition("canny").edges(torch.cat([a, b]))
    assert torch.equal(both[0, 0], ring_a) and torch.equal(both[1, 0], ring_b)


def test_sketch_strokes_scale_with_the_model_size() -> None:
    assert condition_for("sketch", (512, 512)).stroke == 3
    assert condition_for("sketch", (1024, 576)).stroke == 3
    assert condition_for("sketch", (1024, 1024)).stroke == 7
    assert condition_for("sketch", (64, 64)).stroke == 1


# -- the frame step --------------------------------------------------------------------------


def _step_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + seed)
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=gen)  # [0, 1]
    image[..., 16:48, 20:44] = 1.0  # a hard-edged shape, so the condition has edges
    embeds = torch.randn(1, 77, TINY_EMBED_DIM, generator=gen)
    noise = torch.randn(*LATENT, generator=torch.Generator().manual_seed(seed))
    return image, embeds, noise


def _run(step: FrameStep, image: torch.Tensor, embeds: torch.Tensor, noise: torch.Tensor, scale):
    with torch.no_grad():
        output, _, _ = step(
            image * 2 - 1,
            torch.zeros_like(noise),
            noise,
            embeds,
            embeds,
            torch.zeros_like(noise),
            torch.zeros(1, 3, TINY_SIZE, TINY_SIZE),
            _controls(scale),
        )
    return output


@pytest.mark.parametrize(("seed", "scale"), [(0, 1.0), (3, 0.6)])
def test_the_frame_equals_diffusers_controlnet_img2img(
    tiny: Any, controlnet: Any, seed: int, scale: float
) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionControlNetImg2ImgPipeline

    pipe = StableDiffusionControlNetImg2ImgPipeline(
        vae=tiny.vae,
        text_encoder=tiny.text_encoder,
        tokenizer=None,
        unet=tiny.unet,
        controlnet=controlnet,
        scheduler=EulerDiscreteScheduler.from_config(_scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    image, embeds, noise = _step_inputs(seed)
    condition = EdgeCondition("canny")
    with torch.no_grad():
        control_image = condition(image * 2 - 1)  # the same condition picture, [0, 1]
        assert control_image.sum() > 0
        expected = pipe(
            prompt_embeds=embeds,
            image=image,
            control_image=control_image,
            strength=1.0,
            num_inference_steps=1,
            guidance_scale=0.0,
            controlnet_conditioning_scale=scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images
    step = FrameStep(tiny.unet, tiny.vae, controlnet, condition)
    ours = (_run(step, image, embeds, noise, scale) / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    plain = (_run(FrameStep(tiny.unet, tiny.vae), image, embeds, noise, 0.0) / 2 + 0.5).clamp(0, 1)
    assert (ours - plain).abs().max() > 1e-3  # the ControlNet does steer this frame


def test_scale_zero_is_exactly_no_controlnet(tiny: Any, controlnet: Any) -> None:
    image, embeds, noise = _step_inputs(1)
    with_controlnet = FrameStep(tiny.unet, tiny.vae, controlnet, EdgeCondition("sketch"))
    without = FrameStep(tiny.unet, tiny.vae)
    assert torch.equal(
        _run(with_controlnet, image, embeds, noise, 0.0), _run(without, image, embeds, noise, 0.0)
    )
    assert not torch.equal(
        _run(with_controlnet, image, embeds, noise, 0.5), _run(without, image, embeds, noise, 0.5)
    )


def test_each_stream_has_its_own_scale(tiny: Any, controlnet: Any) -> None:
    image, embeds, noise = _step_inputs(2)
    step = FrameStep(tiny.unet, tiny.vae, controlnet)
    single = {s: _run(step, image, embeds, noise, s) for s in (0.0, 0.9)}
    two = lambda t: torch.cat([t, t])  # noqa: E731
    controls = torch.stack([_controls(0.0), _controls(0.9)])
    with torch.no_grad():
        batch, _, _ = step(
            two(image * 2 - 1),
            two(torch.zeros_like(noise)),
            two(noise),
            two(embeds),
            two(embeds),
            two(torch.zeros_like(noise)),
            torch.zeros(2, 3, TINY_SIZE, TINY_SIZE),
            controls,
        )
    torch.testing.assert_close(batch[0:1], single[0.0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[1:2], single[0.9], atol=1e-5, rtol=1e-5)


# -- loading ---------------------------------------------------------------------------------


def test_a_controlnet_folder_loads_and_is_checked_against_the_unet(
    tiny: Any, controlnet: Any, tmp_path: Path
) -> None:
    controlnet.save_pretrained(tmp_path / "cn")
    spec = get_model("sdxs-512-0.9")
    loaded = load_controlnet(str(tmp_path / "cn"), spec=spec, unet=tiny.unet, progress=False)
    assert loaded.condition == "canny" and len(loaded.fingerprint) == 16
    for name, value in controlnet.state_dict().items():
        assert torch.equal(loaded.controlnet.state_dict()[name], value), name
    sketch = load_controlnet(
        str(tmp_path / "cn"), spec=spec, unet=tiny.unet, condition="sketch", progress=False
    )
    assert sketch.condition == "sketch" and sketch.fingerprint == loaded.fingerprint


def test_a_controlnet_for_another_base_is_one_line_naming_both(tiny: Any, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in tiny.unet.config.items() if not k.startswith("_")}
    other = UNet2DConditionModel.from_config({**config, "cross_attention_dim": 768})
    controlnet_from_unet(other).save_pretrained(tmp_path / "sd1")
    with pytest.raises(ControlNetMismatchError) as error:
        load_controlnet(
            str(tmp_path / "sd1"), spec=get_model("sdxs-512-0.9"), unet=tiny.unet, progress=False
        )
    text = str(error.value)
    assert "\n" not in text and "SD 1.x (768-wide" in text and "32-wide" in text

    wider = UNet2DConditionModel.from_config({**config, "block_out_channels": [32, 96]})
    controlnet_from_unet(wider).save_pretrained(tmp_path / "wide")
    with pytest.raises(ControlNetMismatchError, match="other blocks"):
        load_controlnet(
            str(tmp_path / "wide"), spec=get_model("sdxs-512-0.9"), unet=tiny.unet, progress=False
        )


def test_registry_controlnets_name_the_models_they_fit(tiny: Any) -> None:
    assert [c.name for c in controlnets_for("sdxs-512-dreamshaper")] == ["sdxs-sketch"]
    assert CONTROLNETS["sdxs-sketch"].condition == "sketch"
    assert [c.name for c in controlnets_for("sd-turbo")] == ["sd21-canny"]
    assert controlnets_for("sdxs-512-0.9") == ()
    with pytest.raises(ControlNetMismatchError, match="made for sdxs-512-dreamshaper"):
        load_controlnet("sdxs-sketch", spec=get_model("sdxs-512-0.9"), unet=tiny.unet)


# -- through the torch backend ---------------------------------------------------------------


def _frames(backend: Any, params: FrameParams) -> np.ndarray:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (64, 64, 4), dtype=np.uint8)
    pixels[16:48, 20:44] = 255
    out = np.zeros_like(pixels)
    backend.step(pixels, params, out=out)
    backend.reset()
    return out


def test_the_torch_backend_runs_the_controlnet_with_a_live_scale(tiny_folder: Path) -> None:
    from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
    from livediffusion_models.weights import load_model

    spec = get_model("sdxs-512-0.9")

    def backend(with_controlnet: bool) -> TorchBackend:
        model = load_model(spec, str(tiny_folder), progress=False)
        control = load_controlnet("tiny", spec=spec, unet=model.unet) if with_controlnet else None
        built = TorchBackend.from_components(model, TorchOptions(size=(64, 64), controlnet=control))
        built.set_prompt(built.encode_prompt("a lighthouse"))
        return built

    plain, steered = backend(False), backend(True)
    off = FrameParams(controlnet_scale=0.0)
    assert (_frames(steered, off) == _frames(plain, off)).all()
    assert (_frames(steered, FrameParams(controlnet_scale=1.5)) != _frames(plain, off)).any()
    steered.inputs.update_controls(FrameParams(controlnet_scale=7.0))
    assert float(steered.inputs.controls[Control.CONTROLNET_SCALE]) == 2.0  # clamped
    steered.inputs.update_controls(FrameParams(controlnet_scale=float("nan")))
    assert float(steered.inputs.controls[Control.CONTROLNET_SCALE]) == 0.0


def test_a_hub_controlnet_loads_from_the_cache_offline_and_says_how_to_fetch_it(
    tiny: Any, controlnet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livediffusion_models.errors import WeightsNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_model("sd-turbo")
    with pytest.raises(WeightsNotFoundError) as error:
        load_controlnet("sd21-canny", spec=spec, unet=tiny.unet, cache_dir=tmp_path)
    assert "livediffusion download --controlnet thibaud/controlnet-sd21-canny-diffusers" in str(
        error.value
    )
    repo = tmp_path / "hub" / "models--thibaud--controlnet-sd21-canny-diffusers"
    controlnet.save_pretrained(repo / "snapshots" / "c0ffee")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    loaded = load_controlnet(
        "sd21-canny", spec=spec, unet=tiny.unet, cache_dir=tmp_path, progress=False
    )
    assert loaded.condition == "canny" and loaded.default_scale == 0.5


_FINGERPRINT = """
import sys
sys.path[:0] = sys.argv[1:]
from livediffusion_models.controlnet import load_controlnet
from livediffusion_models.registry import get_model
from tinymodel import make_tiny_modules
unet = make_tiny_modules().unet
print(load_controlnet("tiny", spec=get_model("sdxs-512-0.9"), unet=unet).fingerprint)
"""


@pytest.mark.integration
def test_a_random_controlnet_has_one_fingerprint_in_every_process() -> None:
    """Its fingerprint is in the Core ML cache key: when it changed from process to process
    (diffusers keeps a list made from a set in the config), ``convert --controlnet tiny`` was
    never found again by the next ``serve``, which converted once more."""
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve().parents[1]
    paths = [str(here), *(str(here.parent / p) for p in ("models", "bridge", "plugin"))]
    prints = {
        subprocess.run(
            [sys.executable, "-c", _FINGERPRINT, *paths],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        for seed in ("1", "2")  # string hashing, which orders sets, seeded two ways
    }
    assert len(prints) == 1 and len(next(iter(prints))) == 16, prints
