"""livediffusion: a live one-step diffusion effect for VJ hosts.

The background process lives here (CLI, configuration, engine threads, controls, status);
frame transports and OSC are in :mod:`livediffusion_bridge`, the model and its math in
:mod:`livediffusion_models`.
"""

from __future__ import annotations

__version__ = "0.1.0"
