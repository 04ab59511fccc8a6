"""The fast CUDA path: :class:`FrameStep` under torch.compile, the whole frame in one CUDA graph.

Eager PyTorch runs one frame as hundreds of kernel launches from Python, and on a big GPU the
launches, not the GPU, set the frame rate. Here the frame becomes one graph replay:

    pinned host buffer --copy stream--> pixels_in
    [ graph: to_model -> FrameStep (compiled) -> state update -> to_pixels -> finite flag ]
    pixels_out --copy stream--> pinned host buffer

Everything the graph reads or writes is a static device buffer: the picture buffers here, and
:class:`StepInputs`' prompt embeddings, noise, temporal state and controls vector. A new
prompt, seed, strength or reset is an in-place write into those buffers between replays, so a
control change shows in the very next frame without re-capture. Only a new picture size needs
a new graph; the compiled model does not change with it (it always sees the model's size), so
that re-capture takes a fraction of a second, not a recompile.

torch.compile's artifacts go to the livediffusion cache folder (``TORCHINDUCTOR_CACHE_DIR``,
unless the user set it), so a second start reuses the first one's kernels.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import torch

from livediffusion_models.backends.base import Pixels

__all__ = [
    "COMPILE_MODES",
    "CompileMode",
    "FrameGraph",
    "FusedConvReLU",
    "compile_frame_step",
    "fuse_conv_relu",
    "prepare_modules",
    "use_compile_cache",
]

log = logging.getLogger(__name__)

CompileMode: TypeAlias = Literal["off", "default", "max"]
COMPILE_MODES: tuple[CompileMode, ...] = ("off", "default", "max")

# our mode -> torch.compile's. Never torch's own "reduce-overhead": its CUDA graphs cover
# only the compiled module, and we capture the whole frame (pre- and post-processing too).
_TORCH_MODES: dict[CompileMode, str] = {"default": "default", "max": "max-autotune-no-cudagraphs"}


def use_compile_cache(folder: Path) -> None:
    """Keep torch.compile's caches in ``folder`` (kept between runs) unless the user chose."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)


