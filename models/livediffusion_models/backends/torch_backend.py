"""The PyTorch backend: :class:`FrameStep` on cpu, cuda or mps.

All per-frame buffers (upload, model image, temporal state, prompt and noise glides, the
control vector) are allocated once per input shape and then updated in place, so the hot path
allocates only what eager PyTorch allocates internally. That is also the shape the CUDA-graph
path needs: same buffers, captured once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from livediffusion_models.backends.base import Backend, FrameParams, Pixels
from livediffusion_models.imaging import FitMode, Geometry, plan_geometry, to_model, to_pixels
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, Control, FrameStep

__all__ = ["TorchBackend", "resolve_device", "resolve_dtype"]

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


@dataclass
class _ShapeBuffers:
    """Everything that depends on the input and output shape; rebuilt when either changes."""

    geometry: Geometry
    staging: torch.Tensor | None  # pinned host copy of the input (accelerators only)
    pixels_in: torch.Tensor  # (H, W, 4) uint8 on the device
    pixels_out: torch.Tensor  # (h, w, 4) uint8 on the device
    padded: bool = False  # whether self._image holds this geometry's letterbox padding


class TorchBackend(Backend):
    """Eager PyTorch. Build it with :meth:`from_components` (or the plugin's loader)."""

    def __init__(
        self,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: dict[str, Any],
        size: tuple[int, int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        fit: FitMode = "crop",
        output_size: tuple[int, int] | None = None,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.fit: FitMode = fit
        self.output_size = output_size
        height, width = size
        scale = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
        if height % (scale * 4) or width % (scale * 4):
            raise ValueError(f"model size {width}x{height} must be a multiple of {scale * 4}")
        self._size = (height, width)
        self.name = f"torch-{self.device.type} {str(dtype).removeprefix('torch.')}"
        self.schedule = NoiseSchedule.from_scheduler_config(scheduler_config)

        for module in (unet, vae, text_encoder):
            if module.dtype != dtype:  # diffusers warns on every dtype cast, even a no-op
                module.to(dtype=dtype)
            module.to(device=self.device).eval().requires_grad_(False)
        self.frame_step = FrameStep(unet, vae)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._encode_lock = threading.Lock()

        latent_shape = (1, int(unet.config.in_channels), height // scale, width // scale)
        embed_dim = int(unet.config.cross_attention_dim)
        max_length = int(getattr(tokenizer, "model_max_length", 77))

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, device=self.device, dtype=dtype)

        self._noise_shape = latent_shape
        self._noise_from = zeros(*latent_shape)
        self._noise_to = zeros(*latent_shape)
        self._embeds_from = zeros(1, max_length, embed_dim)
        self._embeds_to = zeros(1, max_length, embed_dim)
        self._previous_x0 = zeros(*latent_shape)
        self._previous_output = zeros(1, 3, height, width)
        self._image = zeros(1, 3, height, width)
        pin = self.device.type == "cuda"
        self._controls_host = torch.zeros(NUM_CONTROLS, dtype=torch.float32, pin_memory=pin)
        self._controls = torch.zeros(NUM_CONTROLS, dtype=torch.float32, device=self.device)
        self._shape: _ShapeBuffers | None = None
        self._has_prompt = False
        self._fresh = True
        self._fill_noise(self._noise_to, seed)
        self._noise_from.copy_(self._noise_to)

    @classmethod
    def from_components(cls, components: Any, **options: Any) -> TorchBackend:
        """From a ``LoadedModel`` (or anything with the same five attributes)."""
        return cls(
            unet=components.unet,
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            scheduler_config=dict(components.scheduler_config),
            **options,
        )

    @property
    def model_size(self) -> tuple[int, int]:
        return self._size

    # -- prompts and seeds -------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompt(self, text: str) -> torch.Tensor:
        tokens = self.tokenizer(
            text,
            padding="max_length",
            max_length=self._embeds_to.shape[1],
            truncation=True,
            return_tensors="pt",
        )
        with self._encode_lock:
            hidden: torch.Tensor = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return hidden.to(self.dtype)

    @torch.inference_mode()
    def set_prompt(self, embedding: Any, *, from_mix: float = 1.0) -> None:
        embedding = torch.as_tensor(embedding).to(device=self.device, dtype=self.dtype)
        if embedding.shape != self._embeds_to.shape:
            raise ValueError(
                f"prompt embedding has shape {tuple(embedding.shape)}, "
                f"the model wants {tuple(self._embeds_to.shape)}"
            )
        if not self._has_prompt:
            self._embeds_from.copy_(embedding)
        else:
            self._embeds_from.lerp_(self._embeds_to, _clamp01(from_mix))
        self._embeds_to.copy_(embedding)
        self._has_prompt = True

    def _fill_noise(self, target: torch.Tensor, seed: int) -> None:
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(self._noise_shape, generator=generator, dtype=torch.float32)
        target.copy_(noise)

    @torch.inference_mode()
    def set_seed(self, seed: int, *, from_mix: float = 1.0) -> None:
        cos, sin = _seed_weights(from_mix)
        self._noise_from.mul_(cos).add_(self._noise_to, alpha=sin)
        self._fill_noise(self._noise_to, seed)

    def reset(self) -> None:
        self._fresh = True

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

    def _download(self, result: torch.Tensor, out: Pixels) -> None:
        torch.from_numpy(out).copy_(result)

    @torch.inference_mode()
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        if not self._has_prompt:
            raise RuntimeError("set_prompt() must be called before the first frame")
        buffers = self._buffers_for(pixels, out)
        self._to_model(pixels, buffers)

        level = self.schedule.at_strength(params.strength)
        cos, sin = _seed_weights(params.seed_mix)
        host = self._controls_host
        host[Control.TIMESTEP] = level.timestep
        host[Control.SQRT_ALPHA] = level.sqrt_alpha
        host[Control.SQRT_ONE_MINUS_ALPHA] = level.sqrt_one_minus_alpha
        host[Control.FEEDBACK] = 0.0 if self._fresh else _clamp01(params.feedback)
        host[Control.SMOOTHING] = 0.0 if self._fresh else _clamp01(params.smoothing)
        host[Control.BLEND] = _clamp01(params.blend)
        host[Control.PROMPT_MIX] = _clamp01(params.prompt_mix)
        host[Control.NOISE_FROM] = cos
        host[Control.NOISE_TO] = sin
        self._controls.copy_(host, non_blocking=True)

        output, x0, smoothed = self.frame_step(
            self._image,
            self._noise_from,
            self._noise_to,
            self._embeds_from,
            self._embeds_to,
            self._previous_x0,
            self._previous_output,
            self._controls,
        )
        self._previous_x0.copy_(x0)
        self._previous_output.copy_(smoothed)
        self._fresh = False
        target = torch.from_numpy(out) if buffers.staging is None else buffers.pixels_out
        to_pixels(output, buffers.geometry, out=target)
        if buffers.staging is not None:
            self._download(target, out)

    @torch.inference_mode()
    def passthrough(self, pixels: Pixels, *, out: Pixels) -> None:
        buffers = self._buffers_for(pixels, out)
        self._to_model(pixels, buffers)
        target = torch.from_numpy(out) if buffers.staging is None else buffers.pixels_out
        to_pixels(self._image, buffers.geometry, out=target)
        if buffers.staging is not None:
            self._download(target, out)

    def close(self) -> None:
        self._shape = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _clamp01(value: float) -> float:
    return 0.0 if not value > 0.0 else min(value, 1.0)


def _seed_weights(mix: float) -> tuple[float, float]:
    """(cos, sin) of the glide angle, exact at both ends so a settled seed is exactly its noise."""
    mix = _clamp01(mix)
    if mix >= 1.0:
        return 0.0, 1.0
    if mix <= 0.0:
        return 1.0, 0.0
    angle = mix * math.pi / 2
    return math.cos(angle), math.sin(angle)
