"""The preset file: atomic, hand-editable, and never a way to lose or reach other files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livediffusion.control.controls import ControlError, Controls
from livediffusion.control.presets import PresetFile


def test_save_and_load_every_value_but_pause(tmp_path: Path) -> None:
    presets = PresetFile(tmp_path / "sub" / "presets.json")
    look = Controls(prompt="a", prompt_b="b", prompt_mix=0.5, seed=9, bypass=True, paused=True)
    presets.save(4, look)
    loaded = presets.load(4)
    assert loaded == {
        name: getattr(look, name) for name in loaded
    }  # every saved value comes back as it was
    assert "paused" not in loaded and set(loaded) | {"paused"} == set(Controls.__slots__)
    assert presets.numbers() == [4]
    assert not list(presets.path.parent.glob(".*.tmp"))  # the temporary was renamed


def test_a_hand_edited_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "presets.json"
    path.write_text(json.dumps({"format": 1, "presets": {"1": {"strength": 3}}}))
    with pytest.raises(ControlError, match=r"preset 1: strength: .*between 0 and 1"):
        PresetFile(path).load(1)


def test_an_unreadable_file_is_set_aside_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "presets.json"
    path.write_text("{ this is not json")
    presets = PresetFile(path)
    presets.save(2, Controls())
    aside = list(tmp_path.glob("presets.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{ this is not json"
    assert presets.numbers() == [2]


def test_a_preset_that_was_never_saved_says_which_are(tmp_path: Path) -> None:
    presets = PresetFile(tmp_path / "presets.json")
    presets.save(1, Controls())
    presets.save(10, Controls())
    with pytest.raises(ControlError, match=r"preset 3 is not saved .*\(saved: 1, 10\)"):
        presets.load(3)


def test_a_path_that_cannot_be_written_is_an_error_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(ControlError, match="cannot save preset 1"):
        PresetFile(blocker / "presets.json").save(1, Controls())
