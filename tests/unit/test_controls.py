from __future__ import annotations

import math
import threading

import pytest

from livediffusion.control.controls import (
    CONTROLS,
    ControlError,
    Controls,
    ControlStore,
    address_table,
    canonical_address,
    parse_message,
    validate_values,
)


@pytest.mark.parametrize(
    ("address", "args", "expected"),
    [
        ("/strength", (0.42,), {"strength": 0.42}),
        ("/strength", (1,), {"strength": 1.0}),  # ints accepted where numbers are expected
        ("/feedback", (0,), {"feedback": 0.0}),
        ("/smoothing", (0.9,), {"smoothing": 0.9}),
        ("/blend", (1.0,), {"blend": 1.0}),
        ("/seed", (7,), {"seed": 7}),
        ("/seed", (7.0,), {"seed": 7}),  # TouchDesigner sends floats
        ("/bypass", (1.0,), {"bypass": True}),
        ("/bypass", (False,), {"bypass": False}),
        ("/pause", (1,), {"paused": True}),
        ("/prompt", ("neon jellyfish",), {"prompt": "neon jellyfish"}),
        ("/prompt", ("",), {"prompt": ""}),
        ("/prompt/a", ("a",), {"prompt": "a"}),
        ("/prompt/b", ("b",), {"prompt_b": "b"}),
        ("/prompt/mix", (1,), {"prompt_mix": 1.0}),
        ("/glide", (2,), {"glide": 2.0}),
        ("/prompt/glide", (0.0,), {"prompt_glide": 0.0}),
        ("/seed/glide", (60.0,), {"seed_glide": 60.0}),
    ],
)
def test_valid_messages(
    address: str, args: tuple[object, ...], expected: dict[str, object]
) -> None:
    command = parse_message(address, args)
    assert {command.spec.field: command.value} == expected
    assert type(command.value) is type(next(iter(expected.values())))


@pytest.mark.parametrize(
    ("address", "args", "value"),
    [
        ("/preset/save", (3,), 3),
        ("/preset/recall", (3.0,), 3),  # TouchDesigner's float for a whole number
        ("/reset", (), True),
        ("/reset", (1.0,), True),
        ("/reset", (0,), None),  # a button's release: nothing to do
        ("/ping", ("x", 1), ("x", 1)),
        ("/status", (), ()),
    ],
)
def test_actions(address: str, args: tuple[object, ...], value: object) -> None:
    command = parse_message(address, args)
    assert command.spec.field is None
    assert command.value == value


@pytest.mark.parametrize(
    ("address", "args", "fragment"),
    [
        ("/strength", (1.5,), "between 0 and 1"),
        ("/strength", (-0.1,), "between 0 and 1"),
        ("/strength", (math.nan,), "nan"),
        ("/strength", ("high",), "takes a number"),
        ("/strength", (), "one number"),
        ("/strength", (0.1, 0.2), "one number"),
        ("/strength", (True,), "takes a number"),
        ("/seed", (1.5,), "whole number"),
        ("/seed", (-1,), "between 0"),
        ("/seed", (2**40,), "between 0"),
        ("/bypass", (0.5,), "0 or 1"),
        ("/prompt", (3,), "one string"),
        ("/prompt", ("x" * 5000,), "at most"),
        ("/nonsense", (1,), "unknown address"),
        ("/prompt", ("a\0b",), "NUL"),
        ("/prompt/mix", (1.01,), "between 0 and 1"),
        ("/glide", (-1,), "between 0 and 60"),
        ("/glide", (61,), "between 0 and 60"),
        ("/preset/save", (1.5,), "whole number"),
        ("/preset/recall", (1000,), "between 0 and 999"),
        ("/preset/recall", (), "one number"),
        ("/preset/recall", ("../../etc/passwd",), "takes a number"),
        ("/reset", (2,), "0 or 1"),
    ],
)
def test_invalid_messages_raise_control_error(
    address: str, args: tuple[object, ...], fragment: str
) -> None:
    with pytest.raises(ControlError, match=fragment):
        parse_message(address, args)


