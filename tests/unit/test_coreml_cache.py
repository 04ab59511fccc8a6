"""The Core ML cache: a key that covers every input, and entries that are whole or ignored."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
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
    "loras": (("0123456789abcdef", 0.8),),
    "styles": True,
    "controlnet": "fedcba9876543210:sketch",
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


def _real_package(folder: Path) -> Path:
    """A real one-op ML program package (coremltools' MIL builder: no torch, under a second)."""
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.macOS14)
    def program(x: object) -> object:
        return mb.relu(x=x, name="y")

    model = ct.convert(
        program,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.macOS14,
        skip_model_load=True,
    )
    package = folder / "step.mlpackage"
    model.save(str(package))
    return package


def _write_real(folder: Path) -> dict[str, ConvertedProgram]:
    package = _real_package(folder)
    return {
        "step": ConvertedProgram(
            name="step", package=package, inputs={"x": (1, 4)}, outputs=("y",), states={}
        )
    }


def test_on_macos_each_package_is_compiled_once_and_atomically(
    tmp_path: Path, coreml_mac: Any
) -> None:
    """compile_programs through coremltools' real compile_model (its destination check and
    shutil.move of the folder Core ML compiled into a temporary directory)."""
    import torch

    from livediffusion_models.coreml.convert import compile_programs

    converted = commit_entry(KEY, _write_real, tmp_path)
    program = converted.programs["step"]
    # what a compile killed midway leaves (this pid's temporary name): replaced, not nested
    leftover = program.compiled.with_name(f".step.tmp-{os.getpid()}.mlmodelc")
    leftover.mkdir()
    (leftover / "half").write_text("")
    compile_programs(converted, progress=lambda message: None)
    assert program.compiled.is_dir()
    assert sorted(p.name for p in converted.folder.iterdir()) == [
        MANIFEST,
        "step.mlmodelc",
        "step.mlpackage",
    ]
    (compiled,) = coreml_mac.of_kind("compile")
    assert compiled.path == str(program.package)
    assert not Path(compiled.detail["to"]).exists()  # moved out of Core ML's temporary place
    compile_programs(converted, progress=lambda message: None)
    assert len(coreml_mac.of_kind("compile")) == 1  # the second start loads, never recompiles
    # and what was compiled is what loads and runs
    import coremltools as ct

    coreml_mac.register(program.package, torch.nn.ReLU())
    loaded = ct.models.CompiledMLModel(str(program.compiled), compute_units=ct.ComputeUnit.CPU_ONLY)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict({"x": x})["y"], [[0.0, 2.0, 0.0, 4.0]])


def test_off_macos_nothing_is_compiled(tmp_path: Path) -> None:
    pytest.importorskip("coremltools")
    from livediffusion_models.coreml.convert import compile_programs

    if sys.platform == "darwin":
        pytest.skip("this is a Mac")
    converted = commit_entry(KEY, _write_package, tmp_path)
    compile_programs(converted, progress=lambda message: None)
    assert not converted.programs["step"].compiled.exists()
