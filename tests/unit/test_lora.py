"""LoRA styles: files read with diffusers' loaders, applied as in-place weight updates.

The reference is always diffusers itself on a copy of the same tiny model: ``load_lora_weights``
then ``fuse_lora`` (or ``set_adapters`` for several LoRAs), in a pipeline built from the same
modules. The files are written the way the tools that make them write them (tests/lorafiles.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from livediffusion_models.errors import (
    LoraBaseMismatchError,
    LoraCorruptError,
    LoraError,
    LoraFormatError,
    LoraNotFoundError,
)
from livediffusion_models.lora import LoraRequest
from livediffusion_models.lora.read import read_lora
from livediffusion_models.lora.stack import LoraStack
from lorafiles import write_lora
from tinymodel import TINY_EMBED_DIM, TINY_SIZE, make_tiny_modules


@pytest.fixture(scope="module")
def tiny() -> Any:
    return make_tiny_modules(seed=4)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, TINY_SIZE // 8, TINY_SIZE // 8, generator=gen)
    embeds = torch.randn(1, 77, TINY_EMBED_DIM, generator=gen)
    ids = torch.randint(0, 49408, (1, 77), generator=gen)
    return latents, embeds, ids


def _unet_out(unet: Any, seed: int = 0) -> torch.Tensor:
    latents, embeds, _ = _inputs(seed)
    with torch.no_grad():
        out: torch.Tensor = unet(latents, 999, encoder_hidden_states=embeds).sample
    return out


def _text_out(text_encoder: Any) -> torch.Tensor:
    _, _, ids = _inputs()
    with torch.no_grad():
        out: torch.Tensor = text_encoder(ids)[0]
    return out


def _diffusers_pipe(tiny: Any) -> Any:
    """diffusers' own pipeline over deep copies of the tiny modules: the reference."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(tiny.vae),
        text_encoder=copy.deepcopy(tiny.text_encoder),
        tokenizer=None,
        unet=copy.deepcopy(tiny.unet),
        scheduler=EulerDiscreteScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fresh(tiny: Any) -> tuple[Any, Any]:
    return copy.deepcopy(tiny.unet), copy.deepcopy(tiny.text_encoder)


# -- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "source", "weight"),
    [
        ("ink.safetensors", "ink.safetensors", 1.0),
        ("ink.safetensors:0.7", "ink.safetensors", 0.7),
        ("owner/repo:-0.5", "owner/repo", -0.5),
        ("C:\\styles\\ink.safetensors", "C:\\styles\\ink.safetensors", 1.0),
        ("C:\\styles\\ink.safetensors:1.25", "C:\\styles\\ink.safetensors", 1.25),
    ],
)
def test_request_splits_a_trailing_weight_only(text: str, source: str, weight: float) -> None:
    assert LoraRequest.parse(text) == LoraRequest(source=source, weight=weight)


def test_request_refuses_a_weight_that_is_not_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        LoraRequest.parse("ink.safetensors:nan")


# -- equal to diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["peft", "kohya"])
def test_each_format_equals_diffusers_load_and_fuse(tiny: Any, tmp_path: Path, fmt: Any) -> None:
    path = write_lora(tmp_path, unet=tiny.unet, text_encoder=tiny.text_encoder, fmt=fmt)
    pipe = _diffusers_pipe(tiny)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)
    pipe.fuse_lora()
    expected_unet, expected_text = _unet_out(pipe.unet), _text_out(pipe.text_encoder)

    unet, text_encoder = _fresh(tiny)
    plain = _unet_out(unet)
    lora = read_lora(str(path), unet=unet, text_encoder=text_encoder, model="tiny")
    assert lora.touches_text_encoder
    LoraStack(unet=unet, text_encoder=text_encoder).add(lora, weight=1.0)

    torch.testing.assert_close(_unet_out(unet), expected_unet, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(_text_out(text_encoder), expected_text, atol=2e-5, rtol=1e-5)
    assert (expected_unet - plain).abs().max() > 1e-2  # the LoRA does change the output


def test_kohya_and_peft_files_of_the_same_factors_agree(tiny: Any, tmp_path: Path) -> None:
    """The two formats hold one LoRA: diffusers' conversions must land on the same layers."""
    outputs = []
    for fmt in ("peft", "kohya"):
        path = write_lora(tmp_path / fmt, unet=tiny.unet, fmt=fmt, seed=3)
        unet, _ = _fresh(tiny)
        LoraStack(unet=unet).add(read_lora(str(path), unet=unet, model="tiny"))
        outputs.append(_unet_out(unet))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)


