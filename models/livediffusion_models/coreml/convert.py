"""``torch.export`` -> coremltools -> ``.mlpackage``: convert a model's programs into the cache.

Why ``torch.export`` and not ``torch.jit.trace``: with torch 2.13, diffusers 0.42 and numpy
>= 2.4 the traced route fails inside the converter (coremltools issue 2633), while an
``ExportedProgram`` converts, and it is the only route that turns buffers updated in
``forward`` into Core ML states.

Input and output types are chosen to save copies on the host: inputs are float32 because
coremltools' ``predict`` turns every float16 numpy input into a float32 copy before Core ML
sees it (``MLModel._update_float16_multiarray_input_to_float32``), so float16 inputs would
cost one more copy, not one less; the program casts to fp16 on the device. Outputs are in the
compute precision, which halves the copy back into numpy at fp16.

Conversion runs on any OS. On macOS each package is then compiled once to ``.mlmodelc``
(compiling an ``.mlpackage`` on every load costs seconds); elsewhere the packages are left for
the Mac to compile on first load.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livediffusion_models.coreml import (
    Precision,
    Target,
    Variant,
    require_coremltools,
)
from livediffusion_models.coreml.cache import (
    ConversionKey,
    ConvertedModel,
    ConvertedProgram,
    code_digest,
    commit_entry,
    find_converted,
)
from livediffusion_models.coreml.programs import ProgramSpec, build_programs

__all__ = [
    "compile_programs",
    "conversion_key",
    "convert",
    "default_stateful",
    "export_program",
    "resolve_stateful",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def default_stateful(variant: Variant, precision: Precision, target: Target) -> bool:
    """States need the macOS15 target and fp16 (Core ML states are fp16 only), fused only."""
    return variant == "fused" and precision == "fp16" and target == "macOS15"


def resolve_stateful(
    variant: Variant, precision: Precision, target: Target, stateful: bool | None
) -> bool:
    """Whether the programs keep Core ML states: None = wherever allowed; True where not
    allowed is an error, said before any weights are loaded."""
    if stateful is None:
        return default_stateful(variant, precision, target)
    if stateful and not default_stateful(variant, "fp16", target):
        raise ValueError("Core ML states need --variant fused and --target macOS15")
    if stateful and precision != "fp16":
        raise ValueError("Core ML states are fp16 only: use --precision fp16 or --states off")
    return stateful


def conversion_key(
    *,
    model: str,
    fingerprint: str,
    size: tuple[int, int],
    precision: Precision,
    target: Target,
    variant: Variant,
    stateful: bool | None = None,
) -> ConversionKey:
    return ConversionKey(
        model=model,
        weights=fingerprint,
        size=size,
        precision=precision,
        target=target,
        variant=variant,
        stateful=resolve_stateful(variant, precision, target, stateful),
        coremltools=require_coremltools(),
        code=code_digest(),
    )


def export_program(program: ProgramSpec) -> Any:
    """The ``torch.export`` program the converter reads (decomposed to core ATen ops)."""
    import torch

    module = program.module.eval()
    with torch.no_grad():
        exported = torch.export.export(module, program.example_inputs())
    return exported.run_decompositions({})


def _convert_one(program: ProgramSpec, *, precision: Precision, target: Target) -> Any:
    import coremltools as ct
    import numpy as np

    out_dtype = np.float16 if precision == "fp16" else np.float32
    with warnings.catch_warnings():
        # torch 2.13 warns about its own pytree internals (LeafSpec) when the converter copies
        # the exported program: nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        return ct.convert(
            export_program(program),
            inputs=[
                ct.TensorType(name=t.name, shape=t.shape, dtype=np.float32) for t in program.inputs
            ],
            outputs=[ct.TensorType(name=name, dtype=out_dtype) for name in program.outputs],
            states=[
                ct.StateType(
                    wrapped_type=ct.TensorType(shape=t.shape, dtype=np.float16), name=t.name
                )
                for t in program.states
            ],
            minimum_deployment_target=getattr(ct.target, target),
            compute_precision=(
                ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
            ),
            convert_to="mlprogram",
        )


def _log_progress(message: str) -> None:
    log.info("%s", message)


def convert(
    components: Any,
    *,
    model: str,
    fingerprint: str,
    size: tuple[int, int],
    precision: Precision = "fp16",
    target: Target = "macOS14",
    variant: Variant = "fused",
    stateful: bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    progress: Progress = _log_progress,
) -> ConvertedModel:
    """Convert ``components`` (a ``LoadedModel``: unet, vae, tokenizer) unless already cached.

    The modules are moved to float32 on the CPU first: export traces there, and the
    converter applies ``precision`` itself.
    """
    import torch

    key = conversion_key(
        model=model,
        fingerprint=fingerprint,
        size=size,
        precision=precision,
        target=target,
        variant=variant,
        stateful=stateful,
    )
    if not force:
        cached = find_converted(key, cache_dir)
        if cached is not None:
            progress(f"Core ML programs already converted: {cached.folder}")
            return compile_programs(cached, progress=progress)

    unet, vae = components.unet, components.vae
    for module in (unet, vae):
        if module.dtype != torch.float32 or module.device.type != "cpu":
            # nn.Module.to: diffusers' own .to warns on every cast, even with nothing to keep
            torch.nn.Module.to(module, device="cpu", dtype=torch.float32)
        module.eval().requires_grad_(False)
    tokens = int(getattr(components.tokenizer, "model_max_length", 77))
    programs = build_programs(
        unet, vae, size=size, tokens=tokens, variant=variant, stateful=key.stateful
    )

    def write(folder: Path) -> dict[str, ConvertedProgram]:
        written = {}
        for number, program in enumerate(programs, start=1):
            started = time.monotonic()
            progress(
                f"[{number}/{len(programs)}] converting {program.name} "
                f"({key.precision}, {key.target}{', states' if program.states else ''}): "
                "torch.export, then coremltools; minutes for a full-size UNet"
            )
            mlmodel = _convert_one(program, precision=precision, target=target)
            package = folder / f"{program.name}.mlpackage"
            mlmodel.save(str(package))
            written[program.name] = ConvertedProgram(
                name=program.name,
                package=package,
                inputs={t.name: t.shape for t in program.inputs},
                outputs=program.outputs,
                states={t.name: t.shape for t in program.states},
            )
            seconds = time.monotonic() - started
            progress(f"[{number}/{len(programs)}] {program.name} done in {seconds:.0f} s")
        return written

    converted = commit_entry(key, write, cache_dir)
    progress(f"Core ML programs saved in {converted.folder}")
    return compile_programs(converted, progress=progress)


def compile_programs(
    converted: ConvertedModel, *, progress: Progress = _log_progress
) -> ConvertedModel:
    """On macOS, compile each package once to ``.mlmodelc`` beside it; elsewhere do nothing.

    Compiled into a temporary name and renamed, so a compile cut short is never loaded.
    """
    if sys.platform != "darwin":
        return converted
    from coremltools.models.utils import compile_model

    for program in converted.programs.values():
        if program.compiled.is_dir():
            continue
        progress(f"compiling {program.package.name} for this Mac (once)")
        tmp = program.compiled.with_name(f".{program.compiled.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        compile_model(str(program.package), destination_path=str(tmp))
        os.replace(tmp, program.compiled)
    return converted
