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
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
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
from livediffusion_models.condition import condition_for
from livediffusion_models.controlnet import LoadedControlNet
from livediffusion_models.errors import NonFiniteFrameError
from livediffusion_models.imaging import Geometry, plan_geometry, to_model, to_pixels
from livediffusion_models.lora import WeightChange
from livediffusion_models.lora.peft_runtime import PeftLoraStack
from livediffusion_models.lora.read import WeightedLora
from livediffusion_models.lora.stack import LoraStack
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, FrameStep

__all__ = [
    "LORA_RUNTIMES",
    "LoraRuntime",
    "RunMode",
    "TorchBackend",
    "TorchOptions",
    "resolve_device",
    "resolve_dtype",
]

log = logging.getLogger(__name__)

RunMode: TypeAlias = Literal["eager", "compiled", "graph"]
LoraRuntime: TypeAlias = Literal["in-place", "peft"]
LORA_RUNTIMES: tuple[LoraRuntime, ...] = ("in-place", "peft")

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; ``cuda:N`` picks one GPU of several; a named
    device that is absent is an error that says which devices there are."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps", "cpu") or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be auto, cuda, cuda:N, mps or cpu, got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {name}: no CUDA GPU is visible to PyTorch")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise RuntimeError(
                f"--device {name}: PyTorch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''}); "
                "CUDA_VISIBLE_DEVICES may hide the others"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps: the Metal backend is not available (macOS + Apple GPU)")
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
    loras: tuple[WeightedLora, ...] = ()
    """LoRAs read and checked (``lora.read.read_loras``), at their starting weights."""
    controlnet: LoadedControlNet | None = None
    """A ControlNet checked against the UNet (``controlnet.load_controlnet``); its condition
    is made from each frame inside the step, its scale is ``FrameParams.controlnet_scale``."""
    lora_runtime: LoraRuntime = "in-place"
    """``in-place``: weights rewritten on a change, nothing per frame (the default);
    ``peft``: unfused adapters, a tiny write per change, LoRA branches every frame (to measure)."""


