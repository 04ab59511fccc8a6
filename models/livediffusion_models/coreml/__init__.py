"""Core ML for Apple Silicon: convert :class:`FrameStep` into ML programs, cache and load them.

Importing this package is cheap (no torch, no coremltools): the CLI reads the choices and
defaults from it. The work lives in submodules, imported only when used:

* ``programs``: the torch modules that are exported (the fused step, its stateful wrapper,
  the three stages), with their input and output names;
* ``convert``: ``torch.export`` -> coremltools -> ``.mlpackage`` in the cache (runs anywhere);
* ``cache``: where converted programs live and the key that keeps a stale one from loading;
* ``runtime``: loading compiled programs with Core ML itself (macOS only).
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from typing import Literal

from livediffusion_models.errors import ModelError

__all__ = [
    "COMPUTE_UNITS",
    "HINTS_MACOS",
    "PRECISIONS",
    "PSNR_PASS_DB",
    "SPECIALIZATIONS",
    "TARGETS",
    "TARGET_MACOS",
    "VARIANTS",
    "ComputeUnits",
    "CoreMLSettings",
    "CoreMLUnavailableError",
    "Precision",
    "Specialization",
    "Target",
    "Variant",
    "check_hints",
    "coremltools_version",
    "default_target",
    "macos_version",
    "require_coremltools",
    "runnable_targets",
    "runtime_available",
]

Variant = Literal["fused", "stages"]
VARIANTS: tuple[Variant, ...] = ("fused", "stages")
Precision = Literal["fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "fp32")
Target = Literal["macOS14", "macOS15"]
TARGETS: tuple[Target, ...] = ("macOS14", "macOS15")
TARGET_MACOS: dict[Target, tuple[int, int]] = {"macOS14": (14, 0), "macOS15": (15, 0)}
"""The macOS each target's programs need (a macOS15 program is spec version 9, iOS18/macOS15)."""
ComputeUnits = Literal["cpu_and_gpu", "all", "cpu_and_ne"]
COMPUTE_UNITS: tuple[ComputeUnits, ...] = ("cpu_and_gpu", "all", "cpu_and_ne")
"""``cpu_and_gpu`` first: the source paper measured the Neural Engine 6x slower for this UNet."""
Specialization = Literal["default", "fast-prediction"]
SPECIALIZATIONS: tuple[Specialization, ...] = ("default", "fast-prediction")
"""Core ML's ``MLSpecializationStrategy`` (coremltools ``SpecializationStrategy.Default`` /
``FastPrediction``): how hard Core ML specialises a program for this Mac when it loads it."""
HINTS_MACOS = (15, 0)
"""coremltools refuses any optimization hint below macOS 15 (``_verify_optimization_hint_input``
in models/model.py), and Core ML has them only from 15 on."""


@dataclass(frozen=True, slots=True)
class CoreMLSettings:
    """How to convert and run: the options ``convert``, ``serve``, ``bench`` and ``doctor``
    share, and part of the conversion cache's key."""

    variant: Variant = "fused"
    precision: Precision = "fp16"
    target: Target | None = None
    """None (auto): any cached conversion this machine can run, newest target first, else a
    new one for :func:`default_target`; see :func:`runnable_targets`."""
    compute_units: ComputeUnits = "cpu_and_gpu"
    states: bool | None = None
    """None: Core ML states wherever the target allows them (fused, fp16, macOS15)."""
    low_precision_accumulation: bool = False
    """Core ML's ``allowLowPrecisionAccumulationOnGPU`` hint (macOS 15+): fp16 sums on the GPU.
    Load-time only, not part of the conversion; its speed and PSNR are unmeasured."""
    specialization: Specialization = "default"
    """Core ML's ``specializationStrategy`` hint (macOS 15+); load-time only, unmeasured."""

    @property
    def hinted(self) -> bool:
        """Whether any optimization hint differs from Core ML's default (so needs macOS 15)."""
        return self.low_precision_accumulation or self.specialization != "default"


