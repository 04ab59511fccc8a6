"""Loading converted programs into Core ML (macOS only), behind a small typed interface.

The backend sees a :class:`Program`: ``predict(feed, state=None)`` and ``make_state()``, the
two calls of coremltools' ``CompiledMLModel`` it uses. Loading always goes through the
compiled ``.mlmodelc`` (``MLModel(path.mlpackage)`` would compile on every start).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from livediffusion_models.coreml import (
    ComputeUnits,
    CoreMLUnavailableError,
    require_coremltools,
    runtime_available,
)
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.convert import compile_programs

__all__ = ["Feed", "Program", "load_programs", "require_runtime"]

Feed = Mapping[str, npt.NDArray[np.float32]]


class Program(Protocol):
    """What the backend calls on a loaded program (``coremltools.models.CompiledMLModel``)."""

    def predict(self, data: Feed, state: Any = None) -> Mapping[str, npt.NDArray[Any]]: ...

    def make_state(self) -> Any: ...


def require_runtime() -> None:
    """Say in one sentence why Core ML cannot run here, before any minutes of conversion."""
    require_coremltools()
    if not runtime_available():
        raise CoreMLUnavailableError(
            "the Core ML runtime needs macOS 14 or newer on a Mac; on this system "
            "`livediffusion convert` prepares the programs, and `--backend torch` serves"
        )


def load_programs(converted: ConvertedModel, *, compute_units: ComputeUnits) -> dict[str, Program]:
    """Compile (once) and load every program of ``converted`` on this Mac."""
    require_runtime()
    import coremltools as ct

    compile_programs(converted)
    unit = ct.ComputeUnit[compute_units.upper()]  # cpu_and_gpu -> ComputeUnit.CPU_AND_GPU
    programs: dict[str, Program] = {}
    for name, program in converted.programs.items():
        programs[name] = ct.models.CompiledMLModel(str(program.compiled), compute_units=unit)
    return programs
