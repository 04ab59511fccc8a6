"""The bridge's exception tree.

Every failure that crosses the bridge's public surface is a :class:`BridgeError`, so the
plugin can catch one type and still tell a performer precisely what went wrong.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BridgeError",
    "ClosedError",
    "InvalidURIError",
    "SourceNotFoundError",
    "TransportError",
]


class BridgeError(Exception):
    """Base class of everything the bridge raises on purpose."""


class InvalidURIError(BridgeError, ValueError):
    """A source/sink URI that does not parse, or names an unknown scheme."""


class BackendUnavailableError(BridgeError):
    """The transport cannot run here: wrong OS, or its library is not installed.

    The message always names the install command (for example ``pip install
    "livediffusion[ndi]"``), because that is what the user must do next.
    """


class SourceNotFoundError(BridgeError):
    """A named source (NDI sender, Syphon server, Spout sender) is not visible."""


class TransportError(BridgeError):
    """The transport's library failed while sending or receiving."""


class ClosedError(TransportError):
    """A source or sink was used after ``close()``.

    A ``read()`` already waiting when ``close()`` arrives returns ``None`` instead, so a
    capture thread can be stopped from outside without an exception.
    """
