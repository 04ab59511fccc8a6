"""Settings: one table gives the flags, the TOML file and the docs; every key round-trips and
every bad value is named with what is allowed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from livediffusion.cli import _serve_config, build_parser
from livediffusion.config_file import (
    config_from_values,
    format_toml,
    read_config_file,
    values_from_config,
)
from livediffusion.control.controls import Controls
from livediffusion.control.presets import PresetFile
from livediffusion.options import BY_KEY, OPTIONS, ConfigFileError, options_table

# a value other than the default for every key, as a TOML file would hold it
CHANGED: dict[str, str] = {
    "source": '"ndi://STUDIO (TouchDesigner)"',
    "sink": '"spout://out"',
    "size": '"768x512"',
    "fit": '"letterbox"',
    "output_size": '"1920x1080"',
    "model": '"sd-turbo"',
    "weights": '"/models/sd-turbo"',
    "backend": '"torch"',
    "device": '"cuda:1"',
    "dtype": '"bfloat16"',
    "compile": '"off"',
    "skip_similar": "0.02",
    "cache_dir": '"/tmp/cache dir"',
    "lora": '[{path = "styles/ink.safetensors", weight = 0.8}, {path = "owner/glow"}]',
    "lora_runtime": '"peft"',
    "controlnet": '"sd21-canny"',
    "lora_styles": "true",
    "controlnet_scale": "1.5",
    "variant": '"stages"',
    "precision": '"fp32"',
    "target": '"macOS14"',
    "compute_units": '"all"',
    "states": '"off"',
    "low_precision_accumulation": "true",
    "specialization": '"fast-prediction"',
    "prompt": '"a \\"quoted\\" prompt, café"',
    "prompt_b": '"second look"',
    "prompt_mix": "0.25",
    "strength": "0.75",
    "seed": "4294967295",
    "feedback": "0.5",
    "smoothing": "0.0",
    "blend": "1.0",
    "glide": "2.5",
    "prompt_glide": "0.0",
    "seed_glide": "3.0",
    "preset": "12",
    "presets": '"/tmp/my presets.json"',
    "recall_glide": "0.0",
    "osc_host": '"0.0.0.0"',
    "osc_port": "9100",
    "osc_prefix": '"/stage1"',
    "osc_allow": '["192.168.1.0/24", "10.0.0.5"]',
    "osc_reply": '"192.168.1.20:9001"',
    "osc_echo": "true",
    "osc_rate": "500.0",
    "midi": '"nanoKONTROL2"',
    "midi_map": '"nanokontrol2"',
    "on_source_loss": '"hold-input"',
    "preview": '"side-by-side"',
    "log_level": '"debug"',
    "log_file": '"/tmp/livediffusion show.log"',
    "status_interval": "0.5",
    "duration": "60.0",
}

# a bad value for every key, and what the message must say is allowed
BAD: dict[str, tuple[str, str]] = {
    "source": ("5", "must be a string"),
    "sink": ("true", "must be a string"),
    "size": ('"500"', "multiple of 64"),
    "fit": ('"zoom"', "one of crop, letterbox"),
    "output_size": ('"big"', "N or WIDTHxHEIGHT"),
    "model": ('"sdxl"', "one of sdxs-512-0.9"),
    "weights": ("1", "must be a string"),
    "backend": ('"tensorrt"', "one of auto, torch"),
    "device": ('"tpu"', "one of auto, cuda, cuda:N, mps, cpu"),
    "dtype": ('"int8"', "one of auto, float16"),
    "compile": ('"fast"', "one of off, default, max"),
    "skip_similar": ("1.5", "a number from 0 to 1"),
    "cache_dir": ("[1]", "must be a string"),
    "lora": ("5", "write each as a [[lora]] table"),
    "lora_runtime": ('"fused"', "one of in-place, peft"),
    "controlnet": ("3", "must be a string"),
    "lora_styles": ('"maybe"', "true or false"),
    "controlnet_scale": ("2.5", "between 0 and 2"),
    "variant": ('"split"', "one of fused, stages"),
    "precision": ('"int8"', "one of fp16, fp32"),
    "target": ('"macOS13"', "one of auto, macOS14, macOS15"),
    "compute_units": ('"gpu"', "one of cpu_and_gpu"),
    "states": ('"maybe"', "one of auto, on, off"),
    "low_precision_accumulation": ('"yes please"', "true or false"),
    "specialization": ('"fast"', "one of default, fast-prediction"),
    "prompt": ("3", "one string"),
    "prompt_b": ('"' + "x" * 2001 + '"', "at most 2000"),
    "prompt_mix": ("1.5", "between 0 and 1"),
    "strength": ("-0.5", "between 0 and 1"),
    "seed": ("1.5", "whole number"),
    "feedback": ('"lots"', "a number"),
    "smoothing": ("2", "between 0 and 1"),
    "blend": ("-1", "between 0 and 1"),
    "glide": ("61", "between 0 and 60"),
    "prompt_glide": ("-1", "between 0 and 60"),
    "seed_glide": ("100", "between 0 and 60"),
    "preset": ("1000", "whole number 0..999"),
    "presets": ("2", "must be a string"),
    "recall_glide": ("-2", "seconds >= 0"),
    "osc_host": ('"my host"', "an address like"),
    "osc_port": ("70000", "whole number 1..65535"),
    "osc_prefix": ('"stage1"', "like /stage1"),
    "osc_allow": ('["300.1.1.1"]', "addresses or networks"),
    "osc_reply": ('"localhost"', "HOST:PORT"),
    "osc_echo": ('"sometimes"', "true or false"),
    "osc_rate": ("0", "datagrams per second > 0"),
    "midi": ("7", "must be a string"),
    "midi_map": ("false", "must be a string"),
    "on_source_loss": ('"freeze"', "one of last, black, hold-input"),
    "preview": ('"both"', "one of off, on, side-by-side"),
    "log_level": ('"loud"', "one of debug, info, warning, error"),
    "log_file": ("3", "must be a string"),
    "status_interval": ("0", "seconds > 0"),
    "duration": ("-5", "seconds >= 0"),
}


STREAM_KEYS = {"stream", "midi_stream"}
"""Keys that contradict --source/--sink: tests/unit/test_stream_options.py covers them."""


def test_the_tables_cover_every_key() -> None:
    assert set(CHANGED) | STREAM_KEYS == set(BY_KEY)
    assert set(BAD) | STREAM_KEYS == set(BY_KEY)
    table = options_table()
    assert all(f"`{option.flag}`" in table for option in OPTIONS)


def _write(tmp_path: Path, text: str, name: str = "show.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_key_round_trips_through_the_file(tmp_path: Path) -> None:
    document = "\n".join(f"{key} = {value}" for key, value in CHANGED.items())
    values = read_config_file(_write(tmp_path, document))
    config = config_from_values(values)
    defaults = config_from_values({})
    for key in CHANGED:  # every key took effect, none is the default any more
        assert values_from_config(config)[key] != values_from_config(defaults)[key], key
    assert not config.streams
    printed = format_toml(values_from_config(config))
    again = config_from_values(read_config_file(_write(tmp_path, printed, "printed.toml")))
    assert again == config
    assert config.controls.prompt == 'a "quoted" prompt, café'
    assert config.size == (512, 768) and config.output_size == (1080, 1920)
    assert config.osc_reply == ("192.168.1.20", 9001)
    assert config.coreml.states is False


def test_the_default_configuration_round_trips(tmp_path: Path) -> None:
    config = config_from_values({})
    printed = format_toml(values_from_config(config))
    assert config_from_values(read_config_file(_write(tmp_path, printed))) == config


@pytest.mark.parametrize("key", sorted(BAD))
def test_every_bad_value_is_named(tmp_path: Path, key: str) -> None:
    value, allowed = BAD[key]
    group = BY_KEY[key].group
    path = _write(tmp_path, f"[{group}]\n{key} = {value}\n")
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"[{group}] {key}" in message
    assert allowed in message
    assert value[:20].strip('"[]') in message  # the bad value itself
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("osc_prot = 9000", "unknown key; did you mean osc_port"),
        ("[look]\nosc_port = 9000", "osc_port belongs in [osc]"),
        ("osc_port = 9000\n[osc]\nosc_port = 9001", "osc_port is given twice"),
        ("osc_port = ", "is not valid TOML"),
        ("[colour]\nhue = 1", "unknown key"),
    ],
)
def test_file_mistakes_are_named(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigFileError, match=re.escape(fragment)):
        read_config_file(_write(tmp_path, text))


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="does not exist"):
        read_config_file(tmp_path / "nope.toml")


def _config(*argv: str) -> Any:
    return _serve_config(build_parser().parse_args(["serve", *argv]))


def test_flags_override_the_file_and_the_file_overrides_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, '[osc]\nosc_port = 9100\nosc_prefix = "/a"\n[look]\nblend = 0.5\n')
    config = _config("--config", str(path), "--osc-port", "9200", "--no-osc-echo")
    assert config.osc_port == 9200  # the flag
    assert config.osc_prefix == "/a"  # the file
    assert config.controls.blend == 0.5  # the file
    assert config.controls.feedback == Controls().feedback  # the default
    assert config.osc_echo is False


def test_a_preset_at_start_up_gives_way_to_flags(tmp_path: Path) -> None:
    presets = PresetFile(tmp_path / "presets.json")
    presets.save(2, Controls(prompt="saved", blend=0.3, strength=0.4, glide=1.0))
    config = _config("--presets", str(presets.path), "--preset", "2", "--blend", "0.9")
    assert config.controls.prompt == "saved"
    assert config.controls.strength == 0.4 and config.controls.glide == 1.0
    assert config.controls.blend == 0.9  # the flag wins
    with pytest.raises(ValueError, match="preset 3 is not saved"):
        _config("--presets", str(presets.path), "--preset", "3")


def test_contradictions_are_refused() -> None:
    with pytest.raises(ValueError, match="--osc-reply"):
        config_from_values({"osc_echo": True})
    with pytest.raises(ValueError, match="--midi-map"):
        config_from_values({"midi": "nano"})


def test_defaults_live_in_the_dataclasses() -> None:
    from livediffusion.config import ServeConfig

    config = config_from_values({})
    assert dataclasses.replace(config, controls=Controls()) == ServeConfig()
    assert BY_KEY["osc_port"].default == ServeConfig().osc_port
    assert BY_KEY["smoothing"].default == Controls().smoothing


def test_a_bad_flag_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", "--osc-port", "70000"])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "--osc-port: must be a whole number 1..65535, got '70000'" in error


def test_config_print_writes_the_real_source_and_sink_and_reads_them_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It wrote source = "" and sink = "" (an empty value silently meant the default)."""
    from livediffusion.cli import main
    from livediffusion.config import default_sink, default_source

    assert main(["config", "--print"]) == 0
    printed = capsys.readouterr().out
    assert f'source = "{default_source()}"' in printed
    assert f'sink = "{default_sink()}"' in printed
    assert 'source = ""' not in printed and 'sink = ""' not in printed
    path = tmp_path / "printed.toml"
    path.write_text(printed, encoding="utf-8")
    values = read_config_file(path)
    assert values["source"] == default_source() and values["sink"] == default_sink()
    assert config_from_values(values) == config_from_values({})


