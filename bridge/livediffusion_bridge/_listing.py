"""What :func:`livediffusion_bridge.list_sources` returns."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import BridgeError

__all__ = ["SourceInfo", "SourceListing"]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """One visible sender. ``uri`` opens it with :func:`open_source`."""

    uri: str
    kind: str
    """The transport: ``ndi``, ``syphon`` or ``spout``."""
    name: str
    """The name as the sending application shows it."""
    address: str | None = None
    """``host:port`` for transports that have one (NDI), else ``None``."""


@dataclass(frozen=True, slots=True)
class SourceListing:
    """Sources found on every transport, plus why any transport could not be asked.

    A failing transport never hides the others: its error lands in ``errors`` (keyed by
    transport) and the rest are still listed. Iterating yields the sources.
    """

    sources: tuple[SourceInfo, ...] = ()
    errors: Mapping[str, BridgeError] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", MappingProxyType(dict(self.errors)))

    def __iter__(self) -> Iterator[SourceInfo]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def of_kind(self, kind: str) -> list[SourceInfo]:
        return [source for source in self.sources if source.kind == kind]
