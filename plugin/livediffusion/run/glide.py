"""Time-based fades: prompt and seed changes (:class:`Glide`), numeric values (:class:`Ramp`).

The engine owns time; the backend owns the tensors. A glide only says how far along a change
is (0 -> 1, eased); when a new change arrives mid-glide the backend is told where the picture
was (:meth:`Glide.position`) so the new fade starts from what was on screen, never a jump.
"""

from __future__ import annotations

__all__ = ["Glide", "Ramp"]


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


class Ramp:
    """One numeric control on its way to its latest target, over ``/glide`` seconds.

    A new target mid-ramp starts from the value on screen, so a fader jump, a preset recall
    or a change of mind never shows a step. With 0 seconds it follows at once.
    """

    def __init__(self, value: float) -> None:
        self._from = self._to = value
        self._start: float | None = None
        self._seconds = 0.0

    @property
    def target(self) -> float:
        return self._to

    def follow(self, target: float, now: float, seconds: float) -> float:
        """The value to use at ``now``, heading for ``target``."""
        if target != self._to:
            self._from = self.value(now)
            self._to = target
            self._start = now
            self._seconds = max(0.0, seconds)
        return self.value(now)

    def value(self, now: float) -> float:
        if self._start is None or self._seconds <= 0.0:
            return self._to
        linear = (now - self._start) / self._seconds
        if linear >= 1.0:
            self._start = None
            return self._to
        linear = max(linear, 0.0)
        eased = linear * linear * (3.0 - 2.0 * linear)
        return self._from + (self._to - self._from) * eased
