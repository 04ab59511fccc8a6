"""The files livediffusion ships for VJ hosts, by host name (``livediffusion hosts``).

They are data, not modules of this package: each runs inside its host's own Python (OBS's
script runner, TouchDesigner), which may have none of livediffusion's packages.

May import: the standard library only (this file finds them; the files themselves import what
their host has). Nothing of ``livediffusion`` (import-linter checks this).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["HOST_FILES"]

_HERE = Path(__file__).resolve().parent

HOST_FILES: Mapping[str, Path] = {
    "obs": _HERE / "obs" / "livediffusion_obs.py",
    "touchdesigner": _HERE / "touchdesigner" / "livediffusion_td_builder.py",
}
"""Host name -> the shipped file to load in that host."""