@pytest.mark.parametrize(
    ("sent", "prefix", "expected"),
    [
        ("/strength", "", "/strength"),
        ("strength", "", "/strength"),  # a TouchDesigner channel name
        ("prompt_mix", "", "/prompt/mix"),  # channel names cannot hold every character
        ("/prompt/mix", "", "/prompt/mix"),
        ("preset_recall", "", "/preset/recall"),
        ("/stage1/strength", "/stage1", "/strength"),
        ("stage1/prompt_mix", "/stage1", "/prompt/mix"),
        ("stage1_prompt_mix", "/stage1", "/prompt/mix"),
        ("/my_show/strength", "/my_show", "/strength"),  # underscores in the prefix itself
        ("my_show_strength", "/my_show", "/strength"),
        ("/strength", "/stage1", None),  # under a prefix, the prefix is required
        ("/stage2/strength", "/stage1", None),
        ("/stage1", "/stage1", None),
        ("/stage1/", "/stage1", None),
        ("/stage1strength", "/stage1", None),
        ("/nope", "", None),
        ("", "", None),
    ],
)
def test_canonical_address(sent: str, prefix: str, expected: str | None) -> None:
    assert canonical_address(sent, prefix=prefix) == expected


def test_address_table_is_the_control_table() -> None:
    rows = address_table("/x")
    assert [row[0] for row in rows] == ["/x" + address for address in CONTROLS]
    strength = next(row for row in rows if row[0] == "/x/strength")
    assert strength[1:4] == ("float", "0..1", "1")


def test_validate_values_names_the_key() -> None:
    assert validate_values({"strength": 0.5, "bypass": 1}, where="f") == {
        "strength": 0.5,
        "bypass": True,
    }
    with pytest.raises(ControlError, match=r"f: strength: .*between 0 and 1"):
        validate_values({"strength": 5}, where="f")
    with pytest.raises(ControlError, match="unknown control 'colour'"):
        validate_values({"colour": 1}, where="f")


def test_store_rejects_bad_messages_without_changing_anything() -> None:
    store = ControlStore(Controls(strength=0.3))
    before = store.snapshot()
    with pytest.raises(ValueError):
        store.handle_osc("/strength", (9.0,))
    assert store.snapshot() is before
    assert store.version == 0


def test_store_swaps_snapshots_and_wakes_waiters() -> None:
    store = ControlStore()
    first = store.snapshot()
    seen: list[int] = []

    def waiter() -> None:
        seen.append(store.wait_for_change(0, timeout=5.0))

    thread = threading.Thread(target=waiter)
    thread.start()
    store.handle_osc("/strength", (0.25,))
    thread.join(timeout=5.0)
    assert seen == [1]
    assert first.strength == 1.0  # the old snapshot is untouched
    assert store.snapshot().strength == 0.25


def test_wait_for_change_times_out() -> None:
    store = ControlStore()
    assert store.wait_for_change(0, timeout=0.01) == 0


def test_cli_strength_defaults_to_the_models_own() -> None:
    from livediffusion.cli import _serve_config, build_parser

    def config(*extra: str) -> float:
        args = build_parser().parse_args(["serve", *extra])
        return _serve_config(args).controls.strength

    assert config() == 1.0  # SDXS: t=999, its only trained timestep
    assert config("--model", "sd-turbo") == 0.5  # SD-Turbo's img2img recipe
    assert config("--model", "sd-turbo", "--strength", "0.8") == 0.8


def test_store_counts_resets_and_carries_a_recall_glide() -> None:
    store = ControlStore(Controls(glide=0.25))
    seen: list[dict[str, object]] = []
    store.subscribe(lambda changes: seen.append(dict(changes)))
    store.request_reset()
    assert store.resets == 1
    store.update(strength=0.5)
    assert store.glide_seconds() == 0.25
    store.update(ramp_seconds=2.0, strength=0.1, prompt="p")
    assert store.glide_seconds() == 2.0
    store.update(blend=0.2)  # the next ordinary change glides at /glide again
    assert store.glide_seconds() == 0.25
    assert seen == [{"strength": 0.5}, {"strength": 0.1, "prompt": "p"}, {"blend": 0.2}]


def test_osc_float32_values_read_as_sent() -> None:
    import struct

    as_sent = struct.unpack(">f", struct.pack(">f", 0.4))[0]
    assert as_sent != 0.4
    assert parse_message("/strength", (as_sent,)).value == 0.4
