"""The Core ML cache: a key that covers every input, and entries that are whole or ignored."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from livediffusion_models.coreml import CoreMLUnavailableError, require_coremltools
from livediffusion_models.coreml.cache import (
    MANIFEST,
    ConversionKey,
    ConvertedProgram,
    commit_entry,
    find_converted,
)

KEY = ConversionKey(
    model="sdxs-512-0.9",
    weights="0123456789abcdef",
    size=(512, 512),
    precision="fp16",
    target="macOS15",
    variant="fused",
    stateful=True,
    coremltools="9.0",
    code="fedcba9876543210",
)

OTHER_VALUES = {
    "model": "sd-turbo",
    "weights": "ffffffffffffffff",
    "size": (512, 768),
    "precision": "fp32",
    "target": "macOS14",
    "variant": "stages",
    "stateful": False,
    "coremltools": "9.1",
    "code": "0000000000000000",
}


def _write_package(folder: Path) -> dict[str, ConvertedProgram]:
    package = folder / "step.mlpackage"
    package.mkdir()
    (package / "Manifest.json").write_text("{}")
    return {
        "step": ConvertedProgram(
            name="step",
            package=package,
            inputs={"image": (1, 3, 512, 512)},
            outputs=("output",),
            states={"previous_x0": (1, 4, 64, 64)},
        )
    }


def test_every_part_of_the_key_changes_its_digest_and_folder() -> None:
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(ConversionKey)}
    for name, value in OTHER_VALUES.items():
        other = dataclasses.replace(KEY, **{name: value})
        assert other.digest() != KEY.digest(), name
        assert other.folder_name() != KEY.folder_name(), name


def test_folder_name_reads_as_the_settings() -> None:
    assert KEY.folder_name().startswith("512x512-fp16-macOS15-fused-state-")


def test_a_committed_entry_is_found_with_its_interface(tmp_path: Path) -> None:
    converted = commit_entry(KEY, _write_package, tmp_path)
    again = find_converted(KEY, tmp_path)
    assert again is not None
    assert again.folder == converted.folder == KEY.folder(tmp_path)
    program = again.programs["step"]
    assert program.inputs == {"image": (1, 3, 512, 512)}
    assert program.states == {"previous_x0": (1, 4, 64, 64)}
    assert program.compiled.name == "step.mlmodelc"


def test_an_entry_for_another_key_is_never_loaded(tmp_path: Path) -> None:
    commit_entry(KEY, _write_package, tmp_path)
    for name, value in OTHER_VALUES.items():
        assert find_converted(dataclasses.replace(KEY, **{name: value}), tmp_path) is None, name


def test_a_manifest_whose_key_differs_is_not_loaded(tmp_path: Path) -> None:
    converted = commit_entry(KEY, _write_package, tmp_path)
    manifest = converted.folder / MANIFEST
    data = json.loads(manifest.read_text())
    data["key"]["weights"] = "not-these-weights"
    manifest.write_text(json.dumps(data))
    assert find_converted(KEY, tmp_path) is None
    manifest.write_text("{ half a manif")
    assert find_converted(KEY, tmp_path) is None


def test_a_missing_package_makes_the_entry_incomplete(tmp_path: Path) -> None:
    converted = commit_entry(KEY, _write_package, tmp_path)
    (converted.folder / "step.mlpackage" / "Manifest.json").unlink()
    (converted.folder / "step.mlpackage").rmdir()
    assert find_converted(KEY, tmp_path) is None


def test_a_conversion_that_fails_midway_leaves_nothing_loadable(tmp_path: Path) -> None:
    def crash(folder: Path) -> dict[str, ConvertedProgram]:
        _write_package(folder)
        raise RuntimeError("killed during conversion")

    with pytest.raises(RuntimeError):
        commit_entry(KEY, crash, tmp_path)
    assert find_converted(KEY, tmp_path) is None
    assert not KEY.folder(tmp_path).exists()
    assert list(KEY.folder(tmp_path).parent.iterdir()) == []


def test_a_killed_conversion_is_ignored_then_cleaned_up(tmp_path: Path) -> None:
    # What SIGKILL leaves: a temporary folder with a package and no manifest.
    parent = KEY.folder(tmp_path).parent
    parent.mkdir(parents=True)
    leftover = parent / f".tmp-{KEY.folder_name()}-99999"
    leftover.mkdir()
    _write_package(leftover)
    assert find_converted(KEY, tmp_path) is None
    commit_entry(KEY, _write_package, tmp_path)
    assert not leftover.exists()
    assert find_converted(KEY, tmp_path) is not None


def test_commit_replaces_a_damaged_entry(tmp_path: Path) -> None:
    folder = KEY.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text("garbage")
    commit_entry(KEY, _write_package, tmp_path)
    assert find_converted(KEY, tmp_path) is not None
    assert os.listdir(folder.parent) == [folder.name]


def test_missing_coremltools_is_one_sentence_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from livediffusion_models import coreml

    monkeypatch.setattr(coreml, "coremltools_version", lambda: None)
    with pytest.raises(CoreMLUnavailableError) as info:
        require_coremltools()
    message = str(info.value)
    assert 'pip install "livediffusion[mac]"' in message
    assert "\n" not in message


def test_on_macos_each_package_is_compiled_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compile_programs against a contract fake of coremltools' compile_model (macOS only):
    it must get an existing .mlpackage and a destination that does not exist yet."""
    pytest.importorskip("coremltools")
    from coremltools.models import utils as ct_utils

    from livediffusion_models.coreml.convert import compile_programs

    compiled: list[str] = []

    def compile_model(model: str, destination_path: str | None = None) -> str:
        assert model.endswith(".mlpackage") and Path(model).is_dir()
        assert destination_path is not None and not Path(destination_path).exists()
        Path(destination_path).mkdir()
        (Path(destination_path) / "model.mil").write_text("compiled")
        compiled.append(model)
        return destination_path

    monkeypatch.setattr(ct_utils, "compile_model", compile_model)
    monkeypatch.setattr("sys.platform", "darwin")
    converted = commit_entry(KEY, _write_package, tmp_path)
    compile_programs(converted, progress=lambda message: None)
    program = converted.programs["step"]
    assert (program.compiled / "model.mil").read_text() == "compiled"
    assert sorted(p.name for p in converted.folder.iterdir()) == [
        MANIFEST,
        "step.mlmodelc",
        "step.mlpackage",
    ]
    compile_programs(converted, progress=lambda message: None)
    assert compiled == [str(program.package)]  # the second start loads, never recompiles
