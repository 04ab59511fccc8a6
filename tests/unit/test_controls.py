from __future__ import annotations

import math
import threading

import pytest

from livediffusion.controls import ControlError, Controls, ControlStore, parse_message


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
    ],
)
def test_valid_messages(
    address: str, args: tuple[object, ...], expected: dict[str, object]
) -> None:
    assert parse_message(address, args) == expected


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
    ],
)
def test_invalid_messages_raise_control_error(
    address: str, args: tuple[object, ...], fragment: str
) -> None:
    with pytest.raises(ControlError, match=fragment):
        parse_message(address, args)


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
