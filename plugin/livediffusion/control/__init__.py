"""What the performer changes, and how it reaches the server.

``controls`` is the one address table (``CONTROLS``) and the atomic ``ControlStore``;
``surface`` turns OSC and MIDI messages into store updates, presets, resets and replies;
``presets`` keeps ``presets.json``; ``midi`` maps controllers (and ``midi_maps/``, the shipped
maps) onto the same messages.

May import: the standard library, ``livediffusion_bridge`` (OSC). Nothing else of
``livediffusion``: every other room reads it, it reads none of them.
"""
