"""A stand-in for coremltools' native module, so Core ML tests run coremltools' real Python.

coremltools 9.0 reaches Core ML through ``coremltools.libcoremlpython``, a pybind11 module built
from ``coremlpython/*.mm`` that only its macOS wheels ship. Everything above it is Python that
runs here unchanged: ``models.utils.compile_model`` (its ``.mlmodelc`` destination check and the
``shutil.move`` of Core ML's compiled folder), ``CompiledMLModel`` (argument checks, the
optimization-hint checks and their macOS 15 gate, the hints' string encoding), ``MLModel`` (what
``ct.convert`` does after converting, ``skip_model_load``), ``predict``'s dict check and its
float16 -> float32 input copy, ``make_state``/``MLState``. :func:`install` replaces only

* the native module (``sys.modules["coremltools.libcoremlpython"]`` and the names coremltools'
  modules bound from it at import, which are None on Linux), and
* the OS checks: ``sys.platform``, ``platform.mac_ver``/``machine`` and coremltools'
  ``_macos_version`` (it runs ``sw_vers``); ``_is_macos`` reads ``sys.platform`` by itself.

Each behaviour of the stub names its source: a function of apple/coremltools at tag 9.0
(``CoreMLPython.mm``, ``CoreMLPythonUtils.mm``, ``CoreMLPythonArray.mm``), or, where that code
hands over to Apple's closed Core ML framework, Apple's documentation or an error a user
reported from a real Mac (issue cited). Wording marked *(stub's words)* has no public source;
only its kind (a ``RuntimeError`` from ``Utils::handleError``) does. What the stub cannot vouch
for it refuses loudly (``StubLimit``) rather than guess; methods our code never calls are absent.

**The numbers are not Core ML's.** ``predict`` runs the torch module the package was converted
from (the test registers it with :meth:`CoreMLWorld.register`), at float32, rounds each output
to its declared type (fp16 outputs go through float16) and returns it as the bridge does
(float32). So the stub checks the wiring (names, shapes, dtypes, states, compile and load
paths, hints), never Core ML's numerics: that is tests/macos and ``livediffusion doctor`` on a
real Mac.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

FLOAT16, FLOAT32, FLOAT64, INT32 = 65552, 65568, 65600, 131104  # ArrayFeatureType.ArrayDataType
_NUMPY = {FLOAT16: np.float16, FLOAT32: np.float32, FLOAT64: np.float64, INT32: np.int32}
SPEC_MACOS = {7: (13, 0), 8: (14, 0), 9: (15, 0), 10: (26, 0)}
"""Specification version -> the macOS that runs it (mlmodel/src/Globals.hpp: IOS16 = 7,
IOS17 = 8, IOS18 = 9, IOS26 = 10, the iOS/macOS pairs of coremltools' deployment targets)."""
NEWEST_SPEC = 10
"""``Model::maximumSupportedSpecificationVersion`` returns the build's
``MLMODEL_SPECIFICATION_VERSION_NEWEST`` (Globals.hpp at 9.0: IOS26 = 10), whatever the OS."""
COMPILED_SPEC = "model.mlmodel"
"""The stub's compiled folder keeps the package's spec bytes under this name and the weights
under ``weights/``; a real ``.mlmodelc`` holds ``coremldata.bin``, ``model.mil`` and
``weights/`` in Core ML's own format, which no code here reads."""


class StubLimit(NotImplementedError):
    """Something real Core ML may do that the stub does not model: a test must not rely on it."""


def _ns_error(description: str) -> RuntimeError:
    """The error ``Utils::handleError`` raises (CoreMLPythonUtils.mm): the NSError's userInfo
    formatted with ``%@``, as users paste it (apple/coremltools#339, #2519)."""
    return RuntimeError(f'{{\n    NSLocalizedDescription = "{description}";\n}}')


def _spec_file(package: Path) -> Path:
    """The root model file of an ``.mlpackage``, found by coremltools' real ModelPackage
    reader (libmodelpackage ships in the Linux wheel too)."""
    from coremltools.libmodelpackage import ModelPackage

    return Path(ModelPackage(str(package)).getRootModel().path())


def _weights_dir(package: Path) -> Path | None:
    from coremltools.models.utils import _try_get_weights_dir_path

    found = _try_get_weights_dir_path(str(package))
    return Path(found) if found else None


def spec_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _module_key(digest: str, function: str) -> str:
    return f"{digest}#{function}" if function else digest


@dataclass(frozen=True)
class _Array:
    name: str
    shape: tuple[int, ...]
    dtype: int


@dataclass(frozen=True)
class _Description:
    """The interface Core ML reads from a compiled model (its model description)."""

    inputs: tuple[_Array, ...]
    outputs: tuple[_Array, ...]
    states: tuple[_Array, ...]
    spec_version: int

    function: str = ""
    """The function this description is of ("" for a single-function program)."""

    @classmethod
    def parse(cls, data: bytes, function: str = "") -> _Description:
        """A multifunction program (``description.functions``) is read for ``function``, or
        for its ``defaultFunctionName`` without one: Core ML loads the default function when
        ``MLModelConfiguration.functionName`` is nil (coremltools' ``MLModel`` docstring: "If
        not provided, function_name will be set to the defaultFunctionName")."""
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model.FromString(data)
        description: Any = spec.description
        if description.functions:
            wanted = function or description.defaultFunctionName
            found = [f for f in description.functions if f.name == wanted]
            if not found:
                names = ", ".join(f.name for f in description.functions)
                raise _ns_error(f"stub: the program has no function {wanted!r} ({names})")
            description, function = found[0], wanted
        elif function:
            raise StubLimit("stub: a function name for a single-function program")

        def arrays(items: Iterable[Any]) -> tuple[_Array, ...]:
            found = []
            for item in items:
                kind = item.type.WhichOneof("Type")
                if kind == "stateType":
                    array = item.type.stateType.arrayType
                elif kind == "multiArrayType":
                    array = item.type.multiArrayType
                else:
                    raise StubLimit(f"stub: {kind} features are not modelled ({item.name})")
                found.append(_Array(item.name, tuple(int(d) for d in array.shape), array.dataType))
            return tuple(found)

        return cls(
            inputs=arrays(description.input),
            outputs=arrays(description.output),
            states=arrays(description.state),
            spec_version=int(spec.specificationVersion),
            function=function,
        )


@dataclass
class Event:
    kind: str  # "compile", "load", "predict", "new_state"
    path: str
    detail: dict[str, Any] = field(default_factory=dict)


class CoreMLWorld:
    """The stubbed Mac: its macOS version, the torch modules behind converted packages, and a
    log of every native call (what a test asserts: compiles, loads, predictions)."""

    def __init__(self, macos: tuple[int, int], temp: Path) -> None:
        self.macos = macos
        self.temp = temp
        self.events: list[Event] = []
        self.modules: dict[str, torch.nn.Module] = {}

    def register(
        self,
        package: str | Path,
        module: torch.nn.Module | Callable[..., Any],
        *,
        function: str = "",
    ) -> None:
        """Compute ``package``'s predictions (wherever it is compiled or copied to) with the
        torch ``module`` it was converted from; of one ``function`` of a multifunction one."""
        key = _module_key(spec_digest(_spec_file(Path(package)).read_bytes()), function)
        self.modules[key] = module  # type: ignore[assignment]

    def register_converted(self, converted: Any, components: Any) -> None:
        """Register every program of a ``ConvertedModel`` with the torch module it came from."""
        from livediffusion_models.coreml.programs import build_programs

        key = converted.key
        tokens = int(getattr(components.tokenizer, "model_max_length", 77))
        for spec in build_programs(
            components.unet,
            components.vae,
            size=key.size,
            tokens=tokens,
            variant=key.variant,
            stateful=key.stateful,
        ):
            self.register(converted.programs[spec.name].package, spec.module.eval())

    def of_kind(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def predictions(self, compiled: str | Path) -> int:
        """How many predictions ran on the program loaded from ``compiled``."""
        name = str(compiled).rstrip("/")
        return sum(1 for e in self.of_kind("predict") if e.path.rstrip("/") == name)


# -- the native classes -------------------------------------------------------------------------


class _State:
    """``CoreML::Python::State`` (CoreMLPython.h/.mm), registered as ``_State`` without a
    Python constructor: only ``Model::newState`` makes one."""

    def __init__(self, owner: _MLModelProxy, buffers: dict[str, np.ndarray], token: object):
        if token is not _MAKE:
            raise TypeError("libcoremlpython._State: No constructor defined!")
        self._owner = owner
        self._buffers = buffers

    def read_state(self, name: str) -> np.ndarray:
        """``State::readState``: ``getMultiArrayForStateNamed`` then ``convertArrayValueToPython``
        (fp16 buffers come back as a float32 copy); an unknown name is an NSException whose
        reason becomes a RuntimeError *(stub's words)*."""
        if name not in self._buffers:
            raise RuntimeError(f"stub: no state named {name!r}")
        return _to_python(self._buffers[name], FLOAT16)

    def write_state(self, name: str, value: Any) -> None:
        """``State::writeState``: ``convertValueToObjC`` (a float16 numpy array is not
        convertible), then ``transferToMultiArray`` into the state's fp16 buffer."""
        feature = _to_objc(value)
        if not isinstance(feature, np.ndarray):
            raise RuntimeError("Failed to write state, only multi-array value is supported")
        if name not in self._buffers:
            raise RuntimeError(f"stub: no state named {name!r}")
        if feature.shape != self._buffers[name].shape:
            raise StubLimit("stub: transferToMultiArray between shapes is not modelled")
        self._buffers[name][...] = feature.astype(np.float16)


_MAKE = object()


class _MLModelAssetProxy:
    """``py::class_<ModelAsset>(m, "_MLModelAssetProxy")``: no constructor from Python;
    livediffusion never uses model assets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("libcoremlpython._MLModelAssetProxy: No constructor defined!")


class _MLModelProxy:
    """``CoreML::Python::Model`` (CoreMLPython.mm), bound to one :class:`CoreMLWorld`."""

    world: CoreMLWorld  # set per install by a subclass

    def __init__(
        self,
        url: str,
        compute_units: str,
        function_name: str,
        optimization_hints: dict[str, str],
        asset: Any = None,
    ) -> None:
        """``Model::Model``: a path not ending in ``.mlmodelc`` is compiled first
        (``compileModelAtURL``) and that temporary compile deleted with the proxy; then
        ``setComputeUnit``, ``setOptimizationHints``, ``functionName`` (set only under
        ``@available(macOS 15.0)``, else the RuntimeError below: CoreMLPython.mm at 9.0) and
        ``modelWithContentsOfURL``, which loads that function of a multifunction program."""
        # pybind11 casts each argument or refuses the call
        for value, kind in ((url, str), (compute_units, str), (function_name, str)):
            if not isinstance(value, kind):
                raise TypeError("__init__(): incompatible constructor arguments")
        if not isinstance(optimization_hints, dict):
            raise TypeError("__init__(): incompatible constructor arguments")
        if asset is not None:
            raise StubLimit("stub: loading from an MLModelAsset is not modelled")
        self._delete_on_exit: Path | None = None
        if _is_compiled_model_path(url):
            compiled = Path(url)
        else:
            compiled = Path(self.compileModel(url))
            self._delete_on_exit = compiled
        self._compiled = compiled
        self._set_compute_unit(compute_units)
        hints = self._set_optimization_hints(optimization_hints)
        if function_name and self.world.macos < (15, 0):
            # Model::Model sets configuration.functionName only under @available(macOS 15.0)
            raise RuntimeError("The 'functionName' property can only be set on macOS >= 15.0")
        self._description, digest = _load_compiled(compiled, self.world.macos, function_name)
        self._digest = _module_key(digest, self._description.function)
        detail: dict[str, Any] = {"compute_units": compute_units, "hints": hints}
        if self._description.function:  # which function of a multifunction program
            detail["function"] = self._description.function
        self.world.events.append(Event("load", str(compiled), detail))

    def __del__(self) -> None:
        # Model::~Model removes a model it compiled itself (m_deleteCompiledModelOnExit)
        if getattr(self, "_delete_on_exit", None) is not None:
            shutil.rmtree(self._delete_on_exit.parent, ignore_errors=True)  # type: ignore[union-attr]

    def _set_compute_unit(self, compute_units: str) -> None:
        """``Model::setComputeUnit``: CPU_AND_NE needs macOS 13; anything else unknown is
        ``assert(computeUnits == "ALL")`` (no check in a release build)."""
        if compute_units == "CPU_AND_NE" and self.world.macos < (13, 0):
            raise RuntimeError(
                "MLComputeUnitsCPUAndNeuralEngine is only available on macOS >= 13.0"
            )
        if compute_units not in ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL"):
            raise StubLimit(f"stub: compute units {compute_units!r} (the Python layer sends names)")

    def _set_optimization_hints(self, hints: dict[str, str]) -> dict[str, str]:
        """``Model::setOptimizationHints`` (built with the macOS 15 SDK, as the wheels are):
        string values only; each known key needs macOS 15; values are asserted."""
        allowed = {
            "reshapeFrequency": ("Frequent", "Infrequent"),
            "specializationStrategy": ("Default", "FastPrediction"),
            "allowLowPrecisionAccumulationOnGPU": ("True", "False"),
        }
        for key, values in allowed.items():
            if key not in hints:
                continue
            value = hints[key]
            if not isinstance(value, str):  # optimizationHints[key].cast<std::string>()
                raise RuntimeError("Unable to cast Python instance to C++ type")
            if self.world.macos < (15, 0):
                raise RuntimeError(f"Setting '{key}' is only available on macOS >= 15.0")
            if value not in values:
                raise StubLimit(f"stub: {key}={value!r} would fail an assert in Core ML's bridge")
        return dict(hints)

    # -- prediction ------------------------------------------------------------------------

    def predict(self, input: dict[str, Any], state: _State | None = None) -> dict[str, Any]:
        """``Model::predict``: ``dictToFeatures`` (each value through ``convertValueToObjC``),
        then Core ML's ``predictionFromFeatures`` (``usingState:`` with a state, macOS 15+),
        then ``featuresToDict`` (each output through ``convertArrayValueToPython``)."""
        if not isinstance(input, dict) or not (state is None or isinstance(state, _State)):
            raise TypeError("predict(): incompatible function arguments")
        features = {str(name): _to_objc(value) for name, value in input.items()}
        description = self._description
        if state is not None and self.world.macos < (15, 0):
            raise RuntimeError(
                "Stateful predictions using MLState are only supported on macOS >= 15.0"
            )
        self._check_inputs(features)
        buffers = self._check_state(state)
        module = self.world.modules.get(self._digest)
        if module is None:
            raise StubLimit(
                f"stub: no torch module registered for {self._compiled}: "
                "call CoreMLWorld.register(package, module) in the test"
            )
        values = [
            torch.from_numpy(np.array(features[a.name], dtype=np.float32))
            for a in description.inputs
        ]
        with torch.inference_mode():
            if buffers:
                for name, buffer in buffers.items():
                    getattr(module, name).copy_(torch.from_numpy(buffer.astype(np.float32)))
            result = module(*values)
            if buffers:
                for name, buffer in buffers.items():
                    buffer[...] = getattr(module, name).float().numpy().astype(np.float16)
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(description.outputs):
            raise AssertionError(f"{len(results)} results for {len(description.outputs)} outputs")
        outputs: dict[str, Any] = {}
        for declared, value in zip(description.outputs, results, strict=True):
            array = value.float().numpy()
            if declared.shape and array.shape != declared.shape:
                raise AssertionError(f"{declared.name}: {array.shape} != {declared.shape}")
            outputs[declared.name] = _to_python(
                array.astype(_NUMPY[declared.dtype]), declared.dtype
            )
        fed = {a.name: np.array(features[a.name]) for a in description.inputs}  # what Core ML read
        detail: dict[str, Any] = {"inputs": fed}
        if description.function:
            detail["function"] = description.function
        self.world.events.append(Event("predict", str(self._compiled), detail))
        return outputs

    def _check_inputs(self, features: Mapping[str, Any]) -> None:
        """Core ML checks the provider against the model description (closed source). A missing
        input: refused (apple/coremltools#339, wording there is for neural networks); a wrong
        shape: refused with the wording a device logged (alibaba/MNN#1672). Extra features are
        not asked for: Core ML reads the provider by the description's names (MLFeatureProvider
        docs)."""
        for declared in self._description.inputs:
            if declared.name not in features:
                raise _ns_error(
                    f"Required input feature not passed to neural network. ({declared.name})"
                )
            value = features[declared.name]
            if not isinstance(value, np.ndarray):
                raise StubLimit(f"stub: a {type(value).__name__} for a MultiArray input")
            if value.shape != declared.shape:
                got = " × ".join(map(str, value.shape))
                raise _ns_error(
                    f"For input feature '{declared.name}', the provided shape ({got}) is not "
                    "compatible with the model's feature description."
                )
            if value.dtype != _NUMPY[declared.dtype]:
                raise StubLimit(
                    f"stub: a {value.dtype} MultiArray for the {declared.name} input declared "
                    f"{np.dtype(_NUMPY[declared.dtype])}: Core ML's conversion rules are not public"
                )

    def _check_state(self, state: _State | None) -> dict[str, np.ndarray]:
        """A stateful program without a state: refused with the wording a user pasted from a Mac
        (apple/coremltools#2519). With one, it must be a state ``newState`` made for these
        buffers (Apple's ``prediction(from:using:)`` docs: "The state object created by
        newState()"); an empty state makes a stateless prediction (Apple's ``newState`` docs)."""
        declared = self._description.states
        if state is None:
            if declared:
                raise _ns_error(
                    f"The input feature for {declared[0].name} must be an MLState, but it was not."
                )
            return {}
        buffers = state._buffers
        if not declared:
            if buffers:
                raise RuntimeError("stub: a state with buffers given to a stateless program")
            return {}
        for array in declared:
            buffer = buffers.get(array.name)
            if buffer is None or buffer.shape != array.shape:
                raise _ns_error(
                    f"stub: the state does not hold {array.name} {array.shape} of this model "
                    "(made by another model's newState?)"
                )
        return buffers

    # -- states, paths, statics ---------------------------------------------------------------

    def newState(self) -> _State:
        """``Model::newState``: macOS 15+; buffers zero-filled, empty for a stateless model
        (Apple's ``newState`` documentation)."""
        if self.world.macos < (15, 0):
            raise RuntimeError("Stateful model is only available on macOS >= 15.0")
        buffers = {a.name: np.zeros(a.shape, dtype=np.float16) for a in self._description.states}
        self.world.events.append(Event("new_state", str(self._compiled)))
        return _State(self, buffers, _MAKE)

    def get_compiled_model_path(self) -> str:
        return str(self._compiled)

    @staticmethod
    def maximum_supported_specification_version() -> int:
        return NEWEST_SPEC

    @classmethod
    def compileModel(cls, url: str) -> str:
        """``Model::compileModel``: ``[MLModel compileModelAtURL:]`` writes the compiled model
        into a temporary directory and returns its path (Apple: move it somewhere permanent);
        a package this macOS cannot run is refused *(stub's words)*."""
        source = Path(url)
        if not source.is_dir():
            raise _ns_error(f"stub: no model package at {url}")
        data = _spec_file(source).read_bytes()
        version = _Description.parse(data).spec_version
        if SPEC_MACOS.get(version, (99, 0)) > cls.world.macos:
            raise _ns_error(
                f"stub: specification version {version} needs macOS "
                f"{'.'.join(map(str, SPEC_MACOS.get(version, (99, 0))))}"
            )
        folder = Path(tempfile.mkdtemp(prefix="coreml-compile-", dir=cls.world.temp))
        compiled = folder / (source.name.rsplit(".", 1)[0] + ".mlmodelc")
        compiled.mkdir()
        (compiled / COMPILED_SPEC).write_bytes(data)
        weights = _weights_dir(source)
        if weights is not None:
            shutil.copytree(weights, compiled / "weights")
        cls.world.events.append(Event("compile", url, {"to": str(compiled)}))
        return str(compiled)


def _is_compiled_model_path(path: str) -> bool:
    """``Utils::isCompiledModelPath``: ends in ``.mlmodelc``, with or without a trailing slash."""
    return (path[:-1] if path.endswith("/") else path).endswith(".mlmodelc")


def _load_compiled(
    compiled: Path, macos: tuple[int, int], function: str = ""
) -> tuple[_Description, str]:
    """``[MLModel modelWithContentsOfURL:configuration:error:]``: a folder that is not a
    compiled model, or a function it does not have, fails to load, as an NSError *(stub's
    words)*."""
    spec = compiled / COMPILED_SPEC
    if not spec.is_file():
        raise _ns_error(f"stub: {compiled} is not a compiled model")
    data = spec.read_bytes()
    description = _Description.parse(data, function)
    if SPEC_MACOS.get(description.spec_version, (99, 0)) > macos:
        raise _ns_error(f"stub: specification version {description.spec_version} is too new")
    return description, spec_digest(data)


def _to_objc(value: Any) -> Any:
    """``Utils::convertValueToObjC`` for what livediffusion feeds: a numpy array becomes a
    MultiArray over its memory if ``PybindCompatibleArray::dataTypeOf`` knows its dtype
    (int32, float32, float64: CoreMLPythonArray.mm); any other array, a torch tensor (no buffer
    protocol) or an unknown object is "value type not convertible"."""
    if isinstance(value, bool | int | float | str | dict):
        raise StubLimit("stub: scalar, string and dictionary features are not modelled")
    if isinstance(value, np.ndarray):
        kind, size = value.dtype.kind, value.dtype.itemsize
        if (kind == "i" and size == 4) or (kind == "f" and size in (4, 8)):
            return value
    # convertValueToArray threw (caught), not a PIL image: py::print and throw
    print("Error: value type not convertible:")
    print(value)
    raise RuntimeError("value type not convertible")


def _to_python(array: np.ndarray, dtype: int) -> np.ndarray:
    """``Utils::convertArrayValueToPython``: a Float16 MultiArray is first concatenated into a
    new Float32 one ("py:array doesn't support fp16", rdar://92239209); ``py::array(shape,
    strides, ptr)`` without a base copies into a new numpy array."""
    if dtype == FLOAT16:
        return np.array(array, dtype=np.float32, copy=True)
    return np.array(array, copy=True)


# -- installing it --------------------------------------------------------------------------------


def native_module(world: CoreMLWorld) -> types.ModuleType:
    """A ``libcoremlpython`` whose classes act on ``world`` (PYBIND11_PLUGIN in CoreMLPython.mm
    registers ``_MLModelProxy``, ``_State``, ``_MLModelAssetProxy`` and, where the SDK has them,
    the compute-device and compute-plan proxies, which livediffusion does not use: left out, as
    on a build without them, so coremltools binds them to None)."""
    module = types.ModuleType("coremltools.libcoremlpython", "CoreML.Framework Python bindings")
    module.__spec__ = ModuleSpec("coremltools.libcoremlpython", loader=None)
    module._MLModelProxy = type("_MLModelProxy", (_MLModelProxy,), {"world": world})  # type: ignore[attr-defined]
    module._State = _State  # type: ignore[attr-defined]
    module._MLModelAssetProxy = _MLModelAssetProxy  # type: ignore[attr-defined]
    return module


def _warm_sysconfig() -> None:
    """Read sysconfig (and numpy.testing, which reads it on import) for the real OS first: a
    lazy first read after ``sys.platform`` changed looks for the other OS's config module.
    psutil likewise picks its native module by ``sys.platform`` when first imported (peft,
    which diffusers' LoRA loaders import, imports it): imported here for the real OS."""
    import sysconfig

    import numpy.testing  # noqa: F401
    import psutil  # noqa: F401

    sysconfig.get_config_vars()


def as_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process Linux for livediffusion and coremltools (``sys.platform``), so the
    "convert on Linux" half of a test also runs as such on a Mac."""
    _warm_sysconfig()
    monkeypatch.setattr(sys, "platform", "linux")


def install(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    macos: tuple[int, int] = (15, 3),
    machine: str = "arm64",
) -> CoreMLWorld:
    """Make this process an Apple Silicon Mac on ``macos`` as far as coremltools and
    livediffusion can tell, with the stub as Core ML. Undone by ``monkeypatch``."""
    import coremltools
    from coremltools.models import _compiled_model, compute_device, compute_plan, model, utils

    _warm_sysconfig()
    world = CoreMLWorld(macos, tmp_path)
    native = native_module(world)
    monkeypatch.setitem(sys.modules, "coremltools.libcoremlpython", native)
    monkeypatch.setattr(coremltools, "libcoremlpython", native, raising=False)
    # names bound at import time (`from ..libcoremlpython import _MLModelProxy`), None on Linux
    for where in (model, _compiled_model, compute_plan, compute_device):
        monkeypatch.setattr(where, "_MLModelProxy", native._MLModelProxy)
    monkeypatch.setattr(model, "_MLModelAssetProxy", _MLModelAssetProxy)
    # the OS
    version = ".".join(map(str, macos))
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "mac_ver", lambda *a, **k: (version, ("", "", ""), machine))
    monkeypatch.setattr(platform, "machine", lambda: machine)
    for where in (utils, model, _compiled_model):
        monkeypatch.setattr(where, "_macos_version", lambda: macos)
    return world
