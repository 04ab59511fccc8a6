"""Errors a user can act on.

Loading weights fails for reasons the user fixes outside Python (a missing download, a damaged
file, a typo in a model name), so every message names what was wanted, where we looked, and
the command that fixes it. The CLI prints ``str(error)`` and exits; no traceback needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


class ModelError(Exception):
    """Base class, so callers can catch every model problem with one ``except``."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is not in the registry.

    Also a ``KeyError`` because it is raised by a mapping-style lookup.
    """

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known: tuple[str, ...] = tuple(known)
        super().__init__(name)

    def __str__(self) -> str:  # KeyError would repr() the message otherwise
        return f"unknown model {self.name!r}; known models: {', '.join(self.known)}"


class WeightsNotFoundError(ModelError):
    """Weights were asked for but are neither on disk nor downloadable right now."""

    def __init__(
        self,
        wanted: str,
        *,
        looked_in: Sequence[str | Path],
        fix: str,
        reason: str | None = None,
    ) -> None:
        self.wanted = wanted
        self.looked_in: tuple[str, ...] = tuple(str(p) for p in looked_in)
        self.fix = fix
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"weights not found: {self.wanted}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        if self.looked_in:
            lines.append("  looked in:")
            lines.extend(f"    {place}" for place in self.looked_in)
        lines.append(f"  to fix: {self.fix}")
        return "\n".join(lines)


class WeightsCorruptError(ModelError):
    """A weights or config file exists but cannot be read (usually an interrupted download)."""

    def __init__(self, path: str | Path, *, fix: str, reason: str | None = None) -> None:
        self.path = Path(path)
        self.fix = fix
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [f"damaged weights file: {self.path}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        lines.append(f"  to fix: {self.fix}")
        return "\n".join(lines)


class NonFiniteFrameError(ModelError):
    """A frame came out of the model with NaN or infinite values; it was not shown.

    The temporal state was cleared with it, so the next frame starts clean instead of
    carrying the NaNs forward through feedback and smoothing.
    """


class LoraError(ModelError):
    """A LoRA that cannot be used; one line that names the file and what to do.

    Raised before the model is touched: a LoRA is read and checked whole first, so a failure
    leaves the weights exactly as they were.
    """


class LoraNotFoundError(LoraError):
    """The LoRA is neither a file or folder on disk nor in the caches, and cannot be fetched."""


class LoraCorruptError(LoraError):
    """The LoRA file exists but cannot be read (truncated, not safetensors, damaged)."""


class LoraFormatError(LoraError):
    """The file reads but holds no LoRA livediffusion can apply (a full checkpoint, DoRA, ...)."""


class LoraBaseMismatchError(LoraError):
    """The LoRA was made for another base model (an SD 1.5 LoRA on an SD 2.1-based model)."""


class ControlNetMismatchError(ModelError):
    """A ControlNet whose blocks or text width do not fit the model's UNet."""