def test_weight_zero_is_exactly_no_lora(tiny: Any, tmp_path: Path) -> None:
    path = write_lora(tmp_path, unet=tiny.unet, text_encoder=tiny.text_encoder)
    unet, text_encoder = _fresh(tiny)
    plain_unet, plain_text = _unet_out(unet), _text_out(text_encoder)
    stack = LoraStack(unet=unet, text_encoder=text_encoder)
    stack.add(read_lora(str(path), unet=unet, text_encoder=text_encoder, model="tiny"), weight=0.0)
    assert torch.equal(_unet_out(unet), plain_unet)
    stack.set_weights([0.8])
    assert not torch.equal(_unet_out(unet), plain_unet)
    stack.set_weights([0.0])  # and back: bit for bit, no drift
    assert torch.equal(_unet_out(unet), plain_unet)
    assert torch.equal(_text_out(text_encoder), plain_text)


def test_two_loras_at_half_equal_diffusers_set_adapters(tiny: Any, tmp_path: Path) -> None:
    a = write_lora(tmp_path / "a", unet=tiny.unet, text_encoder=tiny.text_encoder, seed=1)
    b = write_lora(tmp_path / "b", unet=tiny.unet, fmt="kohya", seed=2, rank=8, alpha=3.0)
    pipe = _diffusers_pipe(tiny)
    pipe.load_lora_weights(str(a.parent), weight_name=a.name, adapter_name="a")
    pipe.load_lora_weights(str(b.parent), weight_name=b.name, adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 0.5])
    expected_unet, expected_text = _unet_out(pipe.unet), _text_out(pipe.text_encoder)

    unet, text_encoder = _fresh(tiny)
    stack = LoraStack(unet=unet, text_encoder=text_encoder)
    for path in (a, b):
        stack.add(read_lora(str(path), unet=unet, text_encoder=text_encoder), weight=0.0)
    change = stack.set_weights([0.5, 0.5])
    assert change.applied and change.reencode_prompts  # a changes the text encoder
    torch.testing.assert_close(_unet_out(unet), expected_unet, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(_text_out(text_encoder), expected_text, atol=2e-5, rtol=1e-5)


def test_a_weight_change_rewrites_the_same_tensors_in_place(tiny: Any, tmp_path: Path) -> None:
    path = write_lora(tmp_path, unet=tiny.unet)
    unet, _ = _fresh(tiny)
    stack = LoraStack(unet=unet)
    stack.add(read_lora(str(path), unet=unet), weight=1.0)
    params = {name: p for name, p in unet.named_parameters()}
    modules = {name: m for name, m in unet.named_modules()}
    pointers = {name: p.data_ptr() for name, p in params.items()}
    at_one = _unet_out(unet)

    change = stack.set_weights([0.25])
    assert change == type(change)(applied=True, reencode_prompts=False)  # unet only
    assert {n: p for n, p in unet.named_parameters()} == params  # the same objects ...
    assert {n: p.data_ptr() for n, p in unet.named_parameters()} == pointers  # ... storage
    assert {n: m for n, m in unet.named_modules()} == modules
    at_quarter = _unet_out(unet)
    assert (at_quarter - at_one).abs().max() > 1e-3

    assert stack.set_weights([0.25]).applied is False  # unchanged: nothing done
    stack.set_weight(0, 1.0)
    torch.testing.assert_close(_unet_out(unet), at_one, atol=1e-6, rtol=1e-6)


def test_a_weight_change_is_seen_through_a_compiled_view_of_the_weights(
    tiny: Any, tmp_path: Path
) -> None:
    """What a captured graph or compiled model holds is the parameter tensors themselves: a
    view taken before the change (as a graph keeps device pointers) sees the new values."""
    path = write_lora(tmp_path, unet=tiny.unet)
    unet, _ = _fresh(tiny)
    stack = LoraStack(unet=unet)
    stack.add(read_lora(str(path), unet=unet), weight=0.0)
    q = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    held = q.view(-1)  # shares storage, like a graph's recorded pointer
    before = held.clone()
    stack.set_weights([1.0])
    assert not torch.equal(held, before)
    assert torch.equal(held, q.view(-1))


def test_clear_puts_the_base_weights_back(tiny: Any, tmp_path: Path) -> None:
    path = write_lora(tmp_path, unet=tiny.unet, text_encoder=tiny.text_encoder)
    unet, text_encoder = _fresh(tiny)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    stack = LoraStack(unet=unet, text_encoder=text_encoder)
    stack.add(read_lora(str(path), unet=unet, text_encoder=text_encoder), weight=0.9)
    stack.clear()
    assert len(stack) == 0 and stack.memory_bytes() == 0
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


# -- refused, model untouched --------------------------------------------------------------


def _unet_with(tiny: Any, **changes: Any) -> Any:
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in tiny.unet.config.items() if not k.startswith("_")}
    config.update(changes)
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(config).eval()


