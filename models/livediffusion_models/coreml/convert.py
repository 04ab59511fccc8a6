"""``torch.export`` -> coremltools -> ``.mlpackage``: convert a model's programs into the cache.

Why ``torch.export`` and not ``torch.jit.trace``: with torch 2.13, diffusers 0.42 and numpy
>= 2.4 the traced route fails inside the converter (coremltools issue 2633), while an
``ExportedProgram`` converts, and it is the only route that turns buffers updated in
``forward`` into Core ML states.

Input and output types, as coremltools 9.0 really moves them: inputs are float32 because
``predict`` turns every float16 numpy input into a float32 copy before Core ML sees it
(``MLModel._update_float16_multiarray_input_to_float32``, which also replaces the entry in the
caller's dict), so float16 inputs would cost one more copy, not one less; the program casts to
fp16 on the device. Outputs are declared in the compute precision (fp16 at fp16), but Python
never sees fp16: the native bridge widens every fp16 output to a new float32 MLMultiArray and
copies that into a new float32 numpy array (``convertArrayValueToPython`` in
coremlpython/CoreMLPythonUtils.mm; its comment: "py:array doesn't support fp16"). So every
output reaches numpy as float32, at float32's size.

``ct.convert`` is called with ``skip_model_load=True``: without it, on a Mac, coremltools
compiles the fresh package and loads it into Core ML at once (``MLModel._get_proxy_and_spec``),
minutes and gigabytes for a full-size UNet that is thrown away (Apple's own
``torch2coreml.py`` passes it too). Conversion runs on any OS. On macOS each package is then
compiled once to ``.mlmodelc`` (compiling an ``.mlpackage`` on every load costs seconds);
elsewhere the packages are left for the Mac to compile on first load.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livediffusion_models.coreml import (
    Precision,
    Target,
    Variant,
    require_coremltools,
    runnable_targets,
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
from livediffusion_models.coreml.styles import baked_unet, merge_functions, plan_styles

if TYPE_CHECKING:
    from livediffusion_models.controlnet import LoadedControlNet
    from livediffusion_models.lora.read import WeightedLora

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
    variant: Variant,
    precision: Precision,
    target: Target,
    stateful: bool | None,
    *,
    styles: bool = False,
) -> bool:
    """Whether the programs keep Core ML states: None = wherever allowed; True where not
    allowed is an error, said before any weights are loaded."""
    if styles:
        if stateful:
            raise ValueError(
                "Core ML states belong to one loaded function each, so LoRA styles run "
                "without them: use --states off (or auto) with LoRA styles"
            )
        return False
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
    loras: Sequence[WeightedLora] = (),
    styles: bool = False,
    controlnet: LoadedControlNet | None = None,
) -> ConversionKey:
    if styles and not loras:
        raise ValueError("LoRA styles need at least one --lora")
    if styles and (variant != "fused" or target != "macOS15"):
        raise ValueError(
            "LoRA styles are one multifunction program, which needs --variant fused and "
            "--target macOS15 (macOS 15 runs it); without styles the LoRAs are baked as one mix"
        )
    if controlnet is not None and variant != "fused":
        raise ValueError("a ControlNet converts into the fused program only: --variant fused")
    return ConversionKey(
        model=model,
        weights=fingerprint,
        size=size,
        precision=precision,
        target=target,
        variant=variant,
        stateful=resolve_stateful(variant, precision, target, stateful, styles=styles),
        coremltools=require_coremltools(),
        code=code_digest(),
        loras=tuple((choice.lora.digest, float(choice.weight)) for choice in loras),
        styles=styles,
        controlnet=f"{controlnet.fingerprint}:{controlnet.condition}" if controlnet else "",
    )


def export_program(program: ProgramSpec) -> Any:
    """The ``torch.export`` program the converter reads (decomposed to core ATen ops)."""
    import torch

    module = program.module.eval()
    with torch.no_grad():
        exported = torch.export.export(module, program.example_inputs())
    return exported.run_decompositions({})


def _convert_one(
    program: ProgramSpec, exported: Any, *, precision: Precision, target: Target
) -> Any:
    """``exported`` (``export_program(program)``) as one ML program. Its weights are the
    modules' own tensors, read when this converts: a style baked into them in place since the
    export is what this converts."""
    import coremltools as ct
    import numpy as np

    out_dtype = np.float16 if precision == "fp16" else np.float32
    with warnings.catch_warnings():
        # torch 2.13 warns about its own pytree internals (LeafSpec) when the converter copies
        # the exported program: nothing a user can act on
        warnings.simplefilter("ignore", FutureWarning)
        return ct.convert(
            exported,
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
            # on a Mac, no compile-and-load of the fresh package: it is saved, then compiled
            # once into the cache by compile_programs
            skip_model_load=True,
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
    target: Target | None = None,
    variant: Variant = "fused",
    stateful: bool | None = None,
    loras: Sequence[WeightedLora] = (),
    styles: bool = False,
    controlnet: LoadedControlNet | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    compile: bool = True,
    progress: Progress = _log_progress,
) -> ConvertedModel:
    """Convert ``components`` (a ``LoadedModel``: unet, vae, tokenizer) unless already cached,
    then (``compile``, on macOS) compile it with :func:`compile_programs`.

    ``loras`` are baked into the UNet's weights at their weights (one mix), or with ``styles``
    as one function each (:mod:`~livediffusion_models.coreml.styles`); the components' own
    weights are restored afterwards. ``controlnet`` goes into the fused step with its
    condition. All three are part of the cache key.

    ``target`` None is ``--target auto``: a cached conversion for any target this machine runs
    (:func:`~livediffusion_models.coreml.runnable_targets`, newest first) is used as it is, so
    a folder converted on Linux (macOS14) is found on a Mac running 15; only when none is
    cached is one converted, for the newest. The modules are moved to float32 on the CPU
    first: export traces there, and the converter applies ``precision`` itself.
    """
    import torch

    keys: list[ConversionKey] = []
    refused: ValueError | None = None
    for candidate in runnable_targets() if target is None else (target,):
        try:
            keys.append(
                conversion_key(
                    model=model,
                    fingerprint=fingerprint,
                    size=size,
                    precision=precision,
                    target=candidate,
                    variant=variant,
                    stateful=stateful,
                    loras=loras,
                    styles=styles,
                    controlnet=controlnet,
                )
            )
        except ValueError as exc:  # e.g. --states on: not for a macOS14 candidate
            refused = refused or exc
    if not keys:
        assert refused is not None
        raise refused
    if not force:
        for candidate_key in keys:
            cached = find_converted(candidate_key, cache_dir)
            if cached is not None:
                progress(f"Core ML programs already converted: {cached.folder}")
                if candidate_key.target != keys[0].target:
                    progress(
                        f"these are {candidate_key.target} programs (converted elsewhere?); "
                        f"`livediffusion convert --target {keys[0].target}` makes this Mac's "
                        "newest kind, used from then on"
                    )
                return compile_programs(cached, progress=progress) if compile else cached
    key = keys[0]

    unet, vae = components.unet, components.vae
    control = controlnet.controlnet if controlnet is not None else None
    for module in (unet, vae, control):
        if module is None:
            continue
        if module.dtype != torch.float32 or module.device.type != "cpu":
            # nn.Module.to: diffusers' own .to warns on every cast, even with nothing to keep
            torch.nn.Module.to(module, device="cpu", dtype=torch.float32)
        module.eval().requires_grad_(False)
    tokens = int(getattr(components.tokenizer, "model_max_length", 77))
    condition = None
    if controlnet is not None:
        from livediffusion_models.condition import condition_for

        condition = condition_for(controlnet.condition, size)
    programs = build_programs(
        unet,
        vae,
        size=size,
        tokens=tokens,
        variant=variant,
        stateful=key.stateful,
        controlnet=control,
        condition=condition,
    )
    plan = plan_styles(loras, styles)

    def write(folder: Path) -> dict[str, ConvertedProgram]:
        written = {}
        with baked_unet(unet, loras) as bake:
            for number, program in enumerate(programs, start=1):
                started = time.monotonic()
                package = folder / f"{program.name}.mlpackage"
                parts = []
                exported = None
                for style in plan:
                    bake(style)  # in place: the exported program below holds these tensors
                    what = f"{program.name} ({style.name})" if style.name else program.name
                    progress(
                        f"[{number}/{len(programs)}] converting {what} "
                        f"({key.precision}, {key.target}{', states' if program.states else ''}"
                        "): torch.export, then coremltools; minutes for a full-size UNet"
                    )
                    if exported is None:  # one torch.export per program, for every style
                        exported = export_program(program)
                    mlmodel = _convert_one(
                        program, exported, precision=key.precision, target=key.target
                    )
                    part = package if not style.name else folder / f".{style.name}.mlpackage"
                    mlmodel.save(str(part))
                    parts.append((style.name, part))
                if styles:
                    progress(f"merging {len(parts)} styles into one package (shared weights)")
                    merge_functions(parts, package)
                written[program.name] = ConvertedProgram(
                    name=program.name,
                    package=package,
                    inputs={t.name: t.shape for t in program.inputs},
                    outputs=program.outputs,
                    states={t.name: t.shape for t in program.states},
                    functions=tuple(style.name for style in plan) if styles else (),
                )
                seconds = time.monotonic() - started
                progress(f"[{number}/{len(programs)}] {program.name} done in {seconds:.0f} s")
        return written

    converted = commit_entry(key, write, cache_dir)
    progress(f"Core ML programs saved in {converted.folder}")
    return compile_programs(converted, progress=progress) if compile else converted


def _compile_destination(program: ConvertedProgram) -> Path:
    """A temporary sibling of ``step.mlmodelc`` whose name still ends in ``.mlmodelc``.

    coremltools 9.0's ``compile_model`` refuses any ``destination_path`` that does not end in
    ``.mlmodelc`` (models/utils.py), and ``shutil.move``s Core ML's compiled folder there,
    which must not exist yet (``move`` into an existing folder nests it inside).
    """
    return program.compiled.with_name(f".{program.name}.tmp-{os.getpid()}.mlmodelc")


def compile_programs(
    converted: ConvertedModel, *, progress: Progress = _log_progress
) -> ConvertedModel:
    """On macOS, compile each package once to ``.mlmodelc`` beside it; elsewhere do nothing.

    Compiled into a temporary ``.mlmodelc`` name and renamed, so a compile cut short is never
    loaded; when another process finished the same compile first, its result is kept.
    """
    if sys.platform != "darwin":
        return converted
    from coremltools.models.utils import compile_model

    for program in converted.programs.values():
        if program.compiled.is_dir():
            continue
        progress(f"compiling {program.package.name} for this Mac (once)")
        tmp = _compile_destination(program)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            compile_model(str(program.package), destination_path=str(tmp))
            if program.compiled.is_dir():  # another process won the race: keep its copy
                continue
            os.replace(tmp, program.compiled)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return converted
