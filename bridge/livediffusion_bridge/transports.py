"""The bridge's entry points: open a source or sink by URI, list what can be received.

Backends live in private modules and are imported only when their scheme is used, so a
machine without NDI, Syphon or Spout can still use every other transport, and importing
the bridge never loads a transport library.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

from ._listing import SourceInfo, SourceListing
from .errors import BackendUnavailableError, BridgeError, InvalidURIError, TransportError
from .frame import FrameSink, FrameSource
from .uri import SourceURI, parse_uri

__all__ = ["list_sources", "open_sink", "open_source", "pump_events"]


def _ndi_source(uri: SourceURI) -> FrameSource:
    from . import _ndi

    return _ndi.open_source(uri)


def _syphon_source(uri: SourceURI) -> FrameSource:
    from . import _syphon

    return _syphon.open_source(uri)


def _spout_source(uri: SourceURI) -> FrameSource:
    from . import _spout

    return _spout.open_source(uri)


def _pattern_source(uri: SourceURI) -> FrameSource:
    from . import _pattern

    return _pattern.open_source(uri)


def _file_source(uri: SourceURI) -> FrameSource:
    from . import _file

    return _file.open_source(uri)


def _memory_source(uri: SourceURI) -> FrameSource:
    from . import memory

    return memory.open_source(uri)


def _ndi_sink(uri: SourceURI) -> FrameSink:
    from . import _ndi

    return _ndi.open_sink(uri)


def _syphon_sink(uri: SourceURI) -> FrameSink:
    from . import _syphon

    return _syphon.open_sink(uri)


def _spout_sink(uri: SourceURI) -> FrameSink:
    from . import _spout

    return _spout.open_sink(uri)


def _memory_sink(uri: SourceURI) -> FrameSink:
    from . import memory

    return memory.open_sink(uri)


_SOURCES: dict[str, Callable[[SourceURI], FrameSource]] = {
    "ndi": _ndi_source,
    "syphon": _syphon_source,
    "spout": _spout_source,
    "test": _pattern_source,
    "file": _file_source,
    "memory": _memory_source,
}
_SINKS: dict[str, Callable[[SourceURI], FrameSink]] = {
    "ndi": _ndi_sink,
    "syphon": _syphon_sink,
    "spout": _spout_sink,
    "memory": _memory_sink,
}


def open_source(uri: str) -> FrameSource:
    """Open the source ``uri`` names, for example ``ndi://Resolume``, ``test://pattern?fps=60``.

    Raises :class:`InvalidURIError` for a malformed URI, an unknown scheme or option, and
    :class:`BackendUnavailableError` (naming the ``pip install`` to run) when the
    transport cannot work on this machine.
    """
    parsed = parse_uri(uri)
    return _SOURCES[parsed.scheme](parsed)


def open_sink(uri: str) -> FrameSink:
    """Open the sink ``uri`` names, for example ``syphon://livediffusion`` or ``ndi://out``.

    Sinks create their sender lazily at the first frame, but fail here already when the
    transport cannot work on this machine.
    """
    parsed = parse_uri(uri)
    opener = _SINKS.get(parsed.scheme)
    if opener is None:
        raise InvalidURIError(
            f"{parsed.scheme}:// can only be a source ({uri}); sinks: "
            + ", ".join(f"{scheme}://" for scheme in _SINKS)
        )
    return opener(parsed)


def _listers() -> dict[str, Callable[[float], list[SourceInfo]]]:
    """The transports that can be asked on this OS (the others are not failures, just absent)."""

    def ndi(timeout: float) -> list[SourceInfo]:
        from . import _ndi

        return _ndi.list_sources(timeout)

    def syphon(timeout: float) -> list[SourceInfo]:
        from . import _syphon

        return _syphon.list_sources(timeout)

    def spout(timeout: float) -> list[SourceInfo]:
        from . import _spout

        return _spout.list_sources(timeout)

    listers: dict[str, Callable[[float], list[SourceInfo]]] = {"ndi": ndi}
    if sys.platform == "darwin":
        listers["syphon"] = syphon
    if sys.platform == "win32":
        listers["spout"] = spout
    return listers


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
    for kind, lister in _listers().items():
        try:
            found.extend(lister(max(deadline - time.monotonic(), 0.0)))
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
    ``while running: pump_events(0.05)`` is right on every OS.
    """
    end = time.monotonic() + max(seconds, 0.0)
    if sys.platform == "darwin":
        from . import _syphon

        with contextlib.suppress(BackendUnavailableError):
            _syphon.pump(seconds)
    # A run loop with nothing attached returns at once; never turn a main loop into a spin.
    time.sleep(max(end - time.monotonic(), 0.0))