def _snapshot(module: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _unchanged(module: Any, snapshot: dict[str, torch.Tensor]) -> bool:
    state = module.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[k], snapshot[k]) for k in state
    )


def _one_line(error: pytest.ExceptionInfo[Any]) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def test_an_sd1_lora_on_an_sd2_model_names_both_bases(tiny: Any, tmp_path: Path) -> None:
    sd1 = _unet_with(tiny, cross_attention_dim=768)
    sd2 = _unet_with(tiny, cross_attention_dim=1024)
    path = write_lora(tmp_path, unet=sd1, fmt="kohya")
    before = _snapshot(sd2)
    with pytest.raises(LoraBaseMismatchError) as error:
        read_lora(str(path), unet=sd2, model="sdxs-512-0.9")
    line = _one_line(error)
    assert "SD 1.x (768-wide cross-attention)" in line
    assert "sdxs-512-0.9 is SD 2.x (1024-wide cross-attention)" in line
    assert "style_kohya" in line
    assert _unchanged(sd2, before)


def test_a_lora_with_layers_this_model_lacks_is_refused(tiny: Any, tmp_path: Path) -> None:
    """Same widths, other blocks (an SD 2.1 LoRA with a mid block on SDXS, which has none)."""
    with_mid = _unet_with(tiny, mid_block_type="UNetMidBlock2DCrossAttn")
    path = write_lora(tmp_path, unet=with_mid)
    unet, _ = _fresh(tiny)
    before = _snapshot(unet)
    with pytest.raises(LoraBaseMismatchError) as error:
        read_lora(str(path), unet=unet, model="tiny")
    line = _one_line(error)
    assert "other blocks" in line and "mid_block" in line
    assert _unchanged(unet, before)


def test_add_refuses_a_lora_read_for_another_model_and_changes_nothing(
    tiny: Any, tmp_path: Path
) -> None:
    path = write_lora(tmp_path, unet=tiny.unet)
    lora = read_lora(str(path), unet=tiny.unet)
    wider = _unet_with(tiny, cross_attention_dim=48)  # attn2.to_k/to_v are 48 wide here
    before = _snapshot(wider)
    stack = LoraStack(unet=wider)
    with pytest.raises(LoraError, match=r"attn2\.to_k\.weight"):
        stack.add(lora)
    assert len(stack) == 0 and stack.memory_bytes() == 0
    assert _unchanged(wider, before)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # an interrupted download
        lambda data: b"\x00" * 8,  # a header of length zero
        lambda data: b"<html>rate limited</html>",  # an error page saved as the file
    ],
)
def test_a_damaged_file_is_one_clear_line(tiny: Any, tmp_path: Path, damage: Any) -> None:
    path = write_lora(tmp_path, unet=tiny.unet)
    path.write_bytes(damage(path.read_bytes()))
    unet, _ = _fresh(tiny)
    before = _snapshot(unet)
    with pytest.raises(LoraCorruptError) as error:
        read_lora(str(path), unet=unet)
    line = _one_line(error)
    assert str(path) in line and "damaged" in line
    assert _unchanged(unet, before)


def test_a_full_checkpoint_is_not_taken_for_a_lora(tiny: Any, tmp_path: Path) -> None:
    import safetensors.torch

    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in tiny.unet.state_dict().items()}, str(path)
    )
    with pytest.raises(LoraFormatError) as error:
        read_lora(str(path), unet=tiny.unet)
    assert "not a LoRA" in _one_line(error)


