"""The OSC length check that stops python-osc from reading a short datagram as zeros."""

from __future__ import annotations

import struct

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from livediffusion_bridge.osc import check_message_size


def _build(address: str, *args: object) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


@pytest.mark.parametrize(
    "args",
    [(), (0.5,), (3,), ("neon",), ("abc", 1.0, 2), (True,), (b"\x01\x02\x03",), (2**40,)],
)
def test_well_formed_messages_pass(args: tuple[object, ...]) -> None:
    assert check_message_size(_build("/x", *args)) is None


def test_no_type_tags_at_all_is_accepted() -> None:
    assert check_message_size(b"/x\x00\x00") is None


@pytest.mark.parametrize(
    ("dgram", "fragment"),
    [
        (_build("/strength", 0.5)[:-4], "truncated"),
        (_build("/strength", 0.5)[:-1], "truncated"),
        (_build("/strength", 0.5) + b"\x00\x00\x00\x00", "stray"),
        (_build("/prompt", "abcd")[:-4], "unterminated"),
        (b"/x\x00\x00,f", "unterminated type tags"),
        (b"/x\x00\x00,q\x00\x00", "unknown type tag"),
    ],
)
def test_short_or_long_messages_are_reported(dgram: bytes, fragment: str) -> None:
    problem = check_message_size(dgram)
    assert problem is not None and fragment in problem


@pytest.mark.parametrize("name", ["strength", "abc", "abcd", "seed"])
def test_a_missing_leading_slash_is_added(name: str) -> None:
    from pythonosc.osc_message import OscMessage

    from livediffusion_bridge.osc import with_leading_slash

    # What a sender that leaves the slash off produces: the bare name, NUL-padded to 4 bytes.
    bare = name.encode() + b"\0" * (4 - len(name) % 4)
    dgram = bare + b",f\0\0" + struct.pack(">f", 0.25)
    fixed = with_leading_slash(dgram)
    message = OscMessage(fixed)
    assert message.address == "/" + name
    assert message.params == [0.25]
    assert check_message_size(fixed) is None
    assert dgram != fixed


def test_leading_slash_leaves_good_and_binary_datagrams_alone() -> None:
    from livediffusion_bridge.osc import with_leading_slash

    good = _build("/strength", 0.5)
    assert with_leading_slash(good) == good
    assert with_leading_slash(b"#bundle\x00rest") == b"#bundle\x00rest"
    assert with_leading_slash(b"\x01\x02\x00\x00") == b"\x01\x02\x00\x00"
    assert with_leading_slash(b"") == b""
