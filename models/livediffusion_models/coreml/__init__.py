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
    "PRECISIONS",
    "PSNR_PASS_DB",
    "TARGETS",
    "VARIANTS",
    "ComputeUnits",
    "CoreMLSettings",
    "CoreMLUnavailableError",
    "Precision",
    "Target",
    "Variant",
    "coremltools_version",
    "default_target",
    "macos_version",
    "require_coremltools",
    "runtime_available",
]

Variant = Literal["fused", "stages"]
VARIANTS: tuple[Variant, ...] = ("fused", "stages")
Precision = Literal["fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "fp32")
Target = Literal["macOS14", "macOS15"]
TARGETS: tuple[Target, ...] = ("macOS14", "macOS15")
ComputeUnits = Literal["cpu_and_gpu", "all", "cpu_and_ne"]
COMPUTE_UNITS: tuple[ComputeUnits, ...] = ("cpu_and_gpu", "all", "cpu_and_ne")
"""``cpu_and_gpu`` first: the source paper measured the Neural Engine 6x slower for this UNet."""


@dataclass(frozen=True, slots=True)
class CoreMLSettings:
    """How to convert and run: the options ``convert``, ``serve``, ``bench`` and ``doctor``
    share, and part of the conversion cache's key."""

    variant: Variant = "fused"
    precision: Precision = "fp16"
    target: Target | None = None
    """None: :func:`default_target` (macOS15 on a Mac running 15+, else macOS14)."""
    compute_units: ComputeUnits = "cpu_and_gpu"
    states: bool | None = None
    """None: Core ML states wherever the target allows them (fused, fp16, macOS15)."""


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


def default_target() -> Target:
    """macOS15 (Core ML states, fused attention) where this Mac runs 15+, else macOS14.

    Off macOS the oldest supported target, so a package prepared elsewhere loads on any
    Apple Silicon Mac that runs livediffusion; pass ``--target macOS15`` for a newer one.
    """
    return "macOS15" if macos_version() >= (15,) else "macOS14"
