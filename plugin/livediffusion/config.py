"""Everything ``livediffusion serve`` is started with, as one frozen value.

Defaults differ per platform only where the host apps differ: on macOS frames travel over
Syphon (TouchDesigner, Resolume, VDMX, MadMapper speak it natively), elsewhere over NDI.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livediffusion.control.controls import Controls
from livediffusion_models.coreml import CoreMLSettings
from livediffusion_models.imaging import FitMode

if TYPE_CHECKING:
    from livediffusion_models.lora import LoraRequest

__all__ = [
    "MAX_STREAMS",
    "CoreMLSettings",
    "ServeConfig",
    "StreamConfig",
    "default_sink",
    "default_source",
    "parse_size",
]

SERVICE_NAME = "livediffusion"


def default_source(platform: str = sys.platform) -> str:
    """The first Syphon server on macOS, else the first NDI source on the network."""
    return "syphon://" if platform == "darwin" else "ndi://"


def default_sink(platform: str = sys.platform) -> str:
    return f"syphon://{SERVICE_NAME}" if platform == "darwin" else f"ndi://{SERVICE_NAME}"


_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*$")


def parse_size(text: str, *, multiple_of: int = 1) -> tuple[int, int]:
    """``"512"`` or ``"WIDTHxHEIGHT"`` -> ``(height, width)``, the order tensors use."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size must be N or WIDTHxHEIGHT, got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1 or width > 8192 or height > 8192:
        raise ValueError(f"size {width}x{height} is out of range (1..8192)")
    if width % multiple_of or height % multiple_of:
        raise ValueError(f"size {width}x{height} must be a multiple of {multiple_of}")
    return height, width


MAX_STREAMS = 16
"""Streams one ``serve`` takes: they run as one batch, so each one costs GPU time and memory
for the others too (measured up to 8 on an H200: docs/benchmarks.md)."""


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One named source -> sink pair of ``serve``, with its own controls and starting look.

    With no ``--stream`` the server runs one stream named ``""`` from ``--source`` to
    ``--sink``, whose OSC addresses carry no name (``/strength``); a named stream's carry it
    (``/cam/strength``).
    """

    name: str
    source: str
    sink: str
    controls: Controls = field(default_factory=Controls)
    look: tuple[tuple[str, Any], ...] = ()
    """The look keys its ``[[stream]]`` table set over the shared starting look (what
    ``config --print`` writes back)."""


@dataclass(frozen=True, slots=True)
class ServeConfig:
    source: str = field(default_factory=default_source)  # syphon:// on macOS, else ndi://
    sink: str = field(default_factory=default_sink)
    model: str = "sdxs-512-0.9"
    weights: str | None = None  # None: the model's hub id
    backend: str = "auto"  # a name in livediffusion.backends.BACKENDS, or auto
    device: str = "auto"
    dtype: str = "auto"
    compile: str = "default"  # off | default | max: torch.compile + one CUDA graph (CUDA only)
    skip_similar: float = 0.0  # republish instead of running the model below this input change
    size: tuple[int, int] | None = None  # (height, width); None: the model's own
    fit: FitMode = "crop"
    output_size: tuple[int, int] | None = None
    osc_host: str = "127.0.0.1"
    osc_port: int = 9000
    osc_prefix: str = ""  # "/stage1": every address lives under it
    osc_allow: tuple[str, ...] = ()  # addresses or networks; loopback is always allowed
    osc_reply: tuple[str, int] | None = None  # where /status goes once a second
    osc_echo: bool = False  # send every accepted change to osc_reply
    osc_rate: float = 2000.0  # datagrams per second from one sender before they are dropped
    midi: str | None = None  # input port name (or part of it)
    midi_map: str | None = None  # a shipped map's name or a file
    controls: Controls = field(default_factory=Controls)
    streams: tuple[StreamConfig, ...] = ()  # --stream / [[stream]]; () = one, source -> sink
    midi_stream: str | None = None  # the stream MIDI drives; None: every stream
    preset: int | None = None  # recall this preset at start-up
    presets: str | None = None  # the preset file; None: the user config directory's
    recall_glide: float = 1.0  # seconds a recall glides when /glide is 0
    cache_dir: str | None = None
    coreml: CoreMLSettings = field(default_factory=CoreMLSettings)
    on_source_loss: str = "last"  # last | black | hold-input: what the sink shows meanwhile
    preview: str = "off"  # off | on | side-by-side: a window of the output beside the sink
    status_interval: float = 1.0
    duration: float | None = None  # stop by itself after this many seconds (demos, soak)
    log_level: str = "info"
    log_file: str | None = None
    lora: tuple[LoraRequest, ...] = ()  # --lora / [[lora]]: /lora/N in this order
    lora_runtime: str = "in-place"  # in-place | peft (torch)
    lora_styles: bool = False  # Core ML: one program function per LoRA, switched live
    controlnet: str | None = None  # a registry name, hub id or folder

    def stream_list(self) -> tuple[StreamConfig, ...]:
        """The streams to run: the named ones, or the one from ``source`` to ``sink``."""
        if self.streams:
            return self.streams
        return (StreamConfig("", self.source, self.sink, self.controls),)
