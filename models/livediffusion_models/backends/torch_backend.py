"""The PyTorch backend: :class:`FrameStep` on cpu, cuda or mps.

All per-frame buffers (upload, model image, temporal state, prompt and noise glides, the
control vector) are allocated once per input shape and then updated in place, so the hot path
allocates only what eager PyTorch allocates internally. That is also the shape the CUDA-graph
path needs: same buffers, captured once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from livediffusion_models.backends.inputs import StepInputs, StepInputsBackend, TextEncoder
from livediffusion_models.errors import NonFiniteFrameError
from livediffusion_models.imaging import Geometry, plan_geometry, to_model, to_pixels
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import FrameStep

__all__ = ["TorchBackend", "TorchOptions", "resolve_device", "resolve_dtype"]

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


@dataclass
class _ShapeBuffers:
    """Everything that depends on the input and output shape; rebuilt when either changes."""

    geometry: Geometry
    staging: torch.Tensor | None  # pinned host copy of the input (accelerators only)
    pixels_in: torch.Tensor  # (H, W, 4) uint8 on the device
    pixels_out: torch.Tensor  # (h, w, 4) uint8 on the device
    padded: bool = False  # whether self._image holds this geometry's letterbox padding


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
        self.name = f"torch-{self.device.type} {str(dtype).removeprefix('torch.')}"

        for module in (unet, vae, text_encoder):
            if module.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op
                module.to(dtype=dtype)
            module.to(device=self.device).eval().requires_grad_(False)
        self.frame_step = FrameStep(unet, vae)
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
        )
        return self._shape

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
        self.inputs.update_controls(params)
        buffers = self._buffers_for(pixels, out)
        self._to_model(pixels, buffers)
        output = self.inputs.run(self.frame_step, self._image)
        finite = torch.isfinite(output).all()  # queued now, read after the download's sync
        self._to_pixels(output, buffers, out)
        if not bool(finite):
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
