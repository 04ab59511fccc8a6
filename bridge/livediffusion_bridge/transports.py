"""The bridge's entry points: open a source or sink by URI, list what can be received.

Backends live in private modules and are imported only when their scheme is used, so a
machine without NDI, Syphon or Spout can still use every other transport, and importing
the bridge never loads a transport library.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from types import ModuleType
from typing import Literal

from ._listing import SourceInfo, SourceListing
from ._window import pump as pump_windows
from .errors import BackendUnavailableError, BridgeError, InvalidURIError, TransportError
from .frame import FrameSink, FrameSource
from .uri import SourceURI, parse_uri, shorten

__all__ = [
    "check_transport",
    "check_uri",
    "list_sources",
    "open_sink",
    "open_source",
    "pump_events",
]


# scheme -> the private module that implements it; imported on first use only.
_SOURCE_MODULES = {
    "ndi": "_ndi",
    "syphon": "_syphon",
    "spout": "_spout",
    "test": "_pattern",
    "file": "_file",
    "memory": "memory",
    "camera": "_camera",
}
_SINK_MODULES = {
    "ndi": "_ndi",
    "syphon": "_syphon",
    "spout": "_spout",
    "memory": "memory",
    "window": "_window",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{name}")


def check_uri(uri: str, *, role: Literal["source", "sink"]) -> SourceURI:
    """Parse ``uri`` and check that its scheme can be a ``role``, opening nothing and
    importing no transport: what a config check can say before anything starts.

    Raises :class:`InvalidURIError` (one sentence) otherwise.
    """
    parsed = parse_uri(uri)
    modules, other = (_SOURCE_MODULES, "sink") if role == "source" else (_SINK_MODULES, "source")
    if parsed.scheme not in modules:
        raise InvalidURIError(
            f"{parsed.scheme}:// can only be a {other} ({shorten(uri)}); {role}s: "
            + ", ".join(f"{scheme}://" for scheme in modules)
        )
    return parsed


def open_source(uri: str) -> FrameSource:
    """Open the source ``uri`` names, for example ``ndi://Resolume``, ``test://pattern?fps=60``.

    Raises :class:`InvalidURIError` for a malformed URI, an unknown scheme or option, and
    :class:`BackendUnavailableError` (naming the ``pip install`` to run) when the
    transport cannot work on this machine.
    """
    parsed = check_uri(uri, role="source")
    source: FrameSource = _module(_SOURCE_MODULES[parsed.scheme]).open_source(parsed)
    return source


def open_sink(uri: str) -> FrameSink:
    """Open the sink ``uri`` names, for example ``syphon://livediffusion`` or ``ndi://out``.

    Sinks create their sender lazily at the first frame, but fail here already when the
    transport cannot work on this machine.
    """
    parsed = check_uri(uri, role="sink")
    sink: FrameSink = _module(_SINK_MODULES[parsed.scheme]).open_sink(parsed)
    return sink


def check_transport(scheme: str) -> None:
    """Load the library behind ``scheme`` (``ndi``, ``syphon``, ``spout``) as opening it
    would, and raise :class:`BackendUnavailableError` with the same one-line reason (missing,
    too old, wrong OS) when it cannot run here; ``livediffusion doctor`` reports that line."""
    name = _SOURCE_MODULES.get(scheme)
    if name is None or not hasattr(_module(name), "_load"):
        raise InvalidURIError(f"{scheme}:// has no library to check")
    _module(name)._load()


def _listed_kinds() -> list[str]:
    """The transports that can be asked on this OS (the others are not failures, just absent)."""
    kinds = ["ndi", "camera"]
    if sys.platform == "darwin":
        kinds.append("syphon")
    if sys.platform == "win32":
        kinds.append("spout")
    return kinds


def list_sources(*, timeout: float = 2.0) -> SourceListing:
    """Every sender visible on NDI, and on Syphon (macOS) or Spout (Windows).

    Each transport is asked in turn; one that fails (library missing, runtime error) is
    reported in :attr:`SourceListing.errors` and never hides the others. ``timeout`` caps
    the whole call; NDI discovery uses what remains and returns early once its list
    settles.
    """
    deadline = time.monotonic() + max(timeout, 0.0)
    found: list[SourceInfo] = []
    errors: dict[str, BridgeError] = {}
    for kind in _listed_kinds():
        try:
            module = _module(_SOURCE_MODULES[kind])
            found.extend(module.list_sources(max(deadline - time.monotonic(), 0.0)))
        except BridgeError as exc:
            errors[kind] = exc
        except Exception as exc:  # a transport library's own failure: report, don't hide
            error = TransportError(f"listing {kind} sources failed: {exc!r}")
            error.__cause__ = exc
            errors[kind] = error
    return SourceListing(tuple(found), errors)


def pump_events(seconds: float) -> None:
    """Let the platform's event loop run for ``seconds``; call it regularly on the main thread.

    On macOS a process without a UI must run its Cocoa run loop for Syphon discovery to
    work (other apps would not see our server). This does that when syphon-python is
    installed; elsewhere, or without it, it just sleeps, so a main loop of
    ``while running: pump_events(0.05)`` is right on every OS. It also draws and runs the
    ``window://`` preview windows this thread opened.
    """
    end = time.monotonic() + max(seconds, 0.0)
    if pump_windows(seconds):
        return  # Tk ran the platform's event loop (Cocoa's too, on macOS) meanwhile
    if sys.platform == "darwin":
        from . import _syphon

        with contextlib.suppress(BackendUnavailableError):
            _syphon.pump(seconds)
    # A run loop with nothing attached returns at once; never turn a main loop into a spin.
    time.sleep(max(end - time.monotonic(), 0.0))
