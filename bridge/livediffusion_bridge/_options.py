"""Typed reading of a URI's ``?options``, shared by every backend.

Each backend reads the options it understands and then calls :meth:`Options.finish`, so a
typo such as ``?fsp=30`` fails loudly at open instead of silently using the default.
"""

from __future__ import annotations

import math

from .errors import InvalidURIError
from .uri import SourceURI

__all__ = ["MAX_SIDE", "Options"]

MAX_SIDE = 16384
"""Largest frame side a URI may ask for: beyond any host's textures, so it only stops typos."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Options:
    """The options of one URI, consumed one name at a time."""

    def __init__(self, uri: SourceURI, *, role: str) -> None:
        self._uri = uri
        self._role = role
        self._left = dict(uri.options)
        self._known: list[str] = []

    def _take(self, name: str) -> str | None:
        self._known.append(name)
        return self._left.pop(name, None)

    def _bad(self, name: str, value: str, expected: str) -> InvalidURIError:
        return InvalidURIError(f"option {name}={value!r} in {self._uri}: expected {expected}")

    def text(self, name: str, default: str) -> str:
        value = self._take(name)
        return default if value is None else value

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float = math.inf
    ) -> float:
        value = self._take(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self._bad(name, value, "a number") from None
        if not math.isfinite(number) or not minimum <= number <= maximum:
            limit = f"at least {minimum:g}" if maximum == math.inf else f"{minimum:g}..{maximum:g}"
            raise self._bad(name, value, f"a number, {limit}")
        return number

    def rate(self, name: str, default: float) -> float:
        """A frame rate: above 0 and at most 1000 (``default`` is returned as it is)."""
        if name not in self._left:
            self._known.append(name)
            return default
        value = self.number(name, default, minimum=0.0, maximum=1000.0)
        if value <= 0:
            raise self._bad(name, f"{value:g}", "a frame rate above 0")
        return value

    def size(self, name: str, default: tuple[int, int]) -> tuple[int, int]:
        """``WxH`` as ``(width, height)``."""
        value = self._take(name)
        if value is None:
            return default
        width_text, sep, height_text = value.lower().partition("x")
        try:
            if not sep:
                raise ValueError(value)
            width, height = int(width_text), int(height_text)
        except ValueError:
            raise self._bad(name, value, "WIDTHxHEIGHT, for example 512x512") from None
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise self._bad(name, value, f"sides between 1 and {MAX_SIDE}")
        return width, height

    def flag(self, name: str, default: bool) -> bool:
        value = self._take(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise self._bad(name, value, "1/0, true/false, yes/no or on/off")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._take(name)
        if value is None:
            return default
        if value.lower() not in choices:
            raise self._bad(name, value, "one of " + ", ".join(choices))
        return value.lower()

    def finish(self) -> None:
        """Reject whatever was not read: it is a typo or an option of another transport."""
        if self._left:
            known = ", ".join(sorted(set(self._known))) or "none"
            unknown = ", ".join(sorted(self._left))
            raise InvalidURIError(
                f"unknown option(s) {unknown} for a {self._uri.scheme}:// {self._role} "
                f"in {self._uri}; it takes: {known}"
            )
