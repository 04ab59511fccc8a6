"""What the performer changes, and how it reaches the server.

``controls`` is the one address table (``CONTROLS``) and the atomic ``ControlStore``;
``surface`` turns OSC and MIDI messages into store updates, presets, resets and replies;
``presets`` keeps ``presets.json``; ``midi`` opens controllers' ports and turns their
messages into the same control messages, through ``midi_map`` (the TOML maps, and
``midi_maps/``, the shipped ones).

May import: the standard library, MIDI and TOML libraries (mido lazily), and
``livediffusion_bridge`` (OSC). Nothing else of ``livediffusion``: every other room reads
it, it reads none of them (import-linter checks this).
"""
