from __future__ import annotations

from livediffusion.cli import console_main

console_main()
