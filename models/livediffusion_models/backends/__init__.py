"""Backends run :class:`~livediffusion_models.step.FrameStep` on some hardware.

``torch`` runs it on cpu, cuda or mps; ``coreml`` runs it converted to Core ML programs.
Backends are imported lazily so that asking for one never loads another's runtime.
"""

from __future__ import annotations

from livediffusion_models.backends.base import Backend, FrameParams

__all__ = ["Backend", "FrameParams"]
