"""Time-based fades for prompt and seed changes.

The engine owns time; the backend owns the tensors. A glide only says how far along a change
is (0 -> 1, eased); when a new change arrives mid-glide the backend is told where the picture
was (:meth:`Glide.position`) so the new fade starts from what was on screen, never a jump.
"""

from __future__ import annotations

__all__ = ["Glide"]


class Glide:
    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"glide time must be >= 0 s, got {seconds}")
        self.seconds = seconds
        self._start: float | None = None  # None: settled

    def restart(self, now: float) -> None:
        self._start = now

    def position(self, now: float) -> float:
        """Eased progress in [0, 1]; 1 when settled or when the glide time is 0."""
        if self._start is None or self.seconds == 0:
            return 1.0
        linear = (now - self._start) / self.seconds
        if linear >= 1.0:
            self._start = None
            return 1.0
        linear = max(linear, 0.0)
        return linear * linear * (3.0 - 2.0 * linear)  # smoothstep: no kink at either end
