"""Several streams in one serve: --stream NAME SOURCE SINK and [[stream]] tables, each bad
definition refused with one line (exit 2 from the command), a good one round-tripping through
``config --print``."""

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
from livediffusion.options import ConfigFileError


def _config(*argv: str) -> Any:
    return _serve_config(build_parser().parse_args(["serve", *argv]))


def _write(tmp_path: Path, text: str, name: str = "show.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_streams_from_flags_share_the_look_and_keep_their_names() -> None:
    config = _config(
        "--stream", "cam", "ndi://CAM", "ndi://cam-out",
        "--stream", "clip", "file:///tmp/x.mp4", "memory://clip-out",
        "--strength", "0.3",
    )  # fmt: skip
    assert [(s.name, s.source, s.sink) for s in config.streams] == [
        ("cam", "ndi://CAM", "ndi://cam-out"),
        ("clip", "file:///tmp/x.mp4", "memory://clip-out"),
    ]
    assert all(stream.controls.strength == 0.3 for stream in config.streams)
    assert config.stream_list() == config.streams


def test_without_streams_there_is_one_unnamed_stream() -> None:
    config = _config("--source", "test://pattern", "--sink", "memory://out")
    (only,) = config.stream_list()
    assert (only.name, only.source, only.sink) == ("", "test://pattern", "memory://out")
    assert only.controls == config.controls


def test_a_stream_table_sets_its_own_look_and_round_trips(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'strength = 0.8\nprompt = "shared"\n[midi]\nmidi_stream = "clip"\n'
        '[[stream]]\nname = "cam"\nsource = "ndi://CAM"\nsink = "ndi://cam-out"\n'
        'prompt = "ink"\n'
        '[[stream]]\nname = "clip"\nsource = "test://pattern"\nsink = "memory://c"\n'
        "strength = 0.2\nseed = 7\n",
    )
    config = config_from_values(read_config_file(path))
    cam, clip = config.streams
    assert (cam.controls.prompt, cam.controls.strength) == ("ink", 0.8)
    assert (clip.controls.prompt, clip.controls.strength, clip.controls.seed) == (
        "shared",
        0.2,
        7,
    )
    assert config.midi_stream == "clip"
    printed = format_toml(values_from_config(config))
    assert "[[stream]]" in printed and 'source = "ndi://CAM"' in printed
    assert config_from_values(read_config_file(_write(tmp_path, printed, "p.toml"))) == config


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--stream", "cam", "test://pattern", "memory://a", "--source", "ndi://X"],
         "leave out --source"),
        (["--stream", "cam", "test://pattern", "memory://a", "--sink", "ndi://X"],
         "leave out --sink"),
        (["--stream", "status", "test://pattern", "memory://a"], "already an OSC address"),
        (["--stream", "lora", "test://pattern", "memory://a"], "already an OSC address"),
        (["--stream", "2cam", "test://pattern", "memory://a"], "a letter, then letters"),
        (["--stream", "my_cam", "test://pattern", "memory://a"], "a letter, then letters"),
        (["--stream", "cam", "test://pattern", "memory://a",
          "--stream", "CAM", "test://pattern", "memory://b"], "two streams are called"),
        (["--stream", "a", "test://pattern", "memory://x",
          "--stream", "b", "test://pattern", "memory://x"], "both publish to memory://x"),
        (["--stream", "cam", "nope://x", "memory://a"], "stream 'cam': unknown scheme"),
        (["--stream", "cam", "test://pattern", ""], "stream 'cam': must be a sink URI"),
        (["--midi-stream", "x", "--stream", "cam", "test://pattern", "memory://a"],
         "no such stream (cam)"),
        (["--midi-stream", "cam"], "no such stream (none: give --stream)"),
    ],
)  # fmt: skip
def test_bad_stream_definitions_are_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "--print", *argv]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert fragment in error
    assert error.count("\n") == 0 and captured.out == ""


def test_seventeen_streams_are_too_many() -> None:
    argv = []
    for k in range(17):
        argv += ["--stream", f"s{k}", "test://pattern", f"memory://o{k}"]
    with pytest.raises(ValueError, match="at most 16"):
        _config(*argv)


def test_a_stream_missing_its_words_is_argparse_s_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["serve", "--stream", "cam", "test://pattern"])
    assert caught.value.code == 2
    assert "--stream: expected 3 arguments" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[[stream]]\nname = "cam"\nsource = "test://pattern"\n', "sink missing"),
        ('[[stream]]\nname = "cam"\nsource = "test://pattern"\nsink = "memory://a"\n'
         "strenght = 0.5\n", "unknown key 'strenght'"),
        ('[[stream]]\nname = "cam"\nsource = "test://pattern"\nsink = "memory://a"\n'
         "strength = 2\n", "stream 'cam': strength: must be between 0 and 1"),
        ('stream = "cam"\n', "write each as a [[stream]] table"),
    ],
)  # fmt: skip
def test_bad_stream_tables_name_the_table(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(path)
    message = str(caught.value)
    assert fragment in message and str(path) in message and "\n" not in message
