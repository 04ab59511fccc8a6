"""Numbered presets: every control value, prompts included, in one JSON file.

The file lives in the user's config directory (or where ``--presets`` says); nothing a
message says can name another path, since a preset is only ever a whole number. Writes go to
a temporary file that is then renamed over the old one, so a crash mid-save never leaves half
a file, and a file that does not parse is set aside (never overwritten) with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from livediffusion.control.controls import ControlError, Controls, preset_values, validate_values

__all__ = ["PresetFile", "default_preset_path"]

log = logging.getLogger(__name__)

_FORMAT = 1


def default_preset_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("livediffusion", appauthor=False)) / "presets.json"


class PresetFile:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_preset_path()
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
            presets = data["presets"]
            if not isinstance(presets, dict):
                raise TypeError("presets is not a table")
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            os.replace(self.path, aside)
            log.warning("preset file %s did not parse (%s); moved it to %s", self.path, exc, aside)
            return {}
        return presets

    def numbers(self) -> list[int]:
        with self._lock:
            return sorted(int(key) for key in self._read() if key.isdigit())

    def save(self, number: int, controls: Controls, *, loras: list[Any] | None = None) -> None:
        """``loras``: the LoRAs' values (``StyleStore.preset_entry``), kept under ``lora``."""
        try:
            with self._lock:
                presets = self._read()
                presets[str(number)] = preset_values(controls)
                if loras:
                    presets[str(number)]["lora"] = loras
                self.path.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                document = {"format": _FORMAT, "presets": dict(sorted(presets.items()))}
                text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
                temporary.write_text(text, "utf-8")
                os.replace(temporary, self.path)
        except OSError as exc:  # a read-only or full disk is the machine's, not a bug
            raise ControlError(
                f"cannot save preset {number} to {self.path}: {exc.strerror or exc}"
            ) from None
        log.info("preset %d saved to %s", number, self.path)

    def load(self, number: int) -> dict[str, Any]:
        """The preset's values, checked like any OSC message (the file may be hand-edited)."""
        try:
            with self._lock:
                presets = self._read()
        except OSError as exc:
            raise ControlError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        values = presets.get(str(number))
        if values is None:
            saved = ", ".join(sorted(presets, key=int)) if presets else "none"
            raise ControlError(f"preset {number} is not saved in {self.path} (saved: {saved})")
        if not isinstance(values, dict):
            raise ControlError(f"preset {number} in {self.path} is not a table")
        values = {key: value for key, value in values.items() if key not in ("paused", "lora")}
        return validate_values(values, where=f"{self.path} preset {number}")

    def load_loras(self, number: int) -> Any:
        """The preset's ``lora`` entry as stored (None if it has none), for
        ``StyleStore.from_preset`` to check; :meth:`load` said already whether it exists."""
        try:
            with self._lock:
                values = self._read().get(str(number))
        except OSError as exc:
            raise ControlError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return values.get("lora") if isinstance(values, dict) else None
