"""Loading converted programs into Core ML (macOS only), behind a small typed interface.

The backend sees a :class:`Program`: ``predict(feed, state=None)`` and ``make_state()``, the
two calls of coremltools' ``CompiledMLModel`` it uses. A multifunction program (LoRA styles)
is loaded once per function (Core ML's ``functionName``, macOS 15). Loading always goes
through the compiled ``.mlmodelc`` (``MLModel(path.mlpackage)`` would compile on every
start), with the compute units and the optimization hints of :class:`CoreMLSettings`.

What ``predict`` really returns (coremltools 9.0): a new dict of new numpy arrays, float32 for
fp16 and fp32 outputs alike (the native bridge widens fp16, ``convertArrayValueToPython`` in
coremlpython/CoreMLPythonUtils.mm). What it really does to ``data``: a float16 array in it is
replaced, in the caller's dict, by a float32 copy before Core ML sees it; a torch tensor is not
converted at all (``CompiledMLModel.predict`` skips ``MLModel``'s tensor conversion) and fails
in the native layer; so feeds hold float32 numpy arrays only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from livediffusion_models.coreml import (
    CoreMLSettings,
    CoreMLUnavailableError,
    check_hints,
    require_coremltools,
    runtime_available,
)
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.convert import compile_programs

__all__ = ["Feed", "Program", "Result", "load_programs", "optimization_hints", "require_runtime"]

Feed = dict[str, npt.NDArray[np.float32]]
"""A plain dict (coremltools refuses any other mapping) of float32 numpy arrays."""
Result = Mapping[str, npt.NDArray[np.float32]]


class Program(Protocol):
    """What the backend calls on a loaded program (``coremltools.models.CompiledMLModel``)."""

    def predict(self, data: Feed, state: Any = None) -> Result: ...

    def make_state(self) -> Any: ...


def require_runtime() -> None:
    """Say in one sentence why Core ML cannot run here, before any minutes of conversion."""
    require_coremltools()
    if not runtime_available():
        raise CoreMLUnavailableError(
            "the Core ML runtime needs macOS 14 or newer on a Mac; on this system "
            "`livediffusion convert` prepares the programs, and `--backend torch` serves"
        )


def optimization_hints(settings: CoreMLSettings) -> dict[str, Any] | None:
    """``CompiledMLModel``'s ``optimization_hints``: only hints that differ from Core ML's
    defaults, and None without any (coremltools refuses even a default hint before macOS 15).

    Accepted values, from coremltools 9.0 (``_verify_optimization_hint_input``):
    ``allowLowPrecisionAccumulationOnGPU`` a bool, ``specializationStrategy`` a
    ``ct.SpecializationStrategy`` (``Default`` or ``FastPrediction``).
    """
    import coremltools as ct

    hints: dict[str, Any] = {}
    if settings.low_precision_accumulation:
        hints["allowLowPrecisionAccumulationOnGPU"] = True
    if settings.specialization == "fast-prediction":
        hints["specializationStrategy"] = ct.SpecializationStrategy.FastPrediction
    return hints or None


def load_programs(
    converted: ConvertedModel, *, settings: CoreMLSettings | None = None
) -> dict[str, Program]:
    """Compile (once) and load every program of ``converted`` on this Mac."""
    settings = settings or CoreMLSettings()
    require_runtime()
    check_hints(settings)
    import coremltools as ct

    compile_programs(converted)
    unit = ct.ComputeUnit[settings.compute_units.upper()]  # cpu_and_gpu -> CPU_AND_GPU
    hints = optimization_hints(settings)
    programs: dict[str, Program] = {}
    for name, program in converted.programs.items():
        if not program.functions:
            programs[name] = ct.models.CompiledMLModel(
                str(program.compiled), compute_units=unit, optimization_hints=hints
            )
            continue
        # a multifunction program (LoRA styles): each function is loaded as its own model,
        # "<name>/<function>"; "<name>" is the default (first) function
        for function in program.functions:
            programs[f"{name}/{function}"] = ct.models.CompiledMLModel(
                str(program.compiled),
                compute_units=unit,
                function_name=function,
                optimization_hints=hints,
            )
        programs[name] = programs[f"{name}/{program.functions[0]}"]
    return programs
