"""The stream router alone (no model, no sockets): which stream a message reaches."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from livediffusion.control.controls import ControlError, Controls, ControlStore
from livediffusion.control.presets import PresetFile
from livediffusion.control.streams import StreamRouter, combine_status
from livediffusion.control.styles import StyleStore
from livediffusion.control.surface import ControlSurface, StatusValues


class _Replies:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any]]] = []

    def send(self, address: str, args: Any, to: tuple[str, int]) -> bool:
        self.sent.append((address, list(args)))
        return True


def _router(
    tmp_path: Path, *, prefix: str = ""
) -> tuple[StreamRouter, list[ControlStore], StyleStore]:
    stores = [ControlStore(Controls()), ControlStore(Controls())]
    styles = StyleStore([0.5])
    presets = PresetFile(tmp_path / "presets.json")

    def status(k: int) -> Any:
        def values() -> StatusValues:
            return (30.0 + k, 29.0 + k, 10.0 * (k + 1), k, "m", "b", 0, 0.0, "0.5")

        return values

    surfaces = [
        ControlSurface(store, presets=presets, status=status(k), prefix=f"{prefix}/{name}",
                       stream=name, styles=styles)
        for k, (name, store) in enumerate(zip(("cam", "clip"), stores, strict=True))
    ]  # fmt: skip
    router = StreamRouter(surfaces, prefix=prefix)
    return router, stores, styles


def test_a_named_address_reaches_only_its_stream(tmp_path: Path) -> None:
    router, (cam, clip), _ = _router(tmp_path)
    router.submit("/cam/strength", (0.25,))
    router.submit("clip_seed", (7.0,))  # TouchDesigner's channel name, a float
    assert (cam.snapshot().strength, cam.snapshot().seed) == (0.25, 42)
    assert (clip.snapshot().strength, clip.snapshot().seed) == (1.0, 7)


def test_a_plain_address_reaches_every_stream(tmp_path: Path) -> None:
    router, stores, _ = _router(tmp_path)
    router.submit("/blend", (0.75,))
    router.submit("/reset", ())
    assert [store.snapshot().blend for store in stores] == [0.75, 0.75]
    assert [store.resets for store in stores] == [1, 1]


def test_a_bad_value_changes_no_stream(tmp_path: Path) -> None:
    router, stores, _ = _router(tmp_path)
    with pytest.raises(ControlError, match="between 0 and 1"):
        router.submit("/strength", (3.0,))
    assert [store.version for store in stores] == [0, 0]


def test_lora_weights_are_the_model_s_not_a_stream_s(tmp_path: Path) -> None:
    router, _, styles = _router(tmp_path)
    router.submit("/lora/0/weight", (0.9,))
    assert styles.snapshot()[0].weight == pytest.approx(0.9)


def test_saving_a_preset_needs_a_stream_and_recall_reaches_all(tmp_path: Path) -> None:
    router, (_, clip), _ = _router(tmp_path)
    with pytest.raises(ControlError, match="/cam/preset/save 3"):
        router.submit("/preset/save", (3,))
    router.submit("/cam/strength", (0.3,))
    router.submit("/cam/preset/save", (3,))
    router.submit("/preset/recall", (3,))
    assert clip.snapshot().strength == 0.3  # the look saved from cam, recalled into both


def test_unknown_addresses_name_the_streams(tmp_path: Path) -> None:
    router, _, _ = _router(tmp_path, prefix="/show")
    with pytest.raises(ControlError, match=re.escape("streams: /show/cam/..., /show/clip/...")):
        router.submit("/show/cma/strength", (0.5,))
    router.submit("/show/clip/strength", (0.5,))  # under --osc-prefix too
    router.submit("/show/strength", (0.4,))


def test_status_for_all_sums_rates_and_takes_the_worst_latency(tmp_path: Path) -> None:
    router, _, _ = _router(tmp_path)
    replies = _Replies()
    router.attach(replies)
    router.submit("/status", (), sender=("127.0.0.1", 1))
    router.submit("/clip/status", (), sender=("127.0.0.1", 1))
    (all_address, every), (one_address, clip) = replies.sent
    assert all_address == "/status" and every[:4] == [61.0, 59.0, 20.0, 1]
    assert one_address == "/clip/status" and clip[:4] == [31.0, 30.0, 20.0, 1]
    assert combine_status([tuple(clip)])[:4] == tuple(clip[:4])  # type: ignore[arg-type]
