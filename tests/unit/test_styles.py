"""LoRA and ControlNet settings and controls: the flags and ``[[lora]]`` tables, the
``/lora/N/...`` addresses (a global store beside the per-stream controls), presets, MIDI
maps, and the frame thread's weight changes on a real tiny backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from livediffusion.cli import _serve_config, build_parser, main
from livediffusion.config_file import (
    config_from_values,
    format_toml,
    read_config_file,
    values_from_config,
)
from livediffusion.control.controls import ControlError
from livediffusion.control.styles import LoraControl, StyleStore, lora_address
from livediffusion.options import ConfigFileError
from livediffusion_models.lora import LoraRequest


def _config(*argv: str) -> Any:
    return _serve_config(build_parser().parse_args(["serve", *argv]))


# -- flags and the config file ---------------------------------------------------------------


def test_lora_and_controlnet_flags_reach_the_configuration() -> None:
    config = _config(
        "--model", "sdxs-512-dreamshaper",
        "--lora", "styles/ink.safetensors:0.8",
        "--lora", r"C:\styles\glow.safetensors",
        "--lora", "owner/glow-lora:0",
        "--lora-runtime", "peft",
        "--controlnet", "sdxs-sketch",
    )  # fmt: skip
    assert config.lora == (
        LoraRequest("styles/ink.safetensors", 0.8),
        LoraRequest(r"C:\styles\glow.safetensors", 1.0),
        LoraRequest("owner/glow-lora", 0.0),
    )
    assert config.lora_runtime == "peft" and config.controlnet == "sdxs-sketch"
    assert config.controls.controlnet_scale == 0.8  # the registry's for sdxs-sketch
    again = _config("--controlnet", "sdxs-sketch", "--controlnet-scale", "0.3")
    assert again.controls.controlnet_scale == 0.3  # the flag wins
    assert _config("--controlnet", "some/hub-controlnet").controls.controlnet_scale == 1.0
    assert _config().lora == () and _config().controlnet is None


def test_the_lora_runtimes_are_the_models_own() -> None:
    from livediffusion.option_values import LORA_RUNTIMES
    from livediffusion_models.backends.torch_backend import LORA_RUNTIMES as MODELS

    assert LORA_RUNTIMES == MODELS


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (
            ["--lora", "ink.safetensors:3"],
            "LoRA ink.safetensors: its weight must be between 0 and 2",
        ),
        (["--lora", ""], "a LoRA needs a file, folder or hub id"),
        (["--lora", "ink.safetensors:nan"], "finite"),
        (["--lora-runtime", "fused"], "one of in-place, peft"),
        (["--controlnet-scale", "2.5"], "between 0 and 2"),
    ],
)
def test_a_bad_flag_exits_2_in_one_line(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["serve", *flags])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and says in error, error


def test_lora_tables_in_the_config_file_and_back(tmp_path: Path) -> None:
    path = tmp_path / "show.toml"
    path.write_text(
        '[model]\nlora_runtime = "peft"\n\n'
        '[[lora]]\npath = "ink.safetensors"\nweight = 0.8\n\n'
        '[[lora]]\npath = "owner/glow-lora"\n',
        encoding="utf-8",
    )
    config = config_from_values(read_config_file(path))
    assert config.lora == (LoraRequest("ink.safetensors", 0.8), LoraRequest("owner/glow-lora"))
    printed = format_toml(values_from_config(config))
    assert '[[lora]]\npath = "ink.safetensors"\nweight = 0.8' in printed
    again = tmp_path / "printed.toml"
    again.write_text(printed, encoding="utf-8")
    assert config_from_values(read_config_file(again)) == config
    flags = _config("--config", str(path), "--lora", "other.safetensors")
    assert flags.lora == (LoraRequest("other.safetensors"),)  # flags replace the file's


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('[[lora]]\npath = "ink.safetensors"\nwieght = 0.8', "takes path (a file, folder or"),
        ("[[lora]]\nweight = 0.8", "takes path"),
        ('[[lora]]\npath = "ink.safetensors"\nweight = 2.5', "must be between 0 and 2"),
        ('[[lora]]\npath = "ink.safetensors"\nweight = "high"', "weight must be a number"),
        ('lora = "ink.safetensors"', "write each as a [[lora]] table"),
    ],
)
def test_a_bad_lora_table_is_named(tmp_path: Path, table: str, says: str) -> None:
    path = tmp_path / "show.toml"
    path.write_text(table + "\n", encoding="utf-8")
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(path)
    message = str(caught.value)
    assert str(path) in message and says in message and "\n" not in message, message


def test_convert_download_and_bench_take_the_style_flags() -> None:
    parser = build_parser()
    convert = parser.parse_args(
        ["convert", "--lora", "ink.safetensors:0.8", "--lora-styles", "--controlnet", "x/y"]
    )
    assert convert.lora == [LoraRequest("ink.safetensors", 0.8)] and convert.lora_styles
    download = parser.parse_args(["download", "--lora", "owner/glow", "--controlnet", "c"])
    assert not hasattr(download, "model")  # only the styles are fetched
    bench = parser.parse_args(["bench", "--lora", "random", "--controlnet", "tiny"])
    assert bench.lora == [LoraRequest("random")] and bench.controlnet == "tiny"
    assert parser.parse_args(["bench"]).lora is None


def test_a_mac_is_told_the_style_flags_of_the_conversion() -> None:
    from livediffusion.cli import _style_flags

    requests = (LoraRequest("my styles/ink.safetensors", 0.8), LoraRequest("owner/glow", 1.0))
    flags = _style_flags(requests, True, "sdxs-sketch")
    assert flags == (
        " --lora 'my styles/ink.safetensors:0.8' --lora owner/glow:1 --lora-styles"
        " --controlnet sdxs-sketch"
    )
    assert build_parser().parse_args(["serve", *__import__("shlex").split(flags)]).lora_styles


def test_download_fetches_only_the_styles_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import livediffusion_models.weights

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was fetched")

    monkeypatch.setattr(livediffusion_models.weights, "download", no_model)
    lora = tmp_path / "ink.safetensors"
    lora.write_bytes(b"x")
    assert main(["download", "--lora", f"{lora}:0.5"]) == 0
    assert capsys.readouterr().out.strip() == str(lora)
    assert main(["download", "--lora", str(tmp_path / "nope.safetensors")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_osc_lists_the_style_addresses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["osc", "--osc-prefix", "/stage1"]) == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"/stage1/lora/N/weight", "/stage1/lora/N/on", "/stage1/controlnet/scale"} <= listed


# -- the /lora/N addresses -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "prefix", "found"),
    [
        ("/lora/0/weight", "", ("0", "weight")),
        ("lora_12_on", "", ("12", "on")),
        ("/stage1/lora/1/on", "/stage1", ("1", "on")),
        ("stage1_lora_1_weight", "/stage1", ("1", "weight")),
        ("/lora/1/weight", "/stage1", None),  # not under the prefix
        ("/lora/1/volume", "", None),
        ("/strength", "", None),
    ],
)
def test_lora_addresses_are_read_like_the_others(
    address: str, prefix: str, found: tuple[str, str] | None
) -> None:
    assert lora_address(address, prefix=prefix) == found


def test_the_store_takes_valid_messages_and_refuses_the_rest() -> None:
    store = StyleStore([1.0, 0.5])
    seen: list[tuple[int, LoraControl]] = []
    store.subscribe(lambda index, value: seen.append((index, value)))
    version = store.version
    assert store.submit("/lora/1/weight", (0.25,)) and store.submit("lora_0_on", (0,))
    assert store.snapshot() == (LoraControl(1.0, on=False), LoraControl(0.25))
    assert [value.effective for value in store.snapshot()] == [0.0, 0.25]
    assert store.version == version + 2 and [index for index, _ in seen] == [1, 0]
    assert not store.submit("/strength", (0.5,))  # not ours: the controls take it
    for address, args, says in [
        ("/lora/2/weight", (0.5,), "/lora/2/weight: N must be a LoRA's number, 0..1"),
        ("/lora/N/weight", (0.5,), "N must be a LoRA's number"),
        ("/lora/0/weight", (2.5,), "/lora/0/weight must be between 0 and 2, got 2.5"),
        ("/lora/0/on", (0.5,), "/lora/0/on takes 0 or 1"),
        ("/lora/0/weight", ("x",), "/lora/0/weight takes a number"),
    ]:
        with pytest.raises(ControlError, match=__import__("re").escape(says)):
            store.submit(address, args)
    assert store.snapshot() == (LoraControl(1.0, on=False), LoraControl(0.25))
    with pytest.raises(ControlError, match="no LoRA is loaded"):
        StyleStore().submit("/lora/0/weight", (0.5,))


def test_a_preset_fits_the_loras_loaded_now() -> None:
    store = StyleStore([1.0, 0.5, 0.2])
    entry = [{"weight": 0.3, "on": False}, {"weight": 0.9}]  # saved with fewer LoRAs
    fitted = store.from_preset(entry, where="p")
    assert fitted == (LoraControl(0.3, on=False), LoraControl(0.9), LoraControl(0.2))
    longer = [{"weight": 0.1}] * 5
    assert store.from_preset(longer, where="p") == (LoraControl(0.1),) * 3
    assert store.from_preset(None, where="p") is None
    with pytest.raises(ControlError, match="p: lora 0: /lora/N/weight must be between"):
        store.from_preset([{"weight": 9}], where="p")
    with pytest.raises(ControlError, match="must be a table of weight and on"):
        store.from_preset([{"weight": 0.5, "volume": 1}], where="p")


def test_presets_save_and_recall_the_loras_with_the_rest(tmp_path: Path) -> None:
    from livediffusion.control.controls import Controls, ControlStore
    from livediffusion.control.presets import PresetFile
    from livediffusion.control.surface import ControlSurface

    styles = StyleStore([1.0, 0.5])
    store = ControlStore(Controls())
    surface = ControlSurface(
        store,
        presets=PresetFile(tmp_path / "presets.json"),
        status=lambda: (0.0, 0.0, 0.0, 0, "m", "b", 0, 0.0, ""),
        styles=styles,
        recall_glide=2.0,
    )
    surface.submit("/lora/0/weight", (0.3,))
    surface.submit("/strength", (0.4,))
    surface.submit("/preset/save", (1,))
    surface.submit("/lora/0/weight", (0.9,))
    surface.submit("/lora/1/on", (0,))
    surface.submit("/preset/recall", (1,))
    assert styles.snapshot() == (LoraControl(0.3), LoraControl(0.5))
    assert styles.glide_override() == 2.0  # the recall's glide, as for every value
    assert store.snapshot().strength == 0.4
    # a hand-edited preset whose LoRA part is bad changes nothing at all
    text = (tmp_path / "presets.json").read_text(encoding="utf-8")
    (tmp_path / "presets.json").write_text(text.replace("0.3", "7.0"), encoding="utf-8")
    surface.submit("/strength", (0.9,))
    with pytest.raises(ControlError, match="lora 0"):
        surface.submit("/preset/recall", (1,))
    assert store.snapshot().strength == 0.9


def test_a_midi_map_drives_a_lora_by_its_number(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from livediffusion.control.midi_map import MidiMapError, MidiMapper, load_map

    path = tmp_path / "map.toml"
    path.write_text(
        'name = "styles"\n'
        '[[control]]\ncc = 1\naddress = "/lora/0/weight"\nrange = [0, 1]\n'
        '[[control]]\nnote = 36\naddress = "/lora/1/on"\nmode = "toggle"\n',
        encoding="utf-8",
    )
    styles = StyleStore([1.0, 0.5])
    mapper = MidiMapper(load_map(str(path)), current=styles.value_at)

    def message(**fields: Any) -> Any:
        return SimpleNamespace(channel=0, **fields)

    ((address, args),) = mapper.translate(message(type="control_change", control=1, value=127))
    assert address == "/lora/0/weight" and args == (1.0,)
    ((address, args),) = mapper.translate(message(type="note_on", note=36, velocity=100))
    assert (address, args) == ("/lora/1/on", (0,))  # it was on: the press turns it off
    assert styles.submit(address, args) and styles.value_at("/lora/1/on") is False
    ((address, args),) = mapper.translate(message(type="note_on", note=36, velocity=100))
    assert args == (1,)
    path.write_text('[[control]]\ncc = 1\naddress = "/lora/N/weight"\n', encoding="utf-8")
    with pytest.raises(MidiMapError, match="needs a LoRA's number for N: /lora/0/weight"):
        load_map(str(path))


# -- the frame thread's weight changes, on a real tiny backend -------------------------------


def test_weight_changes_glide_and_re_encode_prompts_only_when_the_text_encoder_moves(
    tmp_path: Path, make_tiny_backend: Any
) -> None:
    from types import SimpleNamespace

    from livediffusion.run.lora_weights import LoraWeights
    from livediffusion_models.lora.read import read_loras
    from lorafiles import write_lora
    from tinymodel import make_tiny_modules

    tiny = make_tiny_modules(0)  # the tiny folder's weights
    text = write_lora(tmp_path / "text", unet=tiny.unet, text_encoder=tiny.text_encoder, seed=1)
    unet_only = write_lora(tmp_path / "unet", unet=tiny.unet, seed=2)
    requests = [LoraRequest(str(text)), LoraRequest(str(unet_only), 0.5)]
    components = SimpleNamespace(unet=tiny.unet, text_encoder=tiny.text_encoder)
    backend = make_tiny_backend(loras=read_loras(components, requests))
    styles = StyleStore([1.0, 0.5])
    encoded: list[int] = []
    weights = LoraWeights(styles, backend, glide=lambda: 1.0, reencode=lambda: encoded.append(1))
    assert not weights.apply(0.0)  # nothing asked: nothing done
    styles.submit("/lora/1/weight", (1.0,))  # the UNet-only LoRA, over 1 s of /glide
    assert not weights.apply(10.0) and backend.lora_weights == (1.0, 0.5)  # the glide starts
    assert weights.apply(10.5) and 0.5 < backend.lora_weights[1] < 1.0  # on its way
    assert weights.apply(11.0) and backend.lora_weights == (1.0, 1.0)
    assert not weights.apply(12.0) and encoded == []  # settled; the text encoder never moved
    styles.set(0, on=False, ramp_seconds=0.0)  # a recall's own glide time: at once
    assert weights.apply(12.1) and backend.lora_weights == (0.0, 1.0)
    assert encoded == [1]  # the LoRA on the text encoder moved: prompts encoded again
    assert styles.applied == (0.0, 1.0) and styles.status_text() == "0 1"


def test_the_prompt_cache_is_forgotten_when_the_text_encoder_changes() -> None:
    """After a LoRA on the text encoder moved, a cached embedding is of the old weights; an
    encode that was under way while they changed is used once, not kept."""
    from livediffusion.control.controls import ControlStore
    from livediffusion.run.prompts import PromptEncoder

    calls: list[str] = []
    encoder: PromptEncoder

    def encode(text: str) -> str:
        calls.append(text)
        if text == "changing":
            encoder.forget()  # the weights changed while this one was being encoded
        return f"{text}#{len(calls)}"

    encoder = PromptEncoder(encode, ControlStore())
    assert encoder.encode("a") == encoder.encode("a") == "a#1"
    encoder.forget()
    assert encoder.encode("a") == "a#2"  # encoded again with the new weights
    assert encoder.encode("changing") == "changing#3"
    assert encoder.encode("changing") == "changing#4"  # the first was not kept