def test_a_dora_is_refused_rather_than_blended_wrong(tiny: Any, tmp_path: Path) -> None:
    import safetensors.torch

    path = write_lora(tmp_path, unet=tiny.unet, fmt="kohya")
    tensors = safetensors.torch.load_file(str(path))
    first = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[first.replace("lora_down.weight", "dora_scale")] = torch.ones(1, 32)
    safetensors.torch.save_file(tensors, str(path))
    with pytest.raises(LoraFormatError) as error:
        read_lora(str(path), unet=tiny.unet)
    assert "DoRA" in _one_line(error)


def test_a_missing_file_and_an_uncached_hub_id_say_so(tiny: Any, tmp_path: Path) -> None:
    with pytest.raises(LoraNotFoundError) as error:
        read_lora(str(tmp_path / "nope.safetensors"), unet=tiny.unet)
    assert "no such file" in _one_line(error)
    with pytest.raises(LoraNotFoundError) as error:
        read_lora(
            "someone/some-lora", unet=tiny.unet, cache_dir=str(tmp_path), allow_download=False
        )
    assert "not in the cache" in _one_line(error)


def test_a_hub_lora_is_found_in_the_cache_offline(tiny: Any, tmp_path: Path) -> None:
    """huggingface_hub's cache layout: refs/main names the snapshot holding the file."""
    snapshot = tmp_path / "hub" / "models--someone--ink-style" / "snapshots" / "abc123"
    path = write_lora(snapshot, unet=tiny.unet, fmt="kohya")
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    lora = read_lora(
        "someone/ink-style", unet=tiny.unet, cache_dir=str(tmp_path), allow_download=False
    )
    assert lora.path == path and lora.name == "someone/ink-style"


def test_a_folder_with_several_files_asks_which(tiny: Any, tmp_path: Path) -> None:
    write_lora(tmp_path, unet=tiny.unet, fmt="kohya")
    write_lora(tmp_path, unet=tiny.unet, fmt="kohya", seed=1)
    (tmp_path / "style_kohya.safetensors").rename(tmp_path / "other.safetensors")
    write_lora(tmp_path, unet=tiny.unet, fmt="kohya")
    with pytest.raises(LoraNotFoundError) as error:
        read_lora(str(tmp_path), unet=tiny.unet)
    assert "several LoRA files" in _one_line(error)


def test_a_module_moved_after_attaching_is_an_error_not_a_silent_no_op(
    tiny: Any, tmp_path: Path
) -> None:
    path = write_lora(tmp_path, unet=tiny.unet)
    unet, _ = _fresh(tiny)
    stack = LoraStack(unet=unet)
    stack.add(read_lora(str(path), unet=unet))
    unet.to(torch.float64)  # new parameter tensors: the stack's are dead copies now
    with pytest.raises(LoraError, match="replaced after the LoRAs were attached"):
        stack.set_weights([0.5])


# -- the unfused PEFT alternative (kept for measuring) ---------------------------------------


def test_peft_adapters_with_tensor_scales_equal_the_in_place_stack(
    tiny: Any, tmp_path: Path
) -> None:
    from livediffusion_models.lora.peft_runtime import PeftLoraStack

    a = write_lora(tmp_path / "a", unet=tiny.unet, text_encoder=tiny.text_encoder, seed=5)
    b = write_lora(tmp_path / "b", unet=tiny.unet, fmt="kohya", seed=6, rank=8, alpha=3.0)
    outputs = []
    for kind in (LoraStack, PeftLoraStack):
        unet, text_encoder = _fresh(tiny)
        stack: Any = kind(unet=unet, text_encoder=text_encoder)
        for path in (a, b):
            stack.add(read_lora(str(path), unet=unet, text_encoder=text_encoder), weight=1.0)
        seen = []
        for weights in ([0.5, 0.3], [0.0, 1.0], [0.0, 0.0]):
            change = stack.set_weights(weights)
            assert change.applied
            seen.append((_unet_out(unet), _text_out(text_encoder)))
        outputs.append(seen)
    for (unet_a, text_a), (unet_b, text_b) in zip(*outputs, strict=True):
        torch.testing.assert_close(unet_a, unet_b, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(text_a, text_b, atol=2e-5, rtol=1e-5)


def test_peft_weight_changes_write_one_vector_the_layers_read(tiny: Any, tmp_path: Path) -> None:
    from livediffusion_models.lora.peft_runtime import PeftLoraStack

    path = write_lora(tmp_path, unet=tiny.unet)
    unet, _ = _fresh(tiny)
    stack = PeftLoraStack(unet=unet)
    stack.add(read_lora(str(path), unet=unet), weight=1.0)
    layer = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    scale = layer.scaling["lora0"]
    pointer = scale.data_ptr()
    stack.set_weights([0.25])
    assert layer.scaling["lora0"] is scale and scale.data_ptr() == pointer
    assert float(scale) == 0.25


# -- through the torch backend ----------------------------------------------------------------


def _frame(backend: Any) -> Any:
    import numpy as np

    from livediffusion_models.backends.base import FrameParams

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 4), dtype=np.uint8)
    out = np.zeros_like(pixels)
    backend.step(pixels, FrameParams(), out=out)
    backend.reset()
    return out


