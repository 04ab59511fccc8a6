"""The commands that check and measure the server: ``bench`` (and its modes, its end-to-end
run and its chart), ``soak`` and ``doctor``.

May import: ``livediffusion.run`` and everything below it (backends, config, control), the
bridge and the models. Never ``livediffusion.options`` or ``livediffusion.cli``, which call
these.
"""
