"""Backends run :class:`~livediffusion_models.step.FrameStep` on some hardware.

Only ``torch`` exists today (cpu, cuda, mps); ``coreml`` converts the same module. Backends
are imported lazily so that asking for one never loads another's runtime.
"""

from __future__ import annotations

from livediffusion_models.backends.base import Backend, FrameParams

__all__ = ["Backend", "FrameParams"]
