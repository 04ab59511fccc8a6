"""Placeholders before the model is ready: the card, the marked input, and the engine that
publishes them from open() on, before any backend exists."""

from __future__ import annotations

import threading
import time

import numpy as np

from livediffusion.control.controls import ControlStore
from livediffusion.run.engine import Engine, EngineOptions
from livediffusion.run.placeholder import _MASK, Placeholder
from livediffusion_bridge import memory, open_sink, open_source


def test_the_card_is_grey_with_the_label_in_the_middle() -> None:
    out = np.empty((512, 512, 4), dtype=np.uint8)
    Placeholder().card(out)
    ink = np.all(out[..., :3] == 235, axis=-1)
    assert np.all(out[..., 3] == 255)
    assert np.all(out[~ink][:, :3] == 40)
    scale = 512 // (2 * _MASK.shape[1])
    assert ink.sum() == _MASK.sum() * scale * scale
    rows, columns = np.nonzero(ink)
    assert abs((rows.min() + rows.max()) / 2 - 255.5) < scale * 2  # centred
    assert abs((columns.min() + columns.max()) / 2 - 255.5) < scale * 2


def test_the_input_is_passed_through_scaled_and_marked_in_its_corner() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (96, 128, 4), dtype=np.uint8)
    placeholder = Placeholder()
    same = np.empty_like(pixels)
    placeholder.from_input(pixels, same)
    box_h, box_w = 7 + 4, _MASK.shape[1] + 4  # scale 1, 2 pixels of padding
    assert np.array_equal(same[:-box_h], pixels[:-box_h])  # all but the box, unchanged
    assert np.array_equal(same[-box_h:, box_w:], pixels[-box_h:, box_w:])
    assert set(np.unique(same[-box_h:, :box_w, :3])) == {16, 235}
    bigger = np.empty((192, 256, 4), dtype=np.uint8)
    placeholder.from_input(pixels, bigger)
    assert np.array_equal(bigger[:100:2, ::2], pixels[:50])  # nearest pixel, 2x
    tiny = np.empty((8, 8, 4), dtype=np.uint8)
    placeholder.from_input(pixels, tiny)  # too small for a label: just the picture
    assert np.array_equal(tiny, pixels[::12, ::16])


def test_open_publishes_before_any_backend_exists() -> None:
    """The card while the source has nothing, then the input as it comes, at most
    placeholder_fps; no backend anywhere."""
    memory.reset()
    stop = threading.Event()
    engine = Engine(
        source=open_source("memory://ph-in"),
        sink=open_sink("memory://ph-out"),
        controls=ControlStore(),
        options=EngineOptions(placeholder_size=(64, 96), placeholder_fps=20),
        stop=stop,
    )
    out = memory.channel("ph-out")
    try:
        engine.open()
        cards = out.wait_published(3, timeout=10)
        assert all(frame.pixels.shape == (64, 96, 4) for frame in cards)
        assert np.all(cards[-1].pixels[:5, :5, :3] == 40)  # grey card
        picture = np.full((48, 80, 4), 200, dtype=np.uint8)
        began = time.monotonic()
        count = out.published_count
        while out.published_count < count + 10:
            assert time.monotonic() - began < 10, "the input was not passed through"
            memory.channel("ph-in").push(picture)
            time.sleep(0.01)
        elapsed = time.monotonic() - began
        latest = out.published[-1].pixels
        assert latest.shape == (48, 80, 4) and np.all(latest[:20] == 200)
        assert elapsed > 9 / 20 * 0.9  # no faster than placeholder_fps, though fed at 100
        assert engine.placeholders >= 13 and not engine.warm and not engine.has_backend
    finally:
        engine.stop()
        engine.source.close()
        engine.sink.close()
        memory.reset()