@dataclass
class _ShapeBuffers:
    """One stream's buffers that depend on its input and output shape; rebuilt when either
    changes."""

    geometry: Geometry
    staging: torch.Tensor | None  # pinned host copy of the input (accelerators only)
    pixels_in: torch.Tensor  # (H, W, 4) uint8 on the device
    pixels_out: torch.Tensor  # (h, w, 4) uint8 on the device
    padded: bool = False  # whether this stream's row of the model image holds its padding


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

        control = options.controlnet
        controlnet = control.controlnet if control is not None else None
        for module in (unet, vae, text_encoder, controlnet):
            if module is None:
                continue
            if module.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op
                module.to(dtype=dtype)
            module.to(device=self.device).eval().requires_grad_(False)
        condition = None
        if control is not None:
            condition = condition_for(control.condition, self._size).to(self.device)
        self.frame_step = FrameStep(unet, vae, controlnet, condition)
        self.mode: RunMode = "eager"
        self._compile: CompileMode = options.compile
        if options.compile != "off" and self.device.type != "cuda":
            # compile is on by default and means nothing off CUDA: not worth a line each start
            log.debug("--compile applies to CUDA GPUs; %s runs eager", self.device.type)
            self._compile = "off"
        if self._compile != "off":
            prepare_modules(unet, vae)
            if controlnet is not None:
                controlnet.to(memory_format=torch.channels_last)
            if options.compile_cache is not None:
                use_compile_cache(options.compile_cache)
            self.mode = "graph" if options.graph else "compiled"
        self._model: Any = compile_frame_step(self.frame_step, self._compile)
        self._compiled = self._compile == "off"  # the first call compiles; then it is known
        self.name = self._describe()
        streams = options.streams
        latent_shape = (streams, int(unet.config.in_channels), height // scale, width // scale)
        max_length = int(getattr(tokenizer, "model_max_length", 77))
        self.text = TextEncoder(text_encoder, tokenizer, device=self.device, tokens=max_length)
        # after the modules' final device, dtype and layout, before anything compiles
        runtime = LoraStack if options.lora_runtime == "in-place" else PeftLoraStack
        self._loras: LoraStack | PeftLoraStack = runtime(
            unet=unet, text_encoder=text_encoder, text_lock=self.text.lock
        )
        for choice in options.loras:
            self._loras.add(choice.lora, weight=choice.weight)
        self.inputs = StepInputs(
            latent_shape=latent_shape,
            embed_shape=(streams, max_length, int(unet.config.cross_attention_dim)),
            image_shape=(streams, 3, height, width),
            schedule=NoiseSchedule.from_scheduler_config(scheduler_config),
            device=self.device,
            dtype=dtype,
            seed=options.seed,
            streams=streams,
        )
        self._image = torch.zeros((streams, 3, height, width), device=self.device, dtype=dtype)
        # per stream: the model image's row, its shape buffers; the flags of the whole batch
        self._rows = [self._image[k : k + 1] for k in range(streams)]
        self._shapes: list[_ShapeBuffers | None] = [None] * streams
        self._finite = torch.ones((streams,), dtype=torch.bool, device=self.device)
        self._graph: FrameGraph | None = None  # graph mode: the captured frame ...
        self._graph_key: tuple[Geometry, ...] = ()  # ... for these geometries

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

    @property
    def warmup_frames(self) -> int:
        # eager on a CPU has no kernels to pick and no graph to capture: the second grey frame
        # took as long as any later one (full model at 256x256 on 2 cores: 1.85 s, then 1.52,
        # 1.60, 1.53), so one is the whole warm-up
        return 1 if self.device.type == "cpu" else 2

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
        self._graph = None
        self.name = self._describe()

    # -- prompts and seeds -------------------------------------------------------------

    def encode_prompt(self, text: str) -> Embedding:
        return self.text.encode(text).to(self.dtype)

    # -- LoRAs ---------------------------------------------------------------------------

    @property
    def loras(self) -> tuple[str, ...]:
        return self._loras.names

    @property
    def lora_weights(self) -> tuple[float, ...]:
        return self._loras.weights

    @property
    def lora_weights_live(self) -> bool:
        return True

    @property
    def lora_memory_bytes(self) -> int:
        """Device memory the LoRAs take (bases and deltas in place; factors with peft)."""
        return self._loras.memory_bytes()

    def set_lora_weights(self, weights: Sequence[float]) -> WeightChange:
        with self._device():
            return self._loras.set_weights(weights)

    # -- frames --------------------------------------------------------------------------

    def _buffers_for(self, stream: int, pixels: Pixels, out: Pixels) -> _ShapeBuffers:
        in_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        out_size = (int(out.shape[0]), int(out.shape[1]))
        current = self._shapes[stream]
        if (
            current is not None
            and current.geometry.input_size == in_size
            and current.geometry.output_size == out_size
        ):
            return current
        geometry = plan_geometry(in_size, self._size, output_size=out_size, fit=self.fit)
        on_cpu = self.device.type == "cpu"
        staging = None if on_cpu else torch.empty((*in_size, 4), dtype=torch.uint8, pin_memory=True)
        buffers = _ShapeBuffers(
            geometry=geometry,
            staging=staging,
            pixels_in=torch.empty((*in_size, 4), dtype=torch.uint8, device=self.device),
            pixels_out=torch.empty((*out_size, 4), dtype=torch.uint8, device=self.device),
        )
        self._shapes[stream] = buffers
        return buffers

    def _all_buffers(self) -> list[_ShapeBuffers]:
        """Every stream's buffers; a stream that never had a frame gets the model's size, so
        the batch can be captured before all streams have pictures (it is re-captured, in a
        fraction of a second, once one arrives at another size)."""
        height, width = self._size
        return [
            buffers
            if buffers is not None
            else self._buffers_for(
                stream,
                np.zeros((height, width, 4), dtype=np.uint8),
                np.zeros((height, width, 4), dtype=np.uint8),
            )
            for stream, buffers in enumerate(self._shapes)
        ]

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

    def _device_frame(self, shapes: list[_ShapeBuffers]) -> None:
        """The whole batch on device buffers only: what the CUDA graph captures."""
        for row, buffers in zip(self._rows, shapes, strict=True):
            to_model(buffers.pixels_in, buffers.geometry, out=row, pad=False)
        output = self.inputs.run(self._model, self._image)
        for stream, buffers in enumerate(shapes):
            to_pixels(output[stream : stream + 1], buffers.geometry, out=buffers.pixels_out)
        self._finite.copy_(torch.isfinite(output).flatten(1).all(dim=1))

    def _graph_for(self, pixels: Sequence[Pixels | None]) -> FrameGraph | None:
        shapes = self._all_buffers()
        key = tuple(buffers.geometry for buffers in shapes)
        if self._graph is not None and key == self._graph_key:
            return self._graph
        self._graph = None
        inputs = self.inputs
        sizes = ", ".join(f"{g.input_size[1]}x{g.input_size[0]}" for g in key)
        try:
            with progress(f"capturing the frame for {sizes} input"):
                for stream, (row, buffers) in enumerate(zip(self._rows, shapes, strict=True)):
                    picture = pixels[stream]
                    if picture is not None:
                        buffers.pixels_in.copy_(torch.from_numpy(picture))
                    to_model(buffers.pixels_in, buffers.geometry, out=row, pad=True)
                    buffers.padded = True
                self._graph = FrameGraph(
                    lambda: self._device_frame(shapes),
                    pixels_in=[buffers.pixels_in for buffers in shapes],
                    pixels_out=[buffers.pixels_out for buffers in shapes],
                    finite=self._finite,
                    keep=(inputs.previous_x0, inputs.previous_output),
                )
                self._graph_key = key
        except Exception as exc:
            self._fall_back("capturing the CUDA graph", "compiled", exc)
            return None
        return self._graph

    def _upload(self, pixels: Pixels, buffers: _ShapeBuffers) -> torch.Tensor:
        if buffers.staging is None:
            return torch.from_numpy(pixels)
        np.copyto(buffers.staging.numpy(), pixels)
        buffers.pixels_in.copy_(buffers.staging, non_blocking=True)
        return buffers.pixels_in

    def _to_model(self, stream: int, pixels: Pixels, buffers: _ShapeBuffers) -> None:
        # The letterbox padding never changes for one geometry: paint it on its first frame.
        first = not buffers.padded
        row = self._rows[stream]
        to_model(self._upload(pixels, buffers), buffers.geometry, out=row, pad=first)
        buffers.padded = True

    def _to_pixels(self, image: torch.Tensor, buffers: _ShapeBuffers, out: Pixels) -> None:
        target = torch.from_numpy(out) if buffers.staging is None else buffers.pixels_out
        to_pixels(image, buffers.geometry, out=target)
        if buffers.staging is not None:
            torch.from_numpy(out).copy_(target)

    def _device(self) -> Any:
        """Make this backend's GPU the thread's current one (``cuda:N``): streams, events and
        graphs are made on the current device, and each thread has its own."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    @torch.inference_mode()
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        frames: list[Pixels | None] = [None] * self.streams
        values: list[FrameParams | None] = [None] * self.streams
        targets: list[Pixels | None] = [None] * self.streams
        frames[0], values[0], targets[0] = pixels, params, out
        error = self.step_many(frames, values, out=targets)[0]
        if error is not None:
            raise error

    @torch.inference_mode()
    def step_many(
        self,
        pixels: Sequence[Pixels | None],
        params: Sequence[FrameParams | None],
        *,
        out: Sequence[Pixels | None],
    ) -> list[Exception | None]:
        if not len(pixels) == len(params) == len(out) == self.streams:
            raise ValueError(f"step_many wants {self.streams} entries per argument")
        if all(picture is None for picture in pixels):
            return [None] * self.streams
        with self._device():
            return self._step_many(pixels, params, out)

    def _step_many(
        self,
        pixels: Sequence[Pixels | None],
        params: Sequence[FrameParams | None],
        out: Sequence[Pixels | None],
    ) -> list[Exception | None]:
        if not self._compiled:
            self._compile_now()
        for stream, picture in enumerate(pixels):
            target = out[stream]
            if picture is not None:
                if target is None or params[stream] is None:
                    raise ValueError(f"stream {stream} has a frame but no params or out")
                self._buffers_for(stream, picture, target)
        self.inputs.update_rows(
            [p if pixels[k] is not None else None for k, p in enumerate(params)]
        )
        graph = self._graph_for(pixels) if self.mode == "graph" else None
        if graph is not None:
            finite = graph.run_many(pixels, out)
        else:
            for stream, picture in enumerate(pixels):
                buffers = self._shapes[stream]
                if picture is not None and buffers is not None:
                    self._to_model(stream, picture, buffers)
            output = self.inputs.run(self._model, self._image)
            queued = torch.isfinite(output).flatten(1).all(dim=1)  # read after the downloads
            for stream, picture in enumerate(pixels):
                buffers, target = self._shapes[stream], out[stream]
                if picture is not None and buffers is not None and target is not None:
                    self._to_pixels(output[stream : stream + 1], buffers, target)
            flags = queued.tolist()
            finite = [bool(flags[k]) or pixels[k] is None for k in range(self.streams)]
        errors: list[Exception | None] = []
        for stream, ok in enumerate(finite):
            if ok:
                errors.append(None)
                continue
            self.inputs.clear_state(stream)
            errors.append(
                NonFiniteFrameError(
                    "the model produced NaN or infinite values; the frame was skipped and the "
                    "temporal state cleared"
                )
            )
        return errors

    @torch.inference_mode()
    def passthrough(self, pixels: Pixels, *, out: Pixels, stream: int = 0) -> None:
        with self._device():
            buffers = self._buffers_for(stream, pixels, out)
            self._to_model(stream, pixels, buffers)
            self._to_pixels(self._rows[stream], buffers, out)

    def stage_timers(self) -> Mapping[str, StageTimer]:
        buffers = self._shapes[0]
        if buffers is None:
            raise RuntimeError("run one step() before timing its stages")
        pixels = np.full((*buffers.geometry.input_size, 4), 128, dtype=np.uint8)
        out = np.empty((*buffers.geometry.output_size, 4), dtype=np.uint8)
        vae, unet = self.frame_step.vae, self.frame_step.unet
        device = self.device
        timestep = self.inputs.controls.reshape(-1, NUM_CONTROLS)[:, 0]
        latents = self.inputs.previous_x0.clone()
        embeds = self.inputs.embeds_to

        @torch.inference_mode()
        def pre() -> None:
            self._to_model(0, pixels, buffers)
            synchronize(device)

        @torch.inference_mode()
        def encode() -> None:
            vae.encode(self._image)
            synchronize(device)

        @torch.inference_mode()
        def denoise() -> None:
            unet(latents, timestep, encoder_hidden_states=embeds, return_dict=False)
            synchronize(device)

        @torch.inference_mode()
        def decode() -> None:
            vae.decode(latents)
            synchronize(device)

        @torch.inference_mode()
        def post() -> None:
            self._to_pixels(self.inputs.previous_output[:1], buffers, out)
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
        self._shapes = [None] * self.streams
        self._graph = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
