"""The Core ML backend: converted :class:`FrameStep` programs on Apple Silicon.

``fused`` runs the whole frame in one ``predict``; with Core ML states (macOS15 target) the
temporal state never leaves the device. ``stages`` runs the encoder, UNet and decoder as three
programs and the glue math through an unchanged :class:`FrameStep` whose modules are the
programs, so both variants compute the one frame step there is.

The text encoder stays on torch (MPS where available, else the CPU): it runs only when the
prompt changes, on the prompt thread, never on the frame path.

Host copies per frame (fused), from the picture in numpy to the picture back in numpy:

1. ``to_model``: RGBA uint8 -> float32 planar ``[-1, 1]`` (crop or letterbox and resize in the
   same pass), into a buffer whose numpy view is already in the feed;
2. coremltools hands each feed array to Core ML as an MLMultiArray over the same memory
   (``PybindCompatibleArray`` in coremlpython/CoreMLPythonArray.mm), which Core ML reads;
3. the fp16 output is widened to a new float32 MLMultiArray and copied into a new float32 numpy
   array by coremltools' native bridge (``convertArrayValueToPython``,
   coremlpython/CoreMLPythonUtils.mm: it never returns fp16), copied as it is into a float32
   buffer, which ``to_pixels`` turns into RGBA uint8 in ``out``.

Without states, ``x0`` and ``smoothed`` also come back to numpy (float32, the same way) and are
copied into the next frame's feed: two more copies in and out, which states remove.

Several streams (``streams=N``) run through the same loaded programs one after another. The
programs are converted for batch 1, and a Mac's GPU runs Core ML predictions one at a time
anyway (several models in parallel serialise on it), so a batch would buy little there; each
stream has its own row of :class:`StepInputs`, its own picture buffers and letterbox, its own
feed (views of its rows) and its own Core ML state. A program converted for a batch of N
would be a new conversion, and N would be part of its cache key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
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
from livediffusion_models.backends.torch_backend import resolve_device
from livediffusion_models.controlnet import LoadedControlNet
from livediffusion_models.coreml import CoreMLSettings, Variant
from livediffusion_models.coreml.cache import ConvertedModel
from livediffusion_models.coreml.runtime import Program
from livediffusion_models.coreml.styles import Style, nearest_style, plan_styles
from livediffusion_models.errors import NonFiniteFrameError
from livediffusion_models.imaging import Geometry, plan_geometry, to_model, to_pixels
from livediffusion_models.lora import WeightChange
from livediffusion_models.lora.read import WeightedLora
from livediffusion_models.lora.stack import LoraStack
from livediffusion_models.schedule import NoiseSchedule
from livediffusion_models.step import NUM_CONTROLS, FrameStep

if TYPE_CHECKING:
    from livediffusion_models.weights import LoadedModel

__all__ = ["CoreMLBackend", "CoreMLOptions"]

Float32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreMLOptions(BackendOptions):
    coreml: CoreMLSettings = field(default_factory=CoreMLSettings)
    loras: tuple[WeightedLora, ...] = ()
    """Baked into the program at their weights (part of the cache key); see ``lora_styles``."""
    lora_styles: bool = False
    """One program function per LoRA (and one without), switched live by
    ``set_lora_weights`` (nearest baked style); needs the macOS15 target."""
    controlnet: LoadedControlNet | None = None
    """Converted into the fused step; ``FrameParams.controlnet_scale`` stays live."""
    text_device: str = "auto"
    """Torch device of the text encoder (``resolve_device``): auto is mps on a Mac, else cpu."""
    cache_dir: str | None = None


@dataclass(frozen=True, slots=True)
class _Encoded:
    latents: torch.Tensor


@dataclass(frozen=True, slots=True)
class _Decoded:
    sample: torch.Tensor


class _ProgramVAE:
    """The encoder and decoder programs behind the two calls FrameStep makes on a TAESD."""

    def __init__(self, encoder: Program, decoder: Program, config: Any) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.config = config

    def encode(self, image: torch.Tensor) -> _Encoded:
        result = self.encoder.predict({"image": _as_float32(image)})
        return _Encoded(torch.from_numpy(result["latents"]).float())

    def decode(self, latents: torch.Tensor) -> _Decoded:
        result = self.decoder.predict({"latents": _as_float32(latents)})
        return _Decoded(torch.from_numpy(result["image"]).float())


class _ProgramUNet:
    """The UNet program behind ``unet(sample, t, encoder_hidden_states=..., return_dict=False)``."""

    def __init__(self, program: Program, config: Any) -> None:
        self.program = program
        self.config = config

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        *,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        feed = {
            "sample": _as_float32(sample),
            "timestep": _as_float32(timestep.reshape(1)),
            "encoder_hidden_states": _as_float32(encoder_hidden_states),
        }
        return (torch.from_numpy(self.program.predict(feed)["eps"]).float(),)


def _as_float32(tensor: torch.Tensor) -> Float32:
    array: Float32 = np.ascontiguousarray(tensor.detach().numpy(), dtype=np.float32)
    return array


class CoreMLBackend(StepInputsBackend):
    """Build it with :meth:`from_components`; the constructor takes already-loaded programs.

    With ``streams=N`` (:class:`BackendOptions`) :meth:`step_many` loops: the programs are
    converted for batch 1 (the cache key has no batch), so each stream with a frame runs them
    once, in turn, on its own feed and state; a Mac's GPU runs the frames one after another.
    """

    def __init__(
        self,
        *,
        components: ModelComponents,
        converted: ConvertedModel,
        programs: Mapping[str, Program],
        options: CoreMLOptions,
    ) -> None:
        key = converted.key
        if tuple(options.size) != tuple(key.size):
            raise ValueError(f"programs were converted for {key.size}, not {options.size}")
        missing = set(converted.programs) - set(programs)
        if missing:
            raise ValueError(f"programs not loaded: {', '.join(sorted(missing))}")
        self.fit = options.fit
        self.variant: Variant = key.variant
        self.stateful = key.stateful
        self.converted = converted
        self._programs = dict(programs)
        self._size = key.size
        state = "+state" if key.stateful else ""
        self.name = f"coreml-{key.variant}{state} {key.precision} {options.coreml.compute_units}"

        text_device = resolve_device(options.text_device)  # no CUDA on a Mac: mps, else cpu
        text_dtype = torch.float32 if text_device.type == "cpu" else torch.float16
        components.text_encoder.to(device=text_device, dtype=text_dtype)
        components.text_encoder.eval().requires_grad_(False)

        if key.variant == "fused":
            interface = converted.programs["step"].inputs
            latent_shape, embed_shape = interface["noise_from"], interface["embeds_from"]
        else:
            interface = converted.programs["unet"].inputs
            latent_shape, embed_shape = interface["sample"], interface["encoder_hidden_states"]
        self.text = TextEncoder(
            components.text_encoder, components.tokenizer, device=text_device, tokens=embed_shape[1]
        )
        self._init_loras(components, converted, options)
        height, width = self._size
        streams = options.streams
        self.inputs = StepInputs(
            latent_shape=(streams, latent_shape[1], latent_shape[2], latent_shape[3]),
            embed_shape=(streams, embed_shape[1], embed_shape[2]),
            image_shape=(streams, 3, height, width),
            schedule=NoiseSchedule.from_scheduler_config(components.scheduler_config),
            device=torch.device("cpu"),
            dtype=torch.float32,
            seed=options.seed,
            streams=streams,
        )
        self._frame_step: FrameStep | None = None
        if key.variant == "fused":
            if self._step is None:
                raise ValueError("the fused variant needs its step program")
            unknown = set(interface) - set(_FUSED_INPUTS)
            if unknown:
                raise ValueError(f"the step program wants unknown inputs: {sorted(unknown)}")
        else:
            vae = _ProgramVAE(
                self._programs["encoder"], self._programs["decoder"], components.vae.config
            )
            self._frame_step = FrameStep(
                _ProgramUNet(self._programs["unet"], components.unet.config), vae
            )
        self._streams = [
            _Stream(self.inputs, k, self._size, interface if key.variant == "fused" else None)
            for k in range(streams)
        ]
        if self.stateful:
            for stream in self._streams:
                stream.state = self._new_state()

    @classmethod
    def from_components(cls, components: LoadedModel, options: CoreMLOptions) -> CoreMLBackend:
        """Convert (or find in the cache), compile, load: the whole way from torch modules."""
        from livediffusion_models.coreml import check_hints
        from livediffusion_models.coreml.convert import convert
        from livediffusion_models.coreml.runtime import load_programs, require_runtime

        require_runtime()  # fail before minutes of conversion, not after
        settings = options.coreml
        check_hints(settings)
        converted = convert(
            components,
            model=components.spec.name,
            fingerprint=components.fingerprint,
            size=options.size,
            precision=settings.precision,
            target=settings.target,
            variant=settings.variant,
            stateful=settings.states,
            loras=options.loras,
            styles=options.lora_styles,
            controlnet=options.controlnet,
            cache_dir=options.cache_dir,
        )
        programs = load_programs(converted, settings=settings)
        return cls(components=components, converted=converted, programs=programs, options=options)

    @property
    def model_size(self) -> tuple[int, int]:
        return self._size

    # -- LoRAs: baked into the program; styles switch between its functions ---------------

    def _init_loras(
        self, components: ModelComponents, converted: ConvertedModel, options: CoreMLOptions
    ) -> None:
        baked = tuple((choice.lora.digest, float(choice.weight)) for choice in options.loras)
        if baked != converted.key.loras:
            raise ValueError("the programs were converted with other LoRAs than these")
        self._lora_names = tuple(choice.lora.name for choice in options.loras)
        self._styles: dict[str, Style] = {}
        step = converted.programs.get("step")
        plan = plan_styles(options.loras, bool(step and step.functions))
        if step is not None and step.functions:
            self._styles = {style.name: style for style in plan}
        start = nearest_style(plan, [choice.weight for choice in options.loras])
        self._style = start
        self._step: Program | None = self._programs.get(
            f"step/{start.name}" if start.name else "step"
        )
        # the text encoder runs in torch: a LoRA's text-encoder layers are applied here
        self._text_loras = LoraStack(
            text_encoder=components.text_encoder, only="text_encoder", text_lock=self.text.lock
        )
        for choice, weight in zip(options.loras, start.weights, strict=True):
            self._text_loras.add(choice.lora, weight=weight)

    @property
    def loras(self) -> tuple[str, ...]:
        return self._lora_names

    @property
    def lora_weights(self) -> tuple[float, ...]:
        return self._style.weights

    @property
    def lora_weights_live(self) -> bool:
        return False

    def set_lora_weights(self, weights: Sequence[float]) -> WeightChange:
        """With styles: switch to the baked style nearest ``weights`` (a cut, from the next
        frame; the temporal state carries over). Without: the one baked mix stays."""
        if len(weights) != len(self._lora_names):
            raise ValueError(f"{len(weights)} LoRA weights for {len(self._lora_names)} LoRAs")
        if not self._styles:
            return WeightChange(applied=False, reencode_prompts=False)
        style = nearest_style(list(self._styles.values()), weights)
        if style == self._style:
            return WeightChange(applied=False, reencode_prompts=False)
        self._style = style
        self._step = self._programs[f"step/{style.name}"]
        text = self._text_loras.set_weights(style.weights)
        return WeightChange(applied=True, reencode_prompts=text.reencode_prompts)

    # -- prompts and seeds -------------------------------------------------------------

    def encode_prompt(self, text: str) -> Embedding:
        return self.text.encode(text).to(device="cpu", dtype=torch.float32)

    # -- frames --------------------------------------------------------------------------

    def _stream(self, stream: int) -> _Stream:
        if not 0 <= stream < len(self._streams):
            raise IndexError(f"stream {stream} does not exist (0..{len(self._streams) - 1})")
        return self._streams[stream]

    def _new_state(self) -> Any:
        """A fresh Core ML state (zero-filled, Apple's ``newState``) for one stream."""
        step = self._step
        assert step is not None  # stateful means fused: checked when built
        return step.make_state()

    def _geometry_for(self, stream: _Stream, pixels: Pixels, out: Pixels) -> Geometry:
        in_size = (int(pixels.shape[0]), int(pixels.shape[1]))
        out_size = (int(out.shape[0]), int(out.shape[1]))
        current = stream.geometry
        if (
            current is not None
            and current.input_size == in_size
            and current.output_size == out_size
        ):
            return current
        geometry = plan_geometry(in_size, self._size, output_size=out_size, fit=self.fit)
        stream.geometry = geometry
        stream.padded = False
        return geometry

    def _to_model(self, stream: _Stream, pixels: Pixels, geometry: Geometry) -> None:
        # The letterbox padding never changes for one geometry: paint it on its first frame.
        to_model(torch.from_numpy(pixels), geometry, out=stream.image, pad=not stream.padded)
        stream.padded = True

    @torch.inference_mode()
    def step(self, pixels: Pixels, params: FrameParams, *, out: Pixels) -> None:
        frames: list[Pixels | None] = [None] * len(self._streams)
        values: list[FrameParams | None] = [None] * len(self._streams)
        targets: list[Pixels | None] = [None] * len(self._streams)
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
        """Each stream with a frame runs the batch-1 program once, in stream order.

        A stream's picture that cannot be framed fails before its controls are touched (its
        state and reset flag stay as they were); one whose prediction fails or comes out NaN
        gets its temporal state cleared (a new Core ML state where the program keeps it), as
        the torch backend does. Either way the other streams run as if it had waited.
        """
        count = len(self._streams)
        if not len(pixels) == len(params) == len(out) == count:
            raise ValueError(f"step_many wants {count} entries per argument")
        errors: list[Exception | None] = [None] * count
        active: list[FrameParams | None] = [None] * count
        for k, picture in enumerate(pixels):
            if picture is None:
                continue
            values, target = params[k], out[k]
            if values is None or target is None:
                raise ValueError(f"stream {k} has a frame but no params or out")
            stream = self._streams[k]
            try:
                self._to_model(stream, picture, self._geometry_for(stream, picture, target))
            except Exception as exc:  # this picture only: the stream waits this frame
                errors[k] = exc
                continue
            active[k] = values
        if all(values is None for values in active):
            return errors
        self.inputs.update_rows(active)
        for k, values in enumerate(active):
            if values is None:
                continue
            stream, target = self._streams[k], out[k]
            assert target is not None and stream.geometry is not None  # checked above
            try:
                self._run(stream)
                if not _finite(stream.result_view):
                    raise NonFiniteFrameError(
                        "the model produced NaN or infinite values; the frame was skipped and "
                        "the temporal state cleared"
                    )
            except Exception as exc:
                self._clear(stream)
                errors[k] = exc
                continue
            to_pixels(stream.result, stream.geometry, out=torch.from_numpy(target))
        return errors

    def _run(self, stream: _Stream) -> None:
        if self._frame_step is None:
            self._run_fused(stream)
        else:
            self._run_stages(stream)

    def _run_fused(self, stream: _Stream) -> None:
        step = self._step
        assert step is not None  # fused: checked when built
        result = step.predict(stream.feed, state=stream.state)
        if not self.stateful:
            np.copyto(stream.feed["previous_x0"], result["x0"])
            np.copyto(stream.feed["previous_output"], result["smoothed"])
        # float32 already (coremltools 9 widens fp16 outputs; its TODO rdar://92239209 may
        # return float16 one day, which this copy would then widen): one copy, no cast
        np.copyto(stream.result_view, result["output"])

    def _run_stages(self, stream: _Stream) -> None:
        assert self._frame_step is not None
        output, x0, smoothed = self._frame_step(*stream.arguments)
        stream.previous_x0.copy_(x0)
        stream.previous_output.copy_(smoothed)
        stream.result.copy_(output)

    def _clear(self, stream: _Stream) -> None:
        self.inputs.clear_state(stream.index)
        if self.stateful:
            stream.state = self._new_state()

    @torch.inference_mode()
    def passthrough(self, pixels: Pixels, *, out: Pixels, stream: int = 0) -> None:
        row = self._stream(stream)
        geometry = self._geometry_for(row, pixels, out)
        self._to_model(row, pixels, geometry)
        to_pixels(row.image, geometry, out=torch.from_numpy(out))

    def stage_timers(self) -> Mapping[str, StageTimer]:
        """Stream 0's stages (every stream runs the same programs at the same size)."""
        stream = self._streams[0]
        geometry = stream.geometry
        if geometry is None:
            raise RuntimeError("run one step() before timing its stages")
        pixels = np.full((*geometry.input_size, 4), 128, dtype=np.uint8)
        out = np.empty((*geometry.output_size, 4), dtype=np.uint8)
        timers: dict[str, StageTimer] = {}

        @torch.inference_mode()
        def pre() -> None:
            self._to_model(stream, pixels, geometry)

        timers["pre"] = pre
        if self._frame_step is None:
            timers["step"] = lambda: self._run_fused(stream)
        else:
            vae = self._frame_step.vae
            unet = self._frame_step.unet
            image = stream.image
            latents = stream.previous_x0
            embeds = stream.arguments[4]  # embeds_to
            timestep = stream.arguments[7][0]  # the controls' TIMESTEP
            timers["encode"] = lambda: vae.encode(image)
            timers["unet"] = lambda: unet(latents, timestep, encoder_hidden_states=embeds)
            timers["decode"] = lambda: vae.decode(latents)

        @torch.inference_mode()
        def post() -> None:
            to_pixels(stream.result, geometry, out=torch.from_numpy(out))

        @torch.inference_mode()
        def frame() -> None:
            self.step(pixels, FrameParams(), out=out)

        timers["post"] = post
        timers["frame"] = frame
        return timers

    def close(self) -> None:
        self._programs.clear()
        for stream in self._streams:
            stream.state = None
        self._frame_step = None


_FUSED_INPUTS = (
    "image",
    "noise_from",
    "noise_to",
    "embeds_from",
    "embeds_to",
    "previous_x0",
    "previous_output",
    "controls",
)
"""Every input a fused step program may take (the stateful one keeps the previous two)."""


class _Stream:
    """One stream's side of the backend: its picture buffers, framing, feed and Core ML state.

    Everything the programs read is a view of this stream's row of :class:`StepInputs` (or of
    its own picture buffer), made once: the feed and the stages' arguments follow every
    in-place update of the prompts, seeds, controls and temporal state with no per-frame work.
    """

    def __init__(
        self,
        inputs: StepInputs,
        index: int,
        size: tuple[int, int],
        interface: Mapping[str, Any] | None,
    ) -> None:
        height, width = size
        self.index = index
        self.image = torch.zeros((1, 3, height, width))
        self.result = torch.zeros((1, 3, height, width))
        self.result_view: Float32 = self.result.numpy()  # np.copyto's target each frame
        self.geometry: Geometry | None = None
        self.padded = False
        self.state: Any = None
        row = slice(index, index + 1)
        self.previous_x0 = inputs.previous_x0[row]
        self.previous_output = inputs.previous_output[row]
        # FrameStep's arguments in its order (StepInputs.arguments), this stream's rows only;
        # the controls as the one (NUM_CONTROLS,) vector a batch-1 program takes
        self.arguments: tuple[torch.Tensor, ...] = (
            self.image,
            inputs.noise_from[row],
            inputs.noise_to[row],
            inputs.embeds_from[row],
            inputs.embeds_to[row],
            self.previous_x0,
            self.previous_output,
            inputs.controls.reshape(-1, NUM_CONTROLS)[index],
        )
        self.feed: dict[str, Float32] = {}
        if interface is not None:
            views = {
                name: tensor.numpy()
                for name, tensor in zip(_FUSED_INPUTS, self.arguments, strict=True)
            }
            # Views share memory with the tensors updated in place: the feed is built once.
            self.feed = {name: views[name] for name in interface}


def _finite(array: Float32) -> bool:
    """Whether a picture holds no NaN or inf, without a temporary the picture's size: a sum
    carries any of them (model outputs are near [-1, 1], far from float32's overflow)."""
    return bool(np.isfinite(array.sum()))
