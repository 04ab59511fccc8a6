"""Where converted programs live, and the key that keeps a stale or foreign one from loading.

One folder per conversion under ``<cache>/coreml/<model>/``, named for people
(``512x512-fp16-macOS15-fused-state-<digest>``) and checked by machine: its ``manifest.json``
holds the whole :class:`ConversionKey`, and an entry loads only when that key equals the one
asked for. The key covers everything that changes the program: the model, a fingerprint of
its weights, size, precision, target, variant, states, the LoRAs baked in (each file's digest
and weight) and whether they are styles (one function each), the ControlNet (its weights'
fingerprint and condition), the coremltools version and a digest of the code that builds the
programs (so a change to the frame-step math re-converts).

A conversion is written into a hidden ``.tmp-`` sibling and renamed into place only once the
manifest is written last, so a killed conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from livediffusion_models.cache import cache_dir
from livediffusion_models.coreml import Precision, Target, Variant

__all__ = [
    "MANIFEST",
    "ConversionKey",
    "ConvertedModel",
    "ConvertedProgram",
    "code_digest",
    "commit_entry",
    "coreml_cache_dir",
    "find_converted",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CODE_FILES = (
    "step.py",
    "condition.py",
    "coreml/programs.py",
    "coreml/convert.py",
    "lora/read.py",
    "lora/stack.py",
)


def coreml_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    return cache_dir(explicit) / "coreml"


def code_digest() -> str:
    """A digest of the modules that define what a program computes."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in _CODE_FILES:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ConversionKey:
    """Everything a converted program depends on; equal keys mean interchangeable programs."""

    model: str
    weights: str
    """The weights' fingerprint (``LoadedModel.fingerprint``), not their path."""
    size: tuple[int, int]
    """(height, width)."""
    precision: Precision
    target: Target
    variant: Variant
    stateful: bool
    coremltools: str
    code: str
    loras: tuple[tuple[str, float], ...] = ()
    """(file digest, weight) of each LoRA baked into the UNet, in ``--lora`` order."""
    styles: bool = False
    """One program function per LoRA (and one without) instead of one baked mix."""
    controlnet: str = ""
    """``<fingerprint>:<condition>`` of the ControlNet in the fused step; "" for none."""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = list(self.size)
        data["loras"] = [[digest, weight] for digest, weight in self.loras]
        return data

    def digest(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def folder_name(self) -> str:
        height, width = self.size
        state = "-state" if self.stateful else ""
        extras = ""
        if self.loras:
            extras += f"-{'styles' if self.styles else 'lora'}{len(self.loras)}"
        if self.controlnet:
            extras += "-controlnet"
        return (
            f"{width}x{height}-{self.precision}-{self.target}-{self.variant}{state}{extras}-"
            f"{self.digest()}"
        )

    def folder(self, explicit: str | os.PathLike[str] | None = None) -> Path:
        return coreml_cache_dir(explicit) / self.model / self.folder_name()


@dataclass(frozen=True, slots=True)
class ConvertedProgram:
    """One saved program and its interface, as written in the manifest."""

    name: str
    package: Path
    inputs: Mapping[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    states: Mapping[str, tuple[int, ...]]
    functions: tuple[str, ...] = ()
    """A multifunction program's functions (the first is its default); () for one."""

    @property
    def compiled(self) -> Path:
        """Where the compiled form (``.mlmodelc``) lives once Core ML compiled it (macOS)."""
        return self.package.with_suffix(".mlmodelc")


@dataclass(frozen=True, slots=True)
class ConvertedModel:
    key: ConversionKey
    folder: Path
    programs: Mapping[str, ConvertedProgram]


def _programs_from_manifest(folder: Path, data: Mapping[str, Any]) -> dict[str, ConvertedProgram]:
    programs = {}
    for name, entry in data["programs"].items():
        programs[name] = ConvertedProgram(
            name=name,
            package=folder / entry["package"],
            inputs={k: tuple(v) for k, v in entry["inputs"].items()},
            outputs=tuple(entry["outputs"]),
            states={k: tuple(v) for k, v in entry["states"].items()},
            functions=tuple(entry.get("functions", ())),
        )
    return programs


def find_converted(
    key: ConversionKey, explicit: str | os.PathLike[str] | None = None
) -> ConvertedModel | None:
    """The cached conversion for exactly ``key``, or None (missing, partial or another key)."""
    folder = key.folder(explicit)
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        if data.get("key") != key.as_json():
            log.warning("ignoring %s: it was converted for another key", folder)
            return None
        programs = _programs_from_manifest(folder, data)
    except (AttributeError, KeyError, TypeError, ValueError):
        log.warning("ignoring %s: its manifest is damaged", folder)
        return None
    if not programs or not all(p.package.is_dir() for p in programs.values()):
        return None
    return ConvertedModel(key=key, folder=folder, programs=programs)


def commit_entry(
    key: ConversionKey,
    write: Callable[[Path], Mapping[str, ConvertedProgram]],
    explicit: str | os.PathLike[str] | None = None,
) -> ConvertedModel:
    """Run ``write(tmp_folder)`` (it saves the packages and returns them), then publish it.

    The manifest is written last and the folder renamed into place in one step: whatever
    kills the process midway leaves only a ``.tmp-`` folder, which lookups never read and the
    next conversion of the same key removes.
    """
    final = key.folder(explicit)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}-"
    for stale in final.parent.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{prefix}{os.getpid()}"
    tmp.mkdir()
    try:
        programs = write(tmp)
        manifest = {
            "key": key.as_json(),
            "programs": {
                name: {
                    "package": program.package.name,
                    "inputs": {k: list(v) for k, v in program.inputs.items()},
                    "outputs": list(program.outputs),
                    "states": {k: list(v) for k, v in program.states.items()},
                    "functions": list(program.functions),
                }
                for name, program in programs.items()
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if final.exists():  # a damaged or foreign entry under our name: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    converted = find_converted(key, explicit)
    if converted is None:  # pragma: no cover - we just wrote it
        raise RuntimeError(f"conversion written to {final} but it does not read back")
    return converted
