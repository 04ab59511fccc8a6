"""The commands that check and measure the server: ``bench`` (and its modes, its end-to-end
run and its chart), ``soak`` and ``doctor``.

May import: ``livediffusion.run`` and the rooms below it (the options table and its
checkers, backends, config, control), the bridge and the models. Never ``livediffusion.cli``,
which calls these, nor ``livediffusion.config_file`` beside them (import-linter checks this).
"""
