"""A real MIDI round trip: a virtual input port opened by MidiInput, fed by a mido output.

Virtual ports need the system's MIDI service: the ALSA sequencer (``/dev/snd/seq``) on Linux,
CoreMIDI on macOS, or a JACK server with ``MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK``.
Windows has no virtual ports, and containers usually have no ``/dev/snd``: there it skips.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest

from livediffusion.control.controls import parse_message
from livediffusion.control.midi import MidiError, MidiInput
from livediffusion.control.midi_map import MidiMapper, parse_map

pytestmark = pytest.mark.integration

mido = pytest.importorskip("mido")

Received = queue.Queue[tuple[str, tuple[Any, ...]]]


@pytest.fixture
def virtual_input() -> Iterator[tuple[str, Received, MidiInput]]:
    received: Received = queue.Queue()

    def submit(address: str, args: tuple[Any, ...]) -> None:
        parse_message(address, args)  # as the server does: raises if bad
        received.put((address, args))

    midi_map = parse_map(
        {
            "control": [
                {"label": "fader", "cc": 7, "address": "/strength"},
                {"label": "knob", "cc": 8, "channel": 2, "address": "/seed", "range": [0, 127]},
                {"label": "pad", "note": 41, "address": "/preset/recall", "value": 3},
            ]
        },
        where="test",
    )
    mapper = MidiMapper(midi_map, current=lambda field: False)
    name = f"livediffusion-test-{os.getpid()}"
    try:
        midi = MidiInput(name, mapper, submit, virtual=True)
    except MidiError as exc:
        pytest.skip(f"no virtual MIDI ports on this system ({exc})")
    with midi:
        yield name, received, midi


def _output_to(name: str) -> Any:
    """The system names the virtual port after the client on some APIs (ALSA:
    ``RtMidiIn Client:NAME 128:0``), so find it among the outputs by its part."""
    deadline = time.monotonic() + 5
    while True:
        matches = [n for n in mido.get_output_names() if name in n]
        if matches:
            return mido.open_output(matches[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"virtual port {name!r} not among {mido.get_output_names()}")
        time.sleep(0.05)


def _next(received: Received) -> tuple[str, tuple[Any, ...]]:
    return received.get(timeout=5)


def test_cc_and_notes_on_a_virtual_port_reach_submit(
    virtual_input: tuple[str, Received, MidiInput],
) -> None:
    name, received, midi = virtual_input
    with _output_to(name) as out:
        out.send(mido.Message("control_change", control=7, value=127))
        assert _next(received) == ("/strength", (1.0,))
        out.send(mido.Message("control_change", control=7, value=0, channel=5))
        assert _next(received) == ("/strength", (0.0,))
        out.send(mido.Message("control_change", control=8, value=64, channel=0))  # not ch 2
        out.send(mido.Message("control_change", control=8, value=64, channel=1))
        assert _next(received) == ("/seed", (64,))
        out.send(mido.Message("note_on", note=41, velocity=100))
        out.send(mido.Message("note_off", note=41))
        assert _next(received) == ("/preset/recall", (3,))
        out.send(mido.Message("control_change", control=9, value=1))  # not mapped
        time.sleep(0.2)
    assert received.empty()
    assert midi.received == 7
    assert midi.rejected == 0 and midi.failed == 0
