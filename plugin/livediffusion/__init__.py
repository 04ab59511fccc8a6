"""livediffusion: a live one-step diffusion effect for VJ hosts.

The background process and its commands live here, in rooms (docs/architecture.md draws
them): ``cli`` and the options table at the top, ``tools`` (the commands that check and
measure the server), ``run`` (the running server and its frame path), ``backends`` and
``config`` below them, ``control`` (what the performer changes) and ``hosts`` (files shipped
for VJ hosts) at the bottom. Frame transports and OSC are in :mod:`livediffusion_bridge`, the
model and its math in :mod:`livediffusion_models`.

May import: both of those; they never import this package. Which room may import which is
checked by import-linter (``[tool.importlinter]`` in pyproject.toml, run by ``./run test``).
"""

from __future__ import annotations

__version__ = "0.1.0"