class FusedConvReLU(torch.nn.Module):
    """A ``Conv2d`` and the ``ReLU`` after it as one cuDNN call (convolution, bias and
    activation in one kernel): TAESD is 41 such pairs at up to 512x512x64, and each unfused
    pair writes and reads the whole activation once more. Measured on an H200 (512x512 fp16,
    graph mode): 237 -> 248 FPS. Off CUDA it is the two modules as before."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not x.is_cuda:
            return torch.relu(conv(x))
        fused: torch.Tensor = torch.cudnn_convolution_relu(
            x,
            conv.weight,
            conv.bias,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]  # tuple[int, ...], checked when fused
            conv.dilation,
            conv.groups,
        )
        return fused


def fuse_conv_relu(module: torch.nn.Module) -> int:
    """Replace every ``Conv2d`` followed by ``ReLU`` inside a ``Sequential`` of ``module`` with
    one :class:`FusedConvReLU` (and the ReLU with an ``Identity``); returns how many."""
    fused = 0
    for parent in list(module.modules()):
        if not isinstance(parent, torch.nn.Sequential):
            continue
        children = list(parent)
        for index in range(len(children) - 1):
            conv, act = children[index], children[index + 1]
            if (
                isinstance(conv, torch.nn.Conv2d)
                and isinstance(act, torch.nn.ReLU)
                and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str)
            ):
                parent[index] = FusedConvReLU(conv)
                parent[index + 1] = torch.nn.Identity()
                fused += 1
    return fused


def prepare_modules(unet: Any, vae: Any) -> None:
    """Layout and library settings that make the convolutions fast on NVIDIA GPUs.

    channels_last lets cuDNN and Inductor pick tensor-core kernels for every convolution;
    cuDNN's benchmark mode times its algorithms once per shape (our shapes never change);
    1x1 convolutions as matrix multiplies is a setting PyTorch's own diffusion speed-up work
    used. Its other one, coordinate-descent tuning, tripled the first compile on an H200
    (149 s instead of about 50) and is left off. TAESD's convolution + ReLU pairs become one
    cuDNN call each (:class:`FusedConvReLU`).
    """
    unet.to(memory_format=torch.channels_last)
    vae.to(memory_format=torch.channels_last)
    fuse_conv_relu(vae)
    torch.backends.cudnn.benchmark = True
    import torch._inductor.config as inductor

    inductor.conv_1x1_as_mm = True


def compile_frame_step(module: torch.nn.Module, mode: CompileMode) -> Callable[..., Any]:
    """torch.compile the step with fixed shapes (the model's size never changes at run time)."""
    if mode == "off":
        return module
    compiled: Callable[..., Any] = torch.compile(module, mode=_TORCH_MODES[mode], dynamic=False)
    return compiled


@contextmanager
def progress(what: str, *, every: float = 10.0) -> Iterator[None]:
    """Log ``what`` now and how long it has taken every ``every`` seconds until it is done:
    a first compile is silent for a minute, and a silent minute looks like a hang."""
    log.info("%s ...", what)
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(every):
            log.info("%s: %.0f s so far", what, time.monotonic() - started)

    ticker = threading.Thread(target=tick, name="progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    log.info("%s: done in %.1f s", what, time.monotonic() - started)


def _stream(device: torch.device | None = None) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]


def _event() -> torch.cuda.Event:
    return torch.cuda.Event()  # type: ignore[no-untyped-call]


class FrameGraph:
    """One set of picture sizes' whole frame, captured once and replayed for every frame.

    ``frame`` is a function of static device buffers only (it reads each stream's
    ``pixels_in`` and writes its ``pixels_out`` and the per-stream ``finite`` flags); uploads
    and downloads go through two pinned host slots per stream on their own stream,
    alternating, so a slot is never rewritten while a copy may still read it. The one wait per
    frame is for this frame's downloads, with the GIL released. A stream without a new frame
    is neither uploaded nor downloaded: its row runs in the batch (the graph's batch is fixed)
    and its temporal state is kept by the step itself.
    """

    def __init__(
        self,
        frame: Callable[[], None],
        *,
        pixels_in: Sequence[torch.Tensor],
        pixels_out: Sequence[torch.Tensor],
        finite: torch.Tensor,
        keep: tuple[torch.Tensor, ...],
    ) -> None:
        """``keep``: state the warm-up replays would advance (the temporal state); it is
        saved before and restored after capture, so capturing never changes the picture."""
        if len(pixels_in) != len(pixels_out):
            raise ValueError("one input and one output buffer per stream")
        self.pixels_in = list(pixels_in)
        self.pixels_out = list(pixels_out)
        self.finite = finite
        self._copy = _stream(finite.device)
        self._in = [
            [torch.empty_like(buffer, device="cpu").pin_memory() for _ in range(2)]
            for buffer in self.pixels_in
        ]
        self._out = [
            [torch.empty_like(buffer, device="cpu").pin_memory() for _ in range(2)]
            for buffer in self.pixels_out
        ]
        self._finite = [torch.ones_like(finite, device="cpu").pin_memory() for _ in range(2)]
        self._in_np = [[slot.numpy() for slot in slots] for slots in self._in]
        self._out_np = [[slot.numpy() for slot in slots] for slots in self._out]
        self._finite_np = [slot.numpy() for slot in self._finite]
        self._uploaded = _event()
        self._replayed = _event()
        self._downloaded = [_event(), _event()]
        self._turn = 0
        self.graph = self._capture(frame, keep)

    def _capture(self, frame: Callable[[], None], keep: tuple[torch.Tensor, ...]) -> Any:
        saved = [tensor.clone() for tensor in keep]
        current = torch.cuda.current_stream()
        side = _stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):  # lazy initialisation and allocator warm-up, not captured
            for _ in range(2):
                frame()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the prompt thread may run the text encoder meanwhile, on its own.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            frame()
        for tensor, value in zip(keep, saved, strict=True):
            tensor.copy_(value)
        torch.cuda.current_stream().synchronize()
        return graph

    def run(self, pixels: Pixels, out: Pixels) -> bool:
        """One stream: upload ``pixels``, replay, download into ``out``; whether it was finite."""
        return self.run_many((pixels,), (out,))[0]

    def run_many(self, pixels: Sequence[Pixels | None], out: Sequence[Pixels | None]) -> list[bool]:
        """Upload each stream's new picture, replay, download the active streams' outputs.

        Returns per stream whether its output was finite (True for a stream that waits).
        """
        turn = self._turn
        self._turn ^= 1
        compute = torch.cuda.current_stream()
        copy = self._copy
        for stream, picture in enumerate(pixels):
            if picture is not None:  # this slot's last upload finished a frame ago
                np.copyto(self._in_np[stream][turn], picture)
        with torch.cuda.stream(copy):
            copy.wait_event(self._replayed)  # the last replay no longer reads pixels_in
            for stream, picture in enumerate(pixels):
                if picture is not None:
                    self.pixels_in[stream].copy_(self._in[stream][turn], non_blocking=True)
            self._uploaded.record(copy)
        compute.wait_event(self._uploaded)
        self.graph.replay()
        self._replayed.record(compute)
        with torch.cuda.stream(copy):
            copy.wait_event(self._replayed)
            for stream, target in enumerate(out):
                if target is not None and pixels[stream] is not None:
                    self._out[stream][turn].copy_(self.pixels_out[stream], non_blocking=True)
            self._finite[turn].copy_(self.finite, non_blocking=True)
            self._downloaded[turn].record(copy)
        self._downloaded[turn].synchronize()  # the slot hand-off; releases the GIL
        finite = self._finite_np[turn]
        results = []
        for stream, target in enumerate(out):
            if target is not None and pixels[stream] is not None:
                np.copyto(target, self._out_np[stream][turn])
                results.append(bool(finite[stream]))
            else:
                results.append(True)
        return results