@pytest.mark.parametrize("key", ["source", "sink"])
def test_an_empty_uri_is_refused_in_one_line(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", f"--{key}", ""])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert f"--{key}: must be a {key} URI" in error and "leave it out for the default" in error
    path = tmp_path / "empty.toml"
    path.write_text(f'[frames]\n{key} = ""\n', encoding="utf-8")
    with pytest.raises(ConfigFileError, match=f'{key} = "": must be a {key} URI'):
        read_config_file(path)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--sink", "test://pattern"], "test:// can only be a source"),
        (["--source", "window://"], "window:// can only be a sink"),
        (["--source", "ndi"], "not a source/sink URI"),
        (["--sink", "rtmp://x"], "unknown scheme"),
        (["--midi-map", "nosuchmap"], "no MIDI map 'nosuchmap'"),
        (["--midi", "nano", "--midi-map", "nosuchmap"], "no MIDI map 'nosuchmap'"),
    ],
)
def test_uris_and_midi_maps_are_checked_before_anything_opens(
    flags: list[str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--midi-map nosuchmap` ran and exited 0; with --midi it was refused after OSC had
    started. Now every such value is refused while the flags are read."""
    import livediffusion.run.server
    from livediffusion.cli import main

    def no_server(*args: object, **kwargs: object) -> int:
        raise AssertionError("the server started")

    monkeypatch.setattr(livediffusion.run.server, "run_server", no_server)
    with pytest.raises(SystemExit) as caught:
        main(["serve", *flags])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and says in error


def test_a_midi_map_without_midi_says_it_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from livediffusion.run.server import run_server
    from livediffusion_bridge import TransportError

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        config = config_from_values(
            {"midi_map": "nanokontrol2", "osc_port": taken.getsockname()[1]}
        )
        with pytest.raises(TransportError, match="in use"):  # stops it before anything slow
            run_server(config)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "--midi-map nanokontrol2 does nothing without --midi PORT" in warning.getMessage()


def test_long_values_are_cut_in_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config prompt over 2000 characters came back whole in the error: a 3 KB line."""
    path = tmp_path / "long.toml"
    path.write_text(f'[look]\nprompt = "{"very long prompt " * 200}"\n', encoding="utf-8")
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(path)
    message = str(caught.value)
    assert "at most 2000" in message and "(3402 characters)" in message
    assert len(message) < 400 + len(str(path))
    for flags in (["--source", "ndi:/" + "x" * 3000], ["--sink", "x" * 3000 + "://y"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *flags])
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and len(error) < 400, error
