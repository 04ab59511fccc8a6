"""Weights loading: local folders, the hub cache (offline), damaged files, random builds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from livediffusion_models import (
    ModelError,
    WeightsCorruptError,
    WeightsNotFoundError,
    get_model,
)
from livediffusion_models.registry import ModelSpec
from livediffusion_models.weights import LoadedModel, download, download_command, load_model
from tinymodel import TINY_EMBED_DIM, TINY_SIZE, TinyModules, make_tiny_modules, save_tiny_folder

SDXS = get_model("sdxs-512-0.9")
TURBO = get_model("sd-turbo")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_folder(tmp_path_factory.mktemp("tiny-source"))


@pytest.fixture(scope="module")
def reference() -> TinyModules:
    return make_tiny_modules(seed=0)


@pytest.fixture
def tiny(tiny_source: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may damage or remove parts of it."""
    return Path(shutil.copytree(tiny_source, tmp_path / "tiny"))


@pytest.fixture(autouse=True)
def isolated_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Our cache and huggingface_hub's default one both empty and private; never the network."""
    from huggingface_hub import constants

    monkeypatch.setenv("LIVEDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-default"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tmp_path / "cache"


def _fake_hub_snapshot(cache: Path, repo_id: str, content: Path | None = None) -> Path:
    """Lay ``content`` out the way huggingface_hub caches ``repo_id`` at ``main``."""
    repo_dir = cache / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snapshot = repo_dir / "snapshots" / COMMIT
    if content is None:
        snapshot.mkdir(parents=True)
    else:
        shutil.copytree(content, snapshot)
    return snapshot


def _commands(message: str) -> list[str]:
    """The commands a message suggests (written between backticks)."""
    return re.findall(r"`([^`]+)`", message)


def _outputs(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, TINY_SIZE // 8, TINY_SIZE // 8, generator=generator)
    image = torch.rand(1, 3, TINY_SIZE, TINY_SIZE, generator=generator) * 2 - 1
    ids = tokenizer(
        "a photo of a cat", padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        embeddings = text_encoder(ids).last_hidden_state
        noise = unet(latents, 999, encoder_hidden_states=embeddings).sample
        decoded = vae.decode(vae.encode(image).latents).sample
    return [embeddings, noise, decoded]


def _assert_same_as_reference(model: LoadedModel, reference: TinyModules) -> None:
    got = _outputs(model.unet, model.vae, model.text_encoder, model.tokenizer)
    want = _outputs(reference.unet, reference.vae, reference.text_encoder, model.tokenizer)
    for a, b in zip(got, want, strict=True):
        # same weights; conv algorithms may differ in the last bit with loaded (mmapped) tensors
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _assert_inference_ready(model: LoadedModel, dtype: torch.dtype = torch.float32) -> None:
    for module in (model.unet, model.vae, model.text_encoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
        assert all(p.dtype == dtype for p in module.parameters())


# ------------------------------------------------------------------------------ local folders


def test_local_folder_round_trips(tiny_source: Path, reference: TinyModules) -> None:
    model = load_model(SDXS, str(tiny_source), progress=False)
    _assert_same_as_reference(model, reference)
    _assert_inference_ready(model)
    assert model.spec is SDXS
    assert model.unet.config.cross_attention_dim == TINY_EMBED_DIM  # its config, not ours
    assert model.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert model.tokenizer.pad_token_id == 0
    assert str(tiny_source) in model.source


def test_local_folder_in_half_precision(tiny_source: Path) -> None:
    model = load_model(SDXS, str(tiny_source), progress=False, torch_dtype=torch.float16)
    _assert_inference_ready(model, torch.float16)


def test_fp16_variant_files_are_found(tmp_path: Path, reference: TinyModules) -> None:
    folder = save_tiny_folder(tmp_path / "fp16", variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    _assert_same_as_reference(load_model(SDXS, str(folder), progress=False), reference)


@pytest.mark.usefixtures("tiny_shipped_configs")
def test_missing_configs_fall_back_to_the_shipped_ones(tiny: Path, reference: TinyModules) -> None:
    # (a vae/ without config.json can't be told from an AutoencoderKL: TAESD would replace it)
    for component in ("unet", "text_encoder"):
        (tiny / component / "config.json").unlink()
    model = load_model(SDXS, str(tiny), progress=False)
    assert f"unet: {tiny} (shipped config)" in model.source
    assert f"text_encoder: {tiny} (shipped config)" in model.source
    _assert_same_as_reference(model, reference)


def test_weights_that_do_not_fit_the_shipped_config(
    tiny: Path, reference: TinyModules, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tiny / "unet" / "config.json").unlink()
    wrong = {**reference.unet.config, "cross_attention_dim": 16}
    monkeypatch.setattr(ModelSpec, "read_config", lambda self, component: dict(wrong))
    with pytest.raises(ModelError, match=re.escape("do not fit the shipped sdxs-512-0.9 config")):
        load_model(SDXS, str(tiny), progress=False)


def test_missing_tokenizer_and_scheduler_are_built_offline(
    tiny: Path, reference: TinyModules
) -> None:
    shutil.rmtree(tiny / "tokenizer")
    shutil.rmtree(tiny / "scheduler")
    model = load_model(SDXS, str(tiny), progress=False)
    assert model.tokenizer("a photo of a cat").input_ids[-1] == 49407
    assert model.scheduler_config == SDXS.read_config("scheduler")
    assert "built offline" in model.source
    assert "shipped sdxs-512-0.9 config" in model.source
    _assert_same_as_reference(model, reference)


def test_truncated_safetensors_is_reported_as_corrupt(tiny: Path) -> None:
    damaged = tiny / "unet" / "diffusion_pytorch_model.safetensors"
    with damaged.open("r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    with pytest.raises(WeightsCorruptError) as caught:
        load_model(SDXS, str(tiny), progress=False)
    assert caught.value.path == damaged
    assert str(damaged) in str(caught.value)


def test_damaged_config_is_reported_as_corrupt(tiny: Path) -> None:
    (tiny / "text_encoder" / "config.json").write_text('{"hidden_size": 32,')
    with pytest.raises(WeightsCorruptError, match="text_encoder"):
        load_model(SDXS, str(tiny), progress=False)


def test_folder_without_unet_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError) as caught:
        load_model(SDXS, str(tmp_path / "empty"), progress=False)
    message = str(caught.value)
    assert str(tmp_path / "empty" / "unet") in message
    assert "--weights random" in message
    # downloading "into" the same folder would fail the same way: suggest the model's own
    assert _commands(message) == ["livediffusion download --model sdxs-512-0.9"]


def test_missing_path_that_is_not_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="no such folder"):
        load_model(SDXS, str(tmp_path / "nowhere" / "at" / "all"), progress=False)


def test_missing_folder_suggests_the_models_own_download_which_works(
    tmp_path: Path, fake_hub: FakeHub, tiny_source: Path
) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as caught:
        download(SDXS, str(missing), progress=False)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "check the path" in message
    assert str(missing) in message  # where it looked
    assert _commands(message) == ["livediffusion download --model sdxs-512-0.9"]
    assert all(str(missing) not in command for command in _commands(message))
    assert fake_hub.fetched == {}  # a missing folder never reaches for the network

    # and the suggestion (download --model sdxs-512-0.9, no --weights) does work
    fake_hub.repos[SDXS.hub_id] = tiny_source
    assert (download(SDXS, None, progress=False) / "unet").is_dir()


def test_damaged_unet_is_reported_before_anything_is_looked_for(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with only a truncated unet/ must not send the user after a text encoder."""
    from livediffusion_models.weights import plan

    def no_lookups(repo_id: str, **_: Any) -> Path:
        raise AssertionError(f"looked for {repo_id} before reporting the damaged file")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(plan, "_hub_snapshot", no_lookups)
    for component in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.rmtree(tiny / component)
    damaged = tiny / "unet" / "diffusion_pytorch_model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])

    for attempt in (load_model, download):
        started = time.monotonic()
        with pytest.raises(WeightsCorruptError) as caught:
            attempt(SDXS, str(tiny), progress=False)
        assert time.monotonic() - started < 2
        message = str(caught.value)
        assert caught.value.path == damaged
        assert f"damaged weights file: {damaged}" in message
        assert "incomplete" in message  # the reason: the data stops short
        assert f"copy or export {damaged.parent} again" in message
        assert f"--weights {SDXS.hub_id}" in message


def test_a_file_is_not_a_weights_folder(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ModelError, match="single-file"):
        load_model(SDXS, str(checkpoint), progress=False)


# ------------------------------------------------------------------------------ VAE rules


def test_full_autoencoder_is_replaced_by_taesd_from_the_cache(
    tiny: Path, tiny_source: Path, isolated_caches: Path, reference: TinyModules
) -> None:
    """sd-turbo ships an AutoencoderKL; the engine needs the tiny one."""
    config = json.loads((tiny / "vae" / "config.json").read_text())
    config["_class_name"] = "AutoencoderKL"
    (tiny / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsNotFoundError) as caught:
        load_model(TURBO, str(tiny), progress=False)
    message = str(caught.value)
    assert "madebyollin/taesd" in message
    assert str(isolated_caches / "hub" / "models--madebyollin--taesd") in message
    assert f"livediffusion download --model sd-turbo --weights {tiny}" in message

    _fake_hub_snapshot(isolated_caches, "madebyollin/taesd", tiny_source / "vae")
    model = load_model(TURBO, str(tiny), progress=False)
    assert "vae: hub madebyollin/taesd" in model.source
    _assert_same_as_reference(model, reference)


def test_missing_text_encoder_comes_from_the_spec_repo(
    tiny: Path, tiny_source: Path, isolated_caches: Path, reference: TinyModules
) -> None:
    shutil.rmtree(tiny / "text_encoder")
    with pytest.raises(WeightsNotFoundError, match=re.escape("IDKiro/sdxs-512-0.9")):
        load_model(SDXS, str(tiny), progress=False)
    _fake_hub_snapshot(isolated_caches, SDXS.text_encoder_hub_id, tiny_source)
    model = load_model(SDXS, str(tiny), progress=False)
    assert "text_encoder: hub IDKiro/sdxs-512-0.9" in model.source
    _assert_same_as_reference(model, reference)


# ------------------------------------------------------------------------------ hub ids


def test_uncached_hub_id_offline_fails_fast_with_the_command(isolated_caches: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as caught:
        load_model(SDXS, progress=False)  # the spec's own repo
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "IDKiro/sdxs-512-0.9" in message
    assert str(isolated_caches / "hub" / "models--IDKiro--sdxs-512-0.9") in message
    assert "livediffusion download --model sdxs-512-0.9" in message
    assert "--weights random" in message
    assert "HF_HUB_OFFLINE" in message


def test_no_download_means_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(WeightsNotFoundError, match="some-one/some-model"):
        load_model(SDXS, "some-one/some-model", progress=False, allow_download=False)


def test_cached_hub_snapshot_loads_offline(
    tiny_source: Path, isolated_caches: Path, reference: TinyModules
) -> None:
    snapshot = _fake_hub_snapshot(isolated_caches, "someone/tiny-sdxs", tiny_source)
    model = load_model(SDXS, "someone/tiny-sdxs", progress=False)
    assert f"hub someone/tiny-sdxs ({snapshot})" in model.source
    _assert_same_as_reference(model, reference)
    assert download(SDXS, "someone/tiny-sdxs") == snapshot  # nothing missing: no network


def test_default_huggingface_cache_is_used_too(
    tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone who ran diffusers before already has the weights; don't download them again."""
    from huggingface_hub import constants

    snapshot = _fake_hub_snapshot(tmp_path / "hf-default-root", "someone/tiny", tiny_source)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-default-root" / "hub"))
    model = load_model(SDXS, "someone/tiny", progress=False)
    assert str(snapshot) in model.source


def test_corrupt_file_in_the_cache_says_which_folder_to_delete(
    tiny_source: Path, isolated_caches: Path
) -> None:
    snapshot = _fake_hub_snapshot(isolated_caches, "someone/tiny-sdxs", tiny_source)
    damaged = snapshot / "text_encoder" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(WeightsCorruptError) as caught:
        load_model(SDXS, "someone/tiny-sdxs", progress=False)
    message = str(caught.value)
    assert str(damaged) in message
    assert f"delete the cache folder {isolated_caches / 'hub' / 'models--someone--tiny-sdxs'}" in (
        message
    )
    assert "livediffusion download --model sdxs-512-0.9 --weights someone/tiny-sdxs" in message


class FakeHub:
    """Stands in for the network: lists a folder as a repo, "downloads" by copying."""

    def __init__(self, repos: dict[str, Path], cache: Path) -> None:
        self.repos = repos
        self.cache = cache
        self.fetched: dict[str, list[str]] = {}

    def list_repo_files(self, repo_id: str, **_: Any) -> list[str]:
        if repo_id not in self.repos:
            raise OSError(f"404 {repo_id}")
        root = self.repos[repo_id]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def snapshot_download(
        self, repo_id: str, *, cache_dir: Path, allow_patterns: list[str], **_: Any
    ) -> str:
        assert cache_dir == self.cache / "hub"
        self.fetched[repo_id] = allow_patterns
        repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo_dir / "snapshots" / COMMIT
        for name in allow_patterns:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.repos[repo_id] / name, snapshot / name)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(COMMIT)
        return str(snapshot)


@pytest.fixture
def fake_hub(
    monkeypatch: pytest.MonkeyPatch, isolated_caches: Path, tiny_source: Path, tmp_path: Path
) -> FakeHub:
    import huggingface_hub

    from livediffusion_models.weights import hub as weights_hub

    # an sd-turbo-like repo: an AutoencoderKL in vae/ and fp16 + fp32 copies of everything
    turbo = Path(shutil.copytree(tiny_source, tmp_path / "repo-turbo"))
    for weights in turbo.glob("*/*.safetensors"):
        shutil.copy(weights, weights.with_suffix(".fp16.safetensors"))
    config = json.loads((turbo / "vae" / "config.json").read_text())
    (turbo / "vae" / "config.json").write_text(
        json.dumps({**config, "_class_name": "AutoencoderKL"})
    )
    taesd = Path(shutil.copytree(tiny_source / "vae", tmp_path / "repo-taesd"))
    (taesd / "taesd_decoder.pth").write_bytes(b"not for diffusers")
    hub = FakeHub({"stabilityai/sd-turbo": turbo, "madebyollin/taesd": taesd}, isolated_caches)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights_hub, "_hub_unreachable", lambda: None)  # the fake hub answers
    monkeypatch.setattr(
        huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: hub.list_repo_files(repo_id)
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    return hub


def test_download_fetches_only_what_the_model_needs(
    fake_hub: FakeHub, isolated_caches: Path, reference: TinyModules
) -> None:
    main = download(TURBO, progress=False)
    assert main == isolated_caches / "hub" / "models--stabilityai--sd-turbo" / "snapshots" / COMMIT
    assert sorted(fake_hub.fetched) == ["madebyollin/taesd", "stabilityai/sd-turbo"]
    turbo_files = fake_hub.fetched["stabilityai/sd-turbo"]
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in turbo_files
    assert "unet/diffusion_pytorch_model.safetensors" not in turbo_files  # one variant only
    assert not any(name.startswith("vae/") for name in turbo_files)  # TAESD replaces it
    assert fake_hub.fetched["madebyollin/taesd"] == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]

    fake_hub.fetched.clear()
    model = load_model(TURBO, progress=False)  # everything cached now: no more fetching
    assert fake_hub.fetched == {}
    assert "vae: hub madebyollin/taesd" in model.source
    _assert_same_as_reference(model, reference)


def test_failed_download_names_the_repo_and_the_reason(fake_hub: FakeHub) -> None:
    with pytest.raises(WeightsNotFoundError) as caught:
        load_model(SDXS, "nobody/nothing", progress=False)
    message = str(caught.value)
    assert "nobody/nothing" in message
    assert "https://huggingface.co/nobody/nothing" in message
    assert "404" in message
    assert "livediffusion download --model sdxs-512-0.9 --weights nobody/nothing" in message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: connecting is refused at once


@pytest.mark.parametrize("repo_id", ["someone/some-model", SDXS.hub_id])
def test_unreachable_hub_fails_fast_without_retry_warnings(
    repo_id: str,
    isolated_caches: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """No network: one message at once, not huggingface_hub's 25 s of retries and warnings."""
    from huggingface_hub import constants

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as caught:
        load_model(SDXS, repo_id, progress=False)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"cannot reach {endpoint}" in message
    assert str(isolated_caches / "hub" / ("models--" + repo_id.replace("/", "--"))) in message
    assert f"{endpoint}/{repo_id}" in message
    assert _commands(message) == [download_command(SDXS, weights=repo_id)]
    assert "--weights random" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Retrying" not in capfd.readouterr().err


def test_hub_file_selection_takes_one_variant_and_skips_the_rest() -> None:
    from livediffusion_models.weights import _select_hub_files

    listing = [
        "model_index.json",
        "README.md",
        "sd_turbo.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/flax_model.msgpack",
        "tokenizer/merges.txt",
        "tokenizer/vocab.json",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    wanted = ("unet", "text_encoder", "tokenizer", "scheduler")
    assert _select_hub_files(listing, wanted) == sorted(
        [
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/vocab.json",
            "tokenizer/tokenizer_config.json",
            "scheduler/scheduler_config.json",
        ]
    )
    taesd = ["config.json", "diffusion_pytorch_model.safetensors", "taesd_decoder.pth", "x/y.json"]
    assert _select_hub_files(taesd, [""]) == ["config.json", "diffusion_pytorch_model.safetensors"]


# ------------------------------------------------------------------------------ random


@pytest.fixture
def tiny_shipped_configs(monkeypatch: pytest.MonkeyPatch, reference: TinyModules) -> None:
    """Make every spec's shipped configs the tiny ones, so a random build takes milliseconds."""
    configs = {
        "unet": dict(reference.unet.config),
        "vae": dict(reference.vae.config),
        "text_encoder": reference.text_encoder.config.to_dict(),
        "scheduler": SDXS.read_config("scheduler"),
    }
    monkeypatch.setattr(ModelSpec, "read_config", lambda self, component: dict(configs[component]))


@pytest.mark.usefixtures("tiny_shipped_configs")
def test_random_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_model(SDXS, "random", progress=False)
    assert torch.equal(torch.rand(3), expected_next)

    again = load_model(SDXS, "random", progress=False)
    other = load_model(SDXS, "random", progress=False, seed=1)
    for a, b in zip(first.unet.parameters(), again.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, c)
        for a, c in zip(
            first.text_encoder.parameters(), other.text_encoder.parameters(), strict=True
        )
    )
    _assert_inference_ready(first)
    assert "random weights (seed 0)" in first.source
    assert first.tokenizer.pad_token_id == 0


def test_random_needs_no_download() -> None:
    with pytest.raises(ModelError, match="no download"):
        download(SDXS, "random")


# ------------------------------------------------------------------------------ fingerprint


def _fingerprint(folder: Path) -> str:
    return load_model(SDXS, str(folder), progress=False).fingerprint


def test_fingerprint_is_stable_for_the_same_folder(tiny: Path, tiny_source: Path) -> None:
    first = _fingerprint(tiny)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert _fingerprint(tiny) == first
    # the same files elsewhere (copytree keeps mtimes) are the same weights
    moved = Path(shutil.copytree(tiny, tiny.parent / "moved"))
    assert _fingerprint(moved) == first


def test_fingerprint_changes_when_a_weight_file_is_touched(tiny: Path) -> None:
    before = _fingerprint(tiny)
    weights = tiny / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _fingerprint(tiny) != before


def test_fingerprint_changes_when_a_weight_file_is_replaced_with_the_same_size(
    tiny: Path,
) -> None:
    before = _fingerprint(tiny)
    weights = tiny / "text_encoder" / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last tensor's last value
    weights.write_bytes(bytes(data))
    # even where the clock or the copy leaves the old timestamp
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert _fingerprint(tiny) != before


@pytest.mark.parametrize("config", ["unet/config.json", "scheduler/scheduler_config.json"])
def test_fingerprint_changes_with_a_config(tiny: Path, config: str) -> None:
    before = _fingerprint(tiny)
    path = tiny / config
    values = json.loads(path.read_text())
    key = "sample_size" if config.startswith("unet") else "beta_end"
    values[key] = values[key] * 2
    path.write_text(json.dumps(values))
    assert _fingerprint(tiny) != before


@pytest.mark.usefixtures("tiny_shipped_configs")
def test_fingerprint_of_random_weights_follows_the_seed(tiny_source: Path) -> None:
    zero = load_model(SDXS, "random", progress=False).fingerprint
    assert load_model(SDXS, "random", progress=False).fingerprint == zero
    assert load_model(SDXS, "random", progress=False, seed=1).fingerprint != zero
    assert _fingerprint(tiny_source) != zero


def test_fingerprint_of_random_weights_follows_the_shipped_configs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from livediffusion_models.weights.fingerprint import random_fingerprint

    shipped = random_fingerprint(SDXS, seed=0)
    assert random_fingerprint(SDXS, seed=0) == shipped
    assert random_fingerprint(TURBO, seed=0) != shipped
    original = ModelSpec.read_config

    def edited(self: ModelSpec, component: Any) -> dict[str, Any]:
        config = original(self, component)
        if component == "unet":
            config["sample_size"] = 32
        return config

    monkeypatch.setattr(ModelSpec, "read_config", edited)
    assert random_fingerprint(SDXS, seed=0) != shipped


def _content_addressed_snapshot(cache: Path, repo_id: str, content: Path) -> Path:
    """A hub cache as huggingface_hub writes it: blobs named by their hash, linked from the
    snapshot (so two machines that downloaded one revision hold the same blob names)."""
    snapshot = _fake_hub_snapshot(cache, repo_id)
    blobs = snapshot.parents[1] / "blobs"
    blobs.mkdir()
    for path in sorted(p for p in content.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(content)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_fingerprint_of_a_hub_download_is_its_content_on_any_machine(
    tiny_source: Path, tmp_path: Path
) -> None:
    """Programs converted on one machine are found on another that downloaded the same
    revision: the blobs' names (content hashes) count, not their timestamps."""
    _content_addressed_snapshot(tmp_path / "here", "owner/tiny", tiny_source)
    there = _content_addressed_snapshot(tmp_path / "there", "owner/tiny", tiny_source)
    for blob in (there.parents[1] / "blobs").iterdir():
        os.utime(blob, ns=(0, 1_000_000_000))  # downloaded at another time
    one = load_model(SDXS, "owner/tiny", cache_dir=tmp_path / "here", progress=False)
    two = load_model(SDXS, "owner/tiny", cache_dir=tmp_path / "there", progress=False)
    assert one.fingerprint == two.fingerprint
    # another revision of a weights file is another blob: another fingerprint
    link = there / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(link.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])
    blob = link.resolve().parent / hashlib.sha256(bytes(data)).hexdigest()
    blob.write_bytes(bytes(data))
    link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    three = load_model(SDXS, "owner/tiny", cache_dir=tmp_path / "there", progress=False)
    assert three.fingerprint != one.fingerprint
