"""Registry, cache folder, offline tokenizer, error messages and the real architectures' sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from livediffusion_models import (
    DEFAULT_MODEL,
    MODELS,
    ModelError,
    UnknownModelError,
    WeightsCorruptError,
    WeightsNotFoundError,
    get_model,
)
from livediffusion_models.cache import CACHE_ENV, cache_dir, hub_cache_dir, hub_repo_dir

PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


# ------------------------------------------------------------------------------ registry


def test_default_model_is_registered_first() -> None:
    assert DEFAULT_MODEL == "sdxs-512-0.9"
    assert next(iter(MODELS)) == DEFAULT_MODEL
    assert set(MODELS) == {"sdxs-512-0.9", "sdxs-512-dreamshaper", "sd-turbo"}


def test_specs_describe_each_model() -> None:
    sdxs = get_model("sdxs-512-0.9")
    assert (sdxs.hub_id, sdxs.lineage, sdxs.pad_token) == ("IDKiro/sdxs-512-0.9", "sd2", "!")
    assert (sdxs.prompt_embed_dim, sdxs.default_strength, sdxs.default_size) == (1024, 1.0, 512)
    assert sdxs.vae_hub_id is None

    dream = get_model("sdxs-512-dreamshaper")
    assert (dream.lineage, dream.pad_token, dream.prompt_embed_dim) == ("sd1", "<|endoftext|>", 768)

    turbo = get_model("sd-turbo")
    assert (turbo.hub_id, turbo.lineage, turbo.pad_token) == ("stabilityai/sd-turbo", "sd2", "!")
    assert turbo.vae_hub_id == "madebyollin/taesd"
    assert turbo.default_strength == 0.5


def test_specs_are_frozen() -> None:
    spec = get_model(DEFAULT_MODEL)
    with pytest.raises(AttributeError):
        spec.hub_id = "someone/else"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_ships_a_full_config_set(name: str) -> None:
    spec = get_model(name)
    unet = spec.read_config("unet")
    assert unet["cross_attention_dim"] == spec.prompt_embed_dim
    assert spec.read_config("vae")["_class_name"] == "AutoencoderTiny"
    assert spec.read_config("text_encoder")["hidden_size"] == spec.prompt_embed_dim
    assert spec.read_config("scheduler")["timestep_spacing"] == "trailing"
    # a fresh copy each time: callers may edit it
    unet["cross_attention_dim"] = -1
    assert spec.read_config("unet")["cross_attention_dim"] == spec.prompt_embed_dim


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError) as caught:
        get_model("sdxs-1024")
    message = str(caught.value)
    assert "sdxs-1024" in message
    for name in MODELS:
        assert name in message
    assert isinstance(caught.value, ModelError)
    assert isinstance(caught.value, KeyError)


def test_package_import_is_cheap() -> None:
    """The CLI lists models through these modules; they must not pull in torch & co."""
    code = (
        "import sys, livediffusion_models, livediffusion_models.registry, "
        "livediffusion_models.cache, livediffusion_models.errors; "
        "heavy = {'torch', 'diffusers', 'transformers', 'huggingface_hub', 'livediffusion', "
        "'livediffusion_bridge'} & set(sys.modules); "
        "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


# ------------------------------------------------------------------------------ cache folder


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    default = cache_dir()
    assert "livediffusion" in str(default)
    assert "site-packages" not in str(default)

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert cache_dir() == tmp_path / "from-env"
    assert cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert hub_cache_dir() == tmp_path / "from-env" / "hub"
    assert hub_repo_dir("IDKiro/sdxs-512-0.9") == (
        tmp_path / "from-env" / "hub" / "models--IDKiro--sdxs-512-0.9"
    )
    assert not (tmp_path / "from-env").exists()  # asking must not create it


# ------------------------------------------------------------------------------ tokenizer


def test_offline_tokenizer_gives_the_standard_clip_ids() -> None:
    from livediffusion_models.tokenizer import VOCAB_SIZE, build_offline_tokenizer

    tokenizer = build_offline_tokenizer(pad_token="!")
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer("a photo of a cat").input_ids == PROMPT_IDS
    assert tokenizer("A  Photo of a CAT").input_ids == PROMPT_IDS  # lower-cased, spaces folded
    assert tokenizer.model_max_length == 77


@pytest.mark.parametrize(("pad_token", "pad_id"), [("!", 0), ("<|endoftext|>", 49407)])
def test_offline_tokenizer_pads_to_77_with_the_lineage_pad(pad_token: str, pad_id: int) -> None:
    from livediffusion_models.tokenizer import build_offline_tokenizer

    tokenizer = build_offline_tokenizer(pad_token=pad_token)
    ids = tokenizer(
        "a photo of a cat", padding="max_length", max_length=77, truncation=True
    ).input_ids
    assert len(ids) == 77
    assert ids[:7] == PROMPT_IDS
    assert ids[7:] == [pad_id] * 70
    assert tokenizer.pad_token_id == pad_id
    long = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77
    assert long[-1] == 49407


def test_offline_tokenizer_refuses_an_unknown_pad_token() -> None:
    from livediffusion_models.tokenizer import build_offline_tokenizer

    with pytest.raises(ValueError, match="pad token"):
        build_offline_tokenizer(pad_token="<pad>")


# ------------------------------------------------------------------------------ errors


def test_weights_not_found_says_what_where_and_how() -> None:
    error = WeightsNotFoundError(
        "hub repo IDKiro/sdxs-512-0.9 (unet/ weights)",
        looked_in=[Path("/cache/hub/models--IDKiro--sdxs-512-0.9"), "/other/place"],
        fix="run `livediffusion download --model sdxs-512-0.9`",
        reason="offline",
    )
    message = str(error)
    for part in (
        "IDKiro/sdxs-512-0.9",
        "/cache/hub/models--IDKiro--sdxs-512-0.9",
        "/other/place",
        "livediffusion download --model sdxs-512-0.9",
        "offline",
    ):
        assert part in message
    assert isinstance(error, ModelError)


def test_weights_corrupt_names_the_file_and_the_fix() -> None:
    error = WeightsCorruptError(
        "/cache/x/unet/diffusion_pytorch_model.safetensors", fix="delete the cache folder /cache/x"
    )
    assert "/cache/x/unet/diffusion_pytorch_model.safetensors" in str(error)
    assert "delete the cache folder /cache/x" in str(error)
    assert isinstance(error, ModelError)


def test_download_command_matches_the_cli() -> None:
    from livediffusion_models.weights import download_command

    spec = get_model("sd-turbo")
    assert download_command(spec) == "livediffusion download --model sd-turbo"
    assert download_command(spec, weights="stabilityai/sd-turbo") == (
        "livediffusion download --model sd-turbo"
    )
    assert download_command(spec, weights="me/my turbo", cache_dir="/c") == (
        "livediffusion download --model sd-turbo --weights 'me/my turbo' --cache-dir /c"
    )


# ------------------------------------------------------------------------------ architectures


def _count(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "unet_params", "text_params"),
    [
        ("sdxs-512-0.9", 328_177_284, 340_387_840),
        ("sd-turbo", 865_910_724, 340_387_840),
        ("sdxs-512-dreamshaper", 315_746_244, 123_060_480),
    ],
)
def test_shipped_configs_build_the_real_architectures(
    name: str, unet_params: int, text_params: int
) -> None:
    """On the meta device: the exact shapes, no memory, well under a second."""
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from livediffusion_models.weights import _build_text_encoder

    spec = get_model(name)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(spec.read_config("unet"))
        vae = AutoencoderTiny.from_config(spec.read_config("vae"))
        text_encoder = _build_text_encoder(spec.read_config("text_encoder"))
    assert _count(unet) == unet_params
    assert _count(vae.encoder) == 1_222_532
    assert _count(vae.decoder) == 1_222_531
    assert _count(text_encoder) == text_params
    assert unet.mid_block is None or name == "sd-turbo"
