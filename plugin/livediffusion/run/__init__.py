"""The running server and its frame path.

``server`` wires sources, the model, sinks and OSC together and keeps the status line;
``engine`` runs the capture, inference and publish threads joined by ``slots`` (latest frame
wins); ``prompts`` encodes prompts off the frame thread; ``glide`` ramps values;
``similarity`` is ``--skip-similar``; ``placeholder`` is the loading card; ``status``,
``terminal`` and ``preview`` show what happens.

May import: ``livediffusion.backends``, ``livediffusion.config``, ``livediffusion.control``,
``livediffusion_bridge``, ``livediffusion_models``. Never ``livediffusion.tools``,
``livediffusion.options`` or ``livediffusion.cli`` (import-linter checks this).
"""
