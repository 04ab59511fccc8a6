"""The PyTorch backend: :class:`FrameStep` on cpu, cuda or mps, eager or as one CUDA graph.

All per-frame buffers (upload, model image, temporal state, prompt and noise glides, the
control vector) are allocated once per input shape and then updated in place, so the hot path
allocates only what eager PyTorch allocates internally. That is also the shape the CUDA-graph
path needs: on CUDA with ``compile`` on, the same buffers and the whole frame around them are
captured once per picture size and replayed (:mod:`livediffusion_models.backends.cuda_graph`).

Three modes, which ``livediffusion bench`` times side by side: ``eager``; ``compiled``
(torch.compile, Python still launches each compiled kernel group); ``graph`` (compiled and
captured: one launch per frame). Compiling or capturing that fails falls back a mode, with a
warning, rather than stopping the show.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from livediffusion_models.backends.base import (
    BackendOptions,
    Embedding,
    FrameParams,
    ModelComponents,
    Pixels,
    StageTimer,
)
from livediffusion_models.backends.cuda_graph import (
    CompileMode,
    FrameGraph,
    compile_frame_step,
    prepare_modules,
    progress,
    use_compile_cache,
)
from livediffusion_models.backends.inputs import StepInputs, StepInputsBackend, TextEncoder
from livediffusion_models.errors import NonFiniteFrameError
from livediffusion_models.imaging import Geometry, plan_geometry, to_model, to_pixels
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import FrameStep

__all__ = ["RunMode", "TorchBackend", "TorchOptions", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

RunMode: TypeAlias = Literal["eager", "compiled", "graph"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is visible to PyTorch")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps: the Metal backend is not available (macOS + Apple GPU)")
    if name not in ("cuda", "mps", "cpu"):
        raise ValueError(f"device must be auto, cuda, mps or cpu, got {name!r}")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on GPUs and float32 on the CPU (CPU half precision is slow)."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, got {name!r}") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time around a call is its real time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchOptions(BackendOptions):
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32
    compile: CompileMode = "off"
    """CUDA only: torch.compile the step (``max``: also autotune every kernel)."""
    graph: bool = True
    """With ``compile`` on CUDA: capture the whole frame in one CUDA graph."""
    compile_cache: Path | None = None
    """Where torch.compile keeps its artifacts between runs (None: torch's own choice)."""


@dataclass
class _ShapeBuffers:
    """Everything that depends on the input and output shape; rebuilt when either changes."""

    geometry: Geometry
    staging: torch.Tensor | None  # pinned host copy of the input (accelerators only)
    pixels_in: torch.Tensor  # (H, W, 4) uint8 on the device
    pixels_out: torch.Tensor  # (h, w, 4) uint8 on the device
    finite: torch.Tensor  # () bool on the device: the last output had no NaN or inf
    padded: bool = False  # whether self._image holds this geometry's letterbox padding
    graph: FrameGraph | None = None  # graph mode: this size's captured frame


class TorchBackend(StepInputsBackend):
    """Eager PyTorch. Build it with :meth:`from_components` (or the plugin's backend table)."""

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: Mapping[str, Any],
        options: TorchOptions,
    ) -> None:
        self.device = torch.device(options.device)
        self.dtype = dtype = options.dtype
        self.fit = options.fit
        height, width = options.size
        scale = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
        if height % (scale * 4) or width % (scale * 4):
            raise ValueError(f"model size {width}x{height} must be a multiple of {scale * 4}")
        self._size = (height, width)

        for module in (unet, vae, text_encoder):
            if module.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op
                module.to(dtype=dtype)
            module.to(device=self.device).eval().requires_grad_(False)
        self.frame_step = FrameStep(unet, vae)
        self.mode: RunMode = "eager"
        self._compile: CompileMode = options.compile
        if options.compile != "off" and self.device.type != "cuda":
            # compile is on by default and means nothing off CUDA: not worth a line each start
            log.debug("--compile applies to CUDA GPUs; %s runs eager", self.device.type)
            self._compile = "off"
        if self._compile != "off":
            prepare_modules(unet, vae)
            if options.compile_cache is not None:
                use_compile_cache(options.compile_cache)
            self.mode = "graph" if options.graph else "compiled"
        self._model: Any = compile_frame_step(self.frame_step, self._compile)
        self._compiled = self._compile == "off"  # the first call compiles; then it is known
        self.name = self._describe()
        latent_shape = (1, int(unet.config.in_channels), height // scale, width // scale)
        max_length = int(getattr(tokenizer, "model_max_length", 77))
        self.text = TextEncoder(text_encoder, tokenizer, device=self.device, tokens=max_length)
        self.inputs = StepInputs(
            latent_shape=latent_shape,
            embed_shape=(1, max_length, int(unet.config.cross_attention_dim)),
            image_shape=(1, 3, height, width),
            schedule=NoiseSchedule.from_scheduler_config(scheduler_config),
            device=self.device,
            dtype=dtype,
            seed=options.seed,
        )
        self._image = torch.zeros((1, 3, height, width), device=self.device, dtype=dtype)
        self._shape: _ShapeBuffers | None = None

    @classmethod
    def from_components(cls, components: ModelComponents, options: TorchOptions) -> TorchBackend:
        return cls(
            unet=components.unet,
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            scheduler_config=components.scheduler_config,
            options=options,
        )

    @property
    def model_size(self) -> tuple[int, int]:
        return self._size

    def _describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        mode = "" if self.mode == "eager" else f" {self.mode}"
        return f"torch-{self.device.type} {dtype}{mode}"

    def _fall_back(self, what: str, mode: RunMode, why: BaseException) -> None:
        log.warning(
            "%s failed (%s: %s); running %s instead. --compile off skips this at start-up",
            what,
            type(why).__name__,
            str(why).splitlines()[0] if str(why) else "",
            mode,
        )
        self.mode = mode
        if mode == "eager":
            self._model = self.frame_step
        if self._shape is not None:
            self._shape.graph = None
        self.name = self._describe()

    # -- prompts and seeds -------------------------------------------------------------

    def encode_prompt(self, text: str) -> Embedding:
        return self.text.encode(text).to(self.dtype)

    # -- frames --------------------------------------------------------------------------

    def _buffers_for(self, pixels: Pixels, out: Pixels) -> _ShapeBuffers:
        in_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        out_size = (int(out.shape[0]), int(out.shape[1]))
        current = self._shape
        if (
            current is not None
            and current.geometry.input_size == in_size
            and current.geometry.output_size == out_size
        ):
            return current
        geometry = plan_geometry(in_size, self._size, output_size=out_size, fit=self.fit)
        on_cpu = self.device.type == "cpu"
        staging = None if on_cpu else torch.empty((*in_size, 4), dtype=torch.uint8, pin_memory=True)
        self._shape = _ShapeBuffers(
            geometry=geometry,
            staging=staging,
            pixels_in=torch.empty((*in_size, 4), dtype=torch.uint8, device=self.device),
            pixels_out=torch.empty((*out_size, 4), dtype=torch.uint8, device=self.device),
            finite=torch.ones((), dtype=torch.bool, device=self.device),
        )
        return self._shape

    # -- compiled and captured ---------------------------------------------------------------

    def _compile_now(self) -> None:
        """Compile on the first frame (it takes a minute cold), falling back to eager."""
        try:
            with progress(f"compiling the frame step ({self._compile}; cached for next time)"):
                self._model(*self.inputs.arguments(self._image))
                synchronize(self.device)
        except Exception as exc:  # any compiler or driver failure: keep the show going
            self._fall_back("torch.compile", "eager", exc)
        self._compiled = True

    def _device_frame(self, buffers: _ShapeBuffers) -> None:
        """The whole frame on device buffers only: what the CUDA graph captures."""
        to_model(buffers.pixels_in, buffers.geometry, out=self._image, pad=False)
        output = self.inputs.run(self._model, self._image)
        to_pixels(output, buffers.geometry, out=buffers.pixels_out)
        buffers.finite.copy_(torch.isfinite(output).all())

    def _graph_for(self, pixels: Pixels, buffers: _ShapeBuffers) -> FrameGraph | None:
        if buffers.graph is not None:
            return buffers.graph
        inputs = self.inputs
        width, height = buffers.geometry.input_size[1], buffers.geometry.input_size[0]
        try:
            with progress(f"capturing the frame for {width}x{height} input"):
                buffers.pixels_in.copy_(torch.from_numpy(pixels))
                to_model(buffers.pixels_in, buffers.geometry, out=self._image, pad=True)
                buffers.padded = True
                buffers.graph = FrameGraph(
                    lambda: self._device_frame(buffers),
                    pixels_in=buffers.pixels_in,
                    pixels_out=buffers.pixels_out,
                    finite=buffers.finite,
                    keep=(inputs.previous_x0, inputs.previous_output),
                )
        except Exception as exc:
            self._fall_back("capturing the CUDA graph", "compiled", exc)
            return None
        return buffers.graph

    def _upload(self, pixels: Pixels, buffers: _ShapeBuffers) -> torch.Tensor:
        if buffers.staging is None:
            return torch.from_numpy(pixels)
        np.copyto(buffers.staging.numpy(), pixels)
        buffers.pixels_in.copy_(buffers.staging, non_blocking=True)
        return buffers.pixels_in

    def _to_model(self, pixels: Pixels, buffers: _ShapeBuffers) -> None:
        # The letterbox padding never changes for one geometry: paint it on its first frame.
        first = not buffers.padded
        to_model(self._upload(pixels, buffers), buffers.geometry, out=self._image, pad=first)
        buffers.padded = True

    def _to_pixels(self, image: torch.Tensor, buffers: _ShapeBuffers, out: Pixels) -> None:
        target = torch.from_numpy(out) if buffers.staging is None else buffers.pixels_out
        to_pixels(image, buffers.geometry, out=target)
        if buffers.staging is not None:
            torch.from_numpy(out).copy_(target)

    @torch.inference_mode()
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        if not self._compiled:
            self._compile_now()
        self.inputs.update_controls(params)
        buffers = self._buffers_for(pixels, out)
        graph = self._graph_for(pixels, buffers) if self.mode == "graph" else None
        if graph is not None:
            finite = graph.run(pixels, out)
        else:
            self._to_model(pixels, buffers)
            output = self.inputs.run(self._model, self._image)
            queued = torch.isfinite(output).all()  # read after the download's sync
            self._to_pixels(output, buffers, out)
            finite = bool(queued)
        if not finite:
            self.inputs.clear_state()
            raise NonFiniteFrameError(
                "the model produced NaN or infinite values; the frame was skipped and the "
                "temporal state cleared"
            )

    @torch.inference_mode()
    def passthrough(self, pixels: Pixels, *, out: Pixels) -> None:
        buffers = self._buffers_for(pixels, out)
        self._to_model(pixels, buffers)
        self._to_pixels(self._image, buffers, out)

    def stage_timers(self) -> Mapping[str, StageTimer]:
        if self._shape is None:
            raise RuntimeError("run one step() before timing its stages")
        buffers = self._shape
        pixels = np.full((*buffers.geometry.input_size, 4), 128, dtype=np.uint8)
        out = np.empty((*buffers.geometry.output_size, 4), dtype=np.uint8)
        vae, unet = self.frame_step.vae, self.frame_step.unet
        device = self.device
        controls = self.inputs.controls
        latents = self.inputs.previous_x0.clone()
        embeds = self.inputs.embeds_to

        @torch.inference_mode()
        def pre() -> None:
            self._to_model(pixels, buffers)
            synchronize(device)

        @torch.inference_mode()
        def encode() -> None:
            vae.encode(self._image)
            synchronize(device)

        @torch.inference_mode()
        def denoise() -> None:
            unet(latents, controls[0], encoder_hidden_states=embeds, return_dict=False)
            synchronize(device)

        @torch.inference_mode()
        def decode() -> None:
            vae.decode(latents)
            synchronize(device)

        @torch.inference_mode()
        def post() -> None:
            self._to_pixels(self.inputs.previous_output, buffers, out)
            synchronize(device)

        @torch.inference_mode()
        def frame() -> None:
            self.step(pixels, FrameParams(), out=out)
            synchronize(device)

        return {
            "pre": pre,
            "encode": encode,
            "unet": denoise,
            "decode": decode,
            "post": post,
            "frame": frame,
        }

    def close(self) -> None:
        self._shape = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
