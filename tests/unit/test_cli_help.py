"""``--help`` agrees with itself and with what the commands do: every option has help, a
command's own default is the one its help shows, and bad numbers are refused in one line."""

from __future__ import annotations

import argparse
import logging
import re

import pytest

from livediffusion.cli import build_parser, main
from livediffusion.options import BY_KEY, show_default


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return dict(subparsers.choices)


def _flat(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "")


def test_every_option_of_every_command_says_what_it_does() -> None:
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, command in _commands().items()
        for action in command._actions
        if action.option_strings and not action.help
    ]
    assert missing == []


def test_a_command_that_sets_its_own_default_shows_that_one() -> None:
    """doctor runs at 256x256 and bench and doctor on random weights: their --help said the
    model's 512 and the hub id (serve's defaults) while the description said otherwise."""
    checked = 0
    for name, command in _commands().items():
        for action in command._actions:
            option = BY_KEY.get(action.dest)
            if option is None or action.default in (argparse.SUPPRESS, option.default):
                continue
            shown = re.search(r"\(default: (.*)\)$", _flat(action.help))
            assert shown, f"{name} {action.option_strings[0]}: {action.help}"
            assert shown.group(1) == show_default(option, action.default), name
            checked += 1
    assert checked >= 3  # doctor --size, doctor --weights, bench --weights

    commands = _commands()
    doctor = commands["doctor"].parse_args([])
    assert doctor.size == (256, 256) and doctor.weights == "random"
    assert commands["bench"].parse_args([]).weights == "random"
    doctor_help = _flat(commands["doctor"].format_help())
    assert "256x256 unless --size" in doctor_help and "(default: 256x256)" in doctor_help
    assert "the model's (512)" not in doctor_help
    for name in ("doctor", "bench"):
        text = _flat(commands[name].format_help())
        assert "random unless --weights" in text and "(default: random)" in text
        assert "(default: the model's hub id)" not in text


@pytest.mark.parametrize("value", ["-3", "0", "nan", "inf", "soon"])
def test_sources_refuses_a_timeout_that_is_not_a_positive_time(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["sources", "--timeout", value])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "--timeout: must be a number of seconds > 0" in error and repr(value) in error


def test_a_cpu_start_says_nothing_about_compile(caplog: pytest.LogCaptureFixture) -> None:
    """--compile is on by default and only means something on CUDA: a CPU start logged
    "--compile applies to CUDA GPUs; cpu runs eager" every time without it being given."""
    from livediffusion_models.backends.torch_backend import TorchBackend, TorchOptions
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    model = load_model(get_model("sdxs-512-0.9"), "tiny")
    with caplog.at_level(logging.INFO):
        backend = TorchBackend.from_components(
            model, TorchOptions(size=(64, 64), device="cpu", compile="default")
        )
    try:
        assert backend.mode == "eager"
        assert [r.getMessage() for r in caplog.records if "compile" in r.getMessage()] == []
    finally:
        backend.close()
