"""livediffusion's frame transports: frames in from a host, frames out to it.

Everything is addressed by URI and opened through two functions::

    with open_source("ndi://Resolume") as source, open_sink("syphon://livediffusion") as sink:
        frame = source.read(timeout=1.0)
        if frame is not None:
            sink.publish(frame.pixels)

Schemes: ``ndi://NAME`` or ``ndi://HOST:PORT``, ``syphon://SERVER`` (macOS), ``spout://NAME``
(Windows), ``test://pattern``, ``file://PATH``, ``camera://INDEX`` or ``camera://NAME``,
``window://TITLE`` (a sink on screen) and ``memory://NAME`` (in-process, see
:mod:`livediffusion_bridge.memory`). Transport libraries are imported only when their
scheme is opened, never here. ``osc`` is the OSC server the plugin's control surface listens
with.

May import: the standard library, numpy, python-osc and the transports' libraries (NDIlib,
syphon, SpoutGL, PyAV, ...), each only when its scheme is opened. Never ``livediffusion_models``
or ``livediffusion`` (import-linter checks this).
"""

from __future__ import annotations

from ._listing import SourceInfo, SourceListing
from ._window import NoDisplayError, PreviewWindow, WindowSink
from .errors import (
    BackendUnavailableError,
    BridgeError,
    ClosedError,
    InvalidURIError,
    SourceNotFoundError,
    TransportError,
)
from .frame import Frame, FrameSink, FrameSource, Pixels, as_pixels
from .transports import (
    check_transport,
    check_uri,
    list_sources,
    open_sink,
    open_source,
    pump_events,
)
from .uri import SCHEMES, SourceURI, parse_uri

__all__ = [
    "SCHEMES",
    "BackendUnavailableError",
    "BridgeError",
    "ClosedError",
    "Frame",
    "FrameSink",
    "FrameSource",
    "InvalidURIError",
    "NoDisplayError",
    "Pixels",
    "PreviewWindow",
    "SourceInfo",
    "SourceListing",
    "SourceNotFoundError",
    "SourceURI",
    "TransportError",
    "WindowSink",
    "as_pixels",
    "check_transport",
    "check_uri",
    "list_sources",
    "open_sink",
    "open_source",
    "parse_uri",
    "pump_events",
]