INSTALL_HINT = 'pip install "livediffusion[mac]"'

PSNR_PASS_DB = 35.0
"""Core ML against torch on the same inputs: below this a program visibly differs."""


class CoreMLUnavailableError(ModelError):
    """coremltools is missing, or the Core ML runtime is asked for off macOS."""


def coremltools_version() -> str | None:
    """The installed coremltools version, without importing it (the import takes seconds)."""
    try:
        return metadata.version("coremltools")
    except metadata.PackageNotFoundError:
        return None


class _ExpectedNoise(logging.Filter):
    """Drops two warnings coremltools logs on every import, which say nothing new here.

    Off macOS it logs six "Failed to load _ML...Proxy" lines (its Core ML runtime module exists
    only in macOS wheels: conversion needs none of it), and with torch newer than 2.7 "has not
    been tested" (the torch.export route is tested here; the README says so). Left in, they
    bury the conversion's progress and read like failures.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if sys.platform != "darwin" and message.startswith("Failed to load _ML"):
            return False
        return "has not been tested with coremltools" not in message


_NOISE_FILTER = _ExpectedNoise()


def require_coremltools() -> str:
    """Return coremltools' version, or say in one sentence what to install.

    Call before importing coremltools: it also quiets the warnings it logs on import.
    """
    version = coremltools_version()
    if version is None or find_spec("coremltools") is None:
        raise CoreMLUnavailableError(
            f"the Core ML backend needs coremltools, which is not installed: run `{INSTALL_HINT}`"
        )
    logger = logging.getLogger("coremltools")
    logger.addFilter(_NOISE_FILTER)  # filters are a set: adding twice is a no-op
    if logger.level == logging.NOTSET:
        # its INFO lines name every op each pass removes: thousands for a real UNet, under
        # the progress bars it draws itself
        logger.setLevel(logging.WARNING)
    return version


def macos_version(release: str | None = None) -> tuple[int, ...]:
    """(major, minor) of the running macOS; () elsewhere."""
    if sys.platform != "darwin" and release is None:
        return ()
    text = release if release is not None else platform.mac_ver()[0]
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return ()


def runtime_available() -> bool:
    """Whether Core ML itself can load and run programs here (macOS 14+ with coremltools).

    Conversion works everywhere; prediction needs Apple's framework, which coremltools
    reaches through its native module ``libcoremlpython``, shipped only in macOS wheels.
    """
    if sys.platform != "darwin" or macos_version() < (14,):
        return False
    return (
        find_spec("coremltools") is not None
        and find_spec("coremltools.libcoremlpython") is not None
    )


def runnable_targets() -> tuple[Target, ...]:
    """The targets ``--target auto`` accepts here, newest first.

    On a Mac: every target this macOS runs (macOS15 and macOS14 on 15+, macOS14 on 14), so a
    folder converted elsewhere for either is found before anything is converted again. Off
    macOS: macOS14 only, the target every Mac that runs livediffusion loads, so a folder
    ``convert`` prepares on Linux is found by a Mac on 14 or 15 with the same options.
    """
    version = macos_version()
    if not version:
        return ("macOS14",)
    found = tuple(t for t in reversed(TARGETS) if version >= TARGET_MACOS[t])
    return found or ("macOS14",)


def default_target() -> Target:
    """The target a new conversion gets under ``--target auto``: the newest this Mac runs
    (macOS15: Core ML states, fused attention), macOS14 off macOS."""
    return runnable_targets()[0]


def check_hints(settings: CoreMLSettings) -> None:
    """Say in one sentence, before any loading, that optimization hints need macOS 15."""
    if settings.hinted and macos_version() < HINTS_MACOS:
        found = ".".join(map(str, macos_version())) or "not macOS"
        raise CoreMLUnavailableError(
            "--low-precision-accumulation and --specialization fast-prediction are Core ML "
            f"optimization hints, which need macOS 15 or newer (this machine: {found}); "
            "leave them at their defaults here"
        )
