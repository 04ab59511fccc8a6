"""The generated tables in the docs are the code's: a change to either without the other fails."""

from __future__ import annotations

import re
from pathlib import Path

from livediffusion.control.controls import format_address_table
from livediffusion.options import options_table

ROOT = Path(__file__).resolve().parents[2]


def _between(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert match, f"no {name} markers"
    return match.group(1)


def test_readme_osc_table_is_generated_from_the_server_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _between(readme, "osc-table") == format_address_table(markdown=True)


def test_configuration_page_lists_every_setting() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert _between(page, "options-table") == options_table()


# -- the README's other facts, checked against the code ----------------------------------------

README = ROOT / "README.md"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _commands(text: str) -> list[list[str]]:
    """Each `livediffusion ...` and `./run serve ...` command in the bash blocks, as argv
    (continuation lines joined, comments and shell redirections cut)."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for cut in (">", "|", "&&"):
                if cut in words:
                    words = words[: words.index(cut)]
            if words[:2] == ["./run", "serve"]:
                commands.append(["serve", *words[2:]])
            elif words and words[0].endswith("livediffusion"):
                commands.append(words[1:])
    return commands


def test_every_command_in_the_readme_is_one_the_cli_takes() -> None:
    """Flags renamed or removed in the code, values the checks now refuse: the README's
    commands go through the real parser (nothing runs)."""
    from livediffusion.cli import build_parser

    commands = _commands(_readme())
    assert len(commands) >= 20
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse's way to refuse
            raise AssertionError(f"the README's `livediffusion {' '.join(argv)}`") from exc


def test_every_flag_the_readme_names_exists() -> None:
    import argparse

    from livediffusion.cli import build_parser

    parser = build_parser()
    known = {"--help", "--verbose"}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                for option in command._actions:
                    known.update(option.option_strings)
    text = re.sub(r"--\w+ thread", "", _readme())  # the diagram's "--capture thread-->"
    text = re.sub(r"`pip install [^`]*`", "", text)  # pip's own flags
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert named - known == set()


def test_every_osc_address_the_readme_names_is_one_the_server_takes() -> None:
    from livediffusion.control.controls import canonical_address

    addresses = set(re.findall(r"`(/[a-z0-9/_]+)`", _readme()))
    assert len(addresses) > 15
    streams = set(re.findall(r"--stream (\w+) ", _readme()))  # the examples' stream names
    assert {"cam", "td", "clip"} <= streams
    for address in addresses - {"/stage1", "/pong"}:  # a prefix; the reply to /ping
        head = "/" + address.split("/")[1]
        prefix = "/stage1" if head == "/stage1" else head if head[1:] in streams else ""
        assert canonical_address(address, prefix=prefix) is not None, address


def test_the_status_reply_is_described_as_the_server_sends_it() -> None:
    """The OSC table said `latency_ms` where the text said `latency_p50_ms`."""
    from livediffusion.control.controls import CONTROLS

    fields = (
        "in_fps out_fps latency_p50_ms dropped model backend osc_rejected controlnet_scale "
        "lora_weights"
    )
    assert CONTROLS["/status"].effect == f"reply /status {fields}"
    text = re.sub(r"\s+", " ", _readme())
    assert f"`/status {fields}` (f f f i s s i f s;" in text
    example = (ROOT / "examples" / "osc" / "livediffusion_osc.py").read_text(encoding="utf-8")
    assert re.search(
        r"STATUS_FIELDS = \(\s*" + r",\s*".join(f'"{f}"' for f in fields.split()), example
    )


def test_the_numbers_in_the_readme_are_the_codes() -> None:
    from livediffusion.config import MAX_STREAMS, ServeConfig
    from livediffusion.control.controls import MAX_PROMPT_CHARS
    from livediffusion.run.engine import EngineOptions
    from livediffusion_bridge.osc import LOG_INTERVAL, LOG_LINES, OscServer
    from livediffusion_models.registry import get_model

    config, engine = ServeConfig(), EngineOptions()
    server_defaults = OscServer.__init__.__kwdefaults__ or {}
    text = re.sub(r"\s+", " ", _readme())
    facts = {
        f"OSC on :{config.osc_port}": True,
        f"where OSC is received ({config.osc_host}:{config.osc_port})": True,
        f"Datagrams over {server_defaults['max_datagram'] // 1024} KiB": True,
        f"prompts over {MAX_PROMPT_CHARS} characters": True,
        f"from one sender ({config.osc_rate:g})": True,
        f"at most {LOG_LINES} lines per kind every {LOG_INTERVAL:g} s": True,
        f"re-sent at {engine.fallback_fps:g} fps": True,
        f"After {engine.max_failures} failures in a row": True,
        f"tried again every {engine.retry_after:g} s": True,
        f"{engine.stall_factor:g} times this machine's usual frame time and at least "
        f"{engine.stall_after:g} s": True,
        f"multiple of 64; default {get_model(config.model).default_size}": True,
        f"source -> sink pairs (up to {MAX_STREAMS})": True,
    }
    missing = [fact for fact in facts if fact.lower() not in text.lower()]
    assert missing == []
