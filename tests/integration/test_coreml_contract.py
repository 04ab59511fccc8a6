"""What livediffusion relies on from coremltools + Core ML, asserted the same way on both sides.

On a Mac with the Core ML runtime these tests run against the real thing; anywhere else
against tests/coremlpython_stub.py under coremltools' real Python. The same assertions on
both sides are what keeps the stub honest: a behaviour the stub models from a report or a
document (an extra input not being asked for, a state from newState starting at zero, the
errors' kinds) is checked against Core ML itself by the macOS CI job (.github/workflows/
macos.yml), and a disagreement fails there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

ct = pytest.importorskip("coremltools", reason="Core ML conversion needs coremltools")

pytestmark = pytest.mark.integration


class Scale(nn.Module):
    """y = 2 relu(x), float32 in, fp16 out: the shape of every livediffusion program."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) * 2


class Accumulate(nn.Module):
    """y = acc += x, with acc a Core ML state (fp16), as StatefulStep keeps its frames."""

    acc: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("acc", torch.zeros(1, 4, dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.acc.copy_((self.acc.to(x.dtype) + x).to(torch.float16))
        return self.acc.to(x.dtype) * 1


def _convert(module: nn.Module, folder: Path, *, target: str, states: bool) -> Path:
    exported = torch.export.export(module.eval(), (torch.ones(1, 4),)).run_decompositions({})
    model = ct.convert(
        exported,
        inputs=[ct.TensorType(name="x", shape=(1, 4), dtype=np.float32)],
        outputs=[ct.TensorType(name="y", dtype=np.float16)],
        states=(
            [ct.StateType(wrapped_type=ct.TensorType(shape=(1, 4), dtype=np.float16), name="acc")]
            if states
            else []
        ),
        minimum_deployment_target=getattr(ct.target, target),
        compute_precision=ct.precision.FLOAT16,
        convert_to="mlprogram",
        skip_model_load=True,
    )
    package = folder / f"{type(module).__name__.lower()}.mlpackage"
    model.save(str(package))
    return package


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract")
    return {
        "scale": _convert(Scale(), folder, target="macOS14", states=False),
        "accumulate": _convert(Accumulate(), folder, target="macOS15", states=True),
    }


@dataclass
class CoreML:
    """The runtime under test: real (world None) or the stub."""

    world: Any
    macos: tuple[int, ...]

    @property
    def real(self) -> bool:
        return self.world is None

    def load(self, package: Path, module: Callable[..., Any], tmp: Path, **kwargs: Any) -> Any:
        from coremltools.models.utils import compile_model

        if self.world is not None:
            self.world.register(package, module)
        compiled = compile_model(
            str(package), destination_path=str(tmp / (package.stem + ".mlmodelc"))
        )
        return ct.models.CompiledMLModel(compiled, compute_units=ct.ComputeUnit.CPU_ONLY, **kwargs)


@pytest.fixture
def core_ml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[CoreML]:
    from livediffusion_models.coreml import macos_version, runtime_available

    if sys.platform == "darwin" and runtime_available():
        yield CoreML(world=None, macos=macos_version())
        return
    from coremlpython_stub import install

    (tmp_path / "native").mkdir()
    world = install(monkeypatch, tmp_path / "native", macos=(15, 3))
    yield CoreML(world=world, macos=(15, 3))


X = np.array([[-1.0, 0.5, 2.0, -3.0]], dtype=np.float32)


def test_compile_model_wants_a_mlmodelc_destination_and_moves_the_folder_there(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    from coremltools.models.utils import compile_model

    if core_ml.world is not None:
        core_ml.world.register(packages["scale"], Scale())
    with pytest.raises(Exception, match=r'"destination_path" parameter must have ".mlmodelc"'):
        compile_model(str(packages["scale"]), destination_path=str(tmp_path / ".scale.tmp-1"))
    destination = tmp_path / ".scale.tmp-1.mlmodelc"
    assert compile_model(str(packages["scale"]), destination_path=str(destination)) == str(
        destination
    )
    assert destination.is_dir()
    loaded = ct.models.CompiledMLModel(str(destination), compute_units=ct.ComputeUnit.CPU_ONLY)
    assert set(loaded.predict({"x": X})) == {"y"}


def test_fp16_outputs_arrive_as_new_float32_arrays(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    model = core_ml.load(packages["scale"], Scale(), tmp_path)
    first, second = model.predict({"x": X})["y"], model.predict({"x": X})["y"]
    assert first.dtype == np.float32 and first.shape == (1, 4)
    np.testing.assert_allclose(first, [[0.0, 1.0, 4.0, 0.0]], atol=1e-3)
    assert not np.shares_memory(first, second)


def test_a_float16_input_is_replaced_by_a_float32_copy_in_the_callers_dict(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    model = core_ml.load(packages["scale"], Scale(), tmp_path)
    half = X.astype(np.float16)
    feed = {"x": half}
    model.predict(feed)
    assert feed["x"] is not half and feed["x"].dtype == np.float32


def test_a_torch_tensor_input_is_not_converted(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    model = core_ml.load(packages["scale"], Scale(), tmp_path)
    with pytest.raises(RuntimeError, match="value type not convertible"):
        model.predict({"x": torch.from_numpy(X)})


def test_a_missing_input_and_a_wrong_shape_are_runtime_errors(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    model = core_ml.load(packages["scale"], Scale(), tmp_path)
    with pytest.raises(RuntimeError):
        model.predict({"image": X})
    with pytest.raises(RuntimeError):
        model.predict({"x": np.zeros((1, 5), dtype=np.float32)})


def test_an_extra_input_is_not_asked_for(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    model = core_ml.load(packages["scale"], Scale(), tmp_path)
    extra = model.predict({"x": X, "unused": np.zeros(3, dtype=np.float32)})["y"]
    np.testing.assert_array_equal(extra, model.predict({"x": X})["y"])


def test_states_start_at_zero_are_needed_and_an_empty_one_is_stateless(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    if core_ml.macos < (15,):
        pytest.skip("Core ML states need macOS 15")
    stateful = core_ml.load(packages["accumulate"], Accumulate(), tmp_path)
    with pytest.raises(RuntimeError, match="must be an MLState"):
        stateful.predict({"x": X})
    state = stateful.make_state()
    np.testing.assert_allclose(stateful.predict({"x": X}, state=state)["y"], X, atol=1e-3)
    np.testing.assert_allclose(stateful.predict({"x": X}, state=state)["y"], 2 * X, atol=1e-2)
    fresh = stateful.make_state()
    np.testing.assert_allclose(stateful.predict({"x": X}, state=fresh)["y"], X, atol=1e-3)
    # a stateless program makes an empty state, and predicts with it as without
    stateless = core_ml.load(packages["scale"], Scale(), tmp_path)
    empty = stateless.make_state()
    np.testing.assert_array_equal(
        stateless.predict({"x": X}, state=empty)["y"], stateless.predict({"x": X})["y"]
    )


def test_optimization_hints_load_on_macos_15(
    core_ml: CoreML, packages: dict[str, Path], tmp_path: Path
) -> None:
    if core_ml.macos < (15,):
        pytest.skip("optimization hints need macOS 15")
    hints = {
        "allowLowPrecisionAccumulationOnGPU": True,
        "specializationStrategy": ct.SpecializationStrategy.FastPrediction,
    }
    model = core_ml.load(packages["scale"], Scale(), tmp_path, optimization_hints=hints)
    np.testing.assert_allclose(model.predict({"x": X})["y"], [[0.0, 1.0, 4.0, 0.0]], atol=1e-2)
