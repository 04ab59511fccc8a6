"""Source and sink addresses: ``scheme://target?option=value``.

One string names a transport and everything it needs, so a performer can type it in a
host's parameter field and the CLI can take it as one argument. The target is taken
verbatim (after percent-decoding) rather than through :func:`urllib.parse.urlsplit`,
because NDI names look like ``HOST (NAME)`` and file paths may be Windows paths, neither of
which survives a strict URL parser.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import parse_qsl, quote, unquote, urlencode

from .errors import InvalidURIError

__all__ = ["SCHEMES", "SourceURI", "parse_uri", "shorten"]

SCHEMES: tuple[str, ...] = ("ndi", "syphon", "spout", "test", "file", "memory", "camera", "window")
"""Every scheme the bridge knows, in the order error messages list them."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_WINDOWS_DRIVE = re.compile(r"^/[A-Za-z]:[/\\]")
# Everything printable except the characters that split a URI here, and '%' itself.
_TARGET_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%?#")


def shorten(text: str, limit: int = 120) -> str:
    """``text`` as an error message may echo it: a 3 KB value pasted by mistake is cut,
    keeping its start and saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class SourceURI:
    """A parsed address. ``options`` is read-only so a parsed URI can be shared freely."""

    scheme: str
    target: str
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __str__(self) -> str:
        # Escape only what would change the parse; names stay readable in logs and UIs.
        text = f"{self.scheme}://{quote(self.target, safe=_TARGET_SAFE)}"
        if self.options:
            text += "?" + urlencode(list(self.options.items()))
        return text


def parse_uri(uri: str) -> SourceURI:
    """Split ``uri`` into scheme, target and options, rejecting anything ambiguous.

    The scheme is case-insensitive; the target and option values are percent-decoded
    (write ``%3F`` for a literal ``?`` in a name). Repeated options are an error rather than
    last-wins, because a silently ignored value is worse than a message.
    """
    if not isinstance(uri, str):
        raise InvalidURIError(f"a source/sink URI must be a string, got {type(uri).__name__}")
    text = uri.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise InvalidURIError(
            f"not a source/sink URI: {shorten(uri)!r}; expected scheme://target, "
            f"for example test://pattern or ndi://NAME (schemes: {', '.join(SCHEMES)})"
        )
    scheme = match.group(1).lower()
    if scheme not in SCHEMES:
        raise InvalidURIError(
            f"unknown scheme {shorten(scheme, 40)!r} in {shorten(uri)!r}; "
            f"known schemes: {', '.join(SCHEMES)}"
        )
    rest = match.group(2)
    raw_target, _, query = rest.partition("?")
    if "#" in raw_target:
        raise InvalidURIError(f"'#' is not allowed in {shorten(uri)!r}; write it as %23")
    target = unquote(raw_target)
    if scheme == "file" and _WINDOWS_DRIVE.match(target):
        # file:///C:/clip.mp4 -> C:/clip.mp4
        target = target[1:]
    return SourceURI(scheme, target, _parse_options(query, uri))


def _parse_options(query: str, uri: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise InvalidURIError(
            f"bad options {shorten(query)!r} in {shorten(uri)!r}: expected name=value pairs "
            "joined by '&'"
        ) from exc
    options: dict[str, str] = {}
    for name, value in pairs:
        key = name.strip().lower()
        if not key:
            raise InvalidURIError(f"empty option name in {shorten(uri)!r}")
        if key in options:
            raise InvalidURIError(f"option {shorten(key, 40)!r} given twice in {shorten(uri)!r}")
        options[key] = value.strip()
    return options
