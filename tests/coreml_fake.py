"""A contract fake of the Core ML runtime (coremltools 9.0 ``CompiledMLModel``), for Linux.

Core ML itself runs only on macOS, so Linux CI cannot run a converted program. This fake
stands in for ``CompiledMLModel`` around a *real* converted package and enforces what the
real runtime demands, read from coremltools 9.0 (``models/_compiled_model.py``,
``models/model.py``) and Apple's MLModel/MLState documentation:

* the interface is the package's own spec (``coremltools.models.utils.load_spec``): every input it
  declares must be fed, nothing else, with exactly its shape and as float32 numpy arrays
  (the backend's promise: float32 saves coremltools' float16 -> float32 copy);
* ``data`` must be a dict (coremltools raises TypeError otherwise);
* a stateful program needs a state from *its own* ``make_state()``; a stateless one takes
  none; ``make_state`` on a stateless program is refused;
* a fresh state's memory is not promised to be zero: the fake fills it with NaN, so code
  that reads state before writing it shows up as NaN pictures;
* outputs come back as new numpy arrays in the spec's output dtype (fp16 at fp16 precision).

The numbers come from running the torch module the package was converted from (in float32,
then cast to the output dtype): this checks the backend's wiring, not Core ML's numerics.
Core ML vs torch numerics are the macOS tests' and ``livediffusion doctor``'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DTYPES = {65552: np.float16, 65568: np.float32}  # ArrayFeatureType FLOAT16 / FLOAT32


class FakeState:
    def __init__(self, owner: FakeCompiledModel, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.owner = owner
        self.tensors = {
            name: torch.full(shape, float("nan"), dtype=torch.float16)
            for name, shape in shapes.items()
        }


class FakeCompiledModel:
    """``CompiledMLModel(path, compute_units=...)`` over a real ``.mlpackage``'s interface."""

    def __init__(self, package: Path, module: torch.nn.Module, *, compute_units: str) -> None:
        from coremltools.models.utils import load_spec

        if compute_units not in ("CPU_AND_GPU", "ALL", "CPU_AND_NE", "CPU_ONLY"):
            raise TypeError(f"compute_units must be a coremltools.ComputeUnit, got {compute_units}")
        spec = load_spec(str(package))
        description = spec.description
        self.inputs = {
            i.name: tuple(int(d) for d in i.type.multiArrayType.shape) for i in description.input
        }
        self.input_types = {
            i.name: _DTYPES[i.type.multiArrayType.dataType] for i in description.input
        }
        self.outputs = {o.name: _DTYPES[o.type.multiArrayType.dataType] for o in description.output}
        self.states = {
            s.name: tuple(int(d) for d in s.type.stateType.arrayType.shape)
            for s in description.state
        }
        self.module = module.eval()
        self.calls = 0

    def make_state(self) -> FakeState:
        if not self.states:
            raise RuntimeError("make_state() on a program without states")
        return FakeState(self, self.states)

    def predict(
        self, data: dict[str, Any], state: FakeState | None = None
    ) -> dict[str, np.ndarray]:
        if type(data) is not dict:
            raise TypeError(f'"data" parameter must be a dict, got {type(data)}')
        if set(data) != set(self.inputs):
            raise KeyError(f"inputs {sorted(data)} != the program's {sorted(self.inputs)}")
        for name, value in data.items():
            if not isinstance(value, np.ndarray):
                raise TypeError(f"input {name} is {type(value).__name__}, not a numpy array")
            if value.shape != self.inputs[name]:
                raise ValueError(f"input {name} has shape {value.shape}, wants {self.inputs[name]}")
            if value.dtype != np.float32:
                raise TypeError(f"input {name} is {value.dtype}, the backend promises float32")
        if self.states:
            if state is None or state.owner is not self:
                raise ValueError("a stateful program needs a state from its own make_state()")
        elif state is not None:
            raise ValueError("state given to a program without states")
        self.calls += 1
        values = [torch.from_numpy(data[name].copy()) for name in self.inputs]
        with torch.inference_mode():
            if self.states:
                assert state is not None
                for name, tensor in state.tensors.items():
                    getattr(self.module, name).copy_(tensor)
            result = self.module(*values)
            if self.states:
                assert state is not None
                for name in state.tensors:
                    state.tensors[name] = getattr(self.module, name).clone()
        results = result if isinstance(result, tuple) else (result,)
        return {
            name: value.float().numpy().astype(dtype)
            for (name, dtype), value in zip(self.outputs.items(), results, strict=True)
        }