@pytest.mark.parametrize("runtime", ["in-place", "peft"])
def test_the_torch_backend_takes_loras_and_changes_weights_live(
    tiny_folder: Path, tmp_path: Path, runtime: Any
) -> None:
    from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
    from livediffusion_models.lora.read import read_loras
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    def backend(requests: list[LoraRequest]) -> TorchBackend:
        model = load_model(get_model("sdxs-512-0.9"), str(tiny_folder), progress=False)
        loras = read_loras(model, requests)
        built = TorchBackend.from_components(
            model, TorchOptions(size=(64, 64), loras=loras, lora_runtime=runtime)
        )
        built.set_prompt(built.encode_prompt("a lighthouse"))
        return built

    plain = backend([])
    assert plain.loras == () and plain.lora_weights == ()
    reference = load_model(get_model("sdxs-512-0.9"), str(tiny_folder), progress=False)
    path = write_lora(tmp_path, unet=reference.unet, text_encoder=reference.text_encoder)
    styled = backend([LoraRequest(str(path), weight=0.0)])
    assert styled.loras == ("pytorch_lora_weights",) and styled.lora_weights_live
    assert plain.lora_memory_bytes == 0 and styled.lora_memory_bytes > 0
    assert (_frame(styled) == _frame(plain)).all()  # weight 0 is no LoRA

    change = styled.set_lora_weights([1.0])
    assert change.applied and change.reencode_prompts
    styled.set_prompt(styled.encode_prompt("a lighthouse"), from_mix=1.0)
    assert styled.lora_weights == (1.0,)
    assert (_frame(styled) != _frame(plain)).any()
    with pytest.raises(ValueError, match="2 weights for 1 LoRAs"):
        styled.set_lora_weights([1.0, 0.5])


def test_a_peft_adapter_folder_equals_peft_merge_and_unload(tiny: Any, tmp_path: Path) -> None:
    """PEFT's own ``save_pretrained`` format (the SDXS authors' DreamShaper-Anime adapter
    is one): adapter_config.json + adapter_model.safetensors, keys under base_model.model."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4,
        lora_alpha=12,
        target_modules=["to_q", "to_v", "proj_out", "conv2"],
        init_lora_weights=False,
    )
    torch.manual_seed(9)
    wrapped = get_peft_model(copy.deepcopy(tiny.unet), config)
    wrapped.save_pretrained(str(tmp_path / "anime"))
    assert (tmp_path / "anime" / "adapter_config.json").is_file()
    expected = _unet_out(wrapped.merge_and_unload())

    unet, _ = _fresh(tiny)
    lora = read_lora(str(tmp_path / "anime"), unet=unet, model="tiny")
    assert lora.name == "anime" and not lora.touches_text_encoder
    LoraStack(unet=unet).add(lora)
    torch.testing.assert_close(_unet_out(unet), expected, atol=2e-5, rtol=1e-5)
    assert (expected - _unet_out(tiny.unet)).abs().max() > 1e-2


def test_a_lora_of_which_no_layer_is_in_this_model_is_refused(tiny: Any, tmp_path: Path) -> None:
    with_mid = _unet_with(tiny, mid_block_type="UNetMidBlock2DCrossAttn")
    path = write_lora(tmp_path, unet=with_mid, unet_targets=("mid_block.attentions.0.proj_in",))
    with pytest.raises(LoraBaseMismatchError) as error:
        read_lora(str(path), unet=tiny.unet, model="tiny")
    assert "other blocks" in _one_line(error)
