"""syphon-python 0.2.0's own wheel, so the Syphon tests run the library's real Python here.

The wheel is macOS-only (universal2 over PyObjC), so it is never installed on Linux: it is
fetched as a file, checked against its SHA-256 and unpacked into a temporary folder that
the tests put first on ``sys.path`` (tests/syphon_native.py stubs what is native under it).

How a clean checkout gets it: ``./run test`` runs this file, which fetches the wheel once into
the virtual environment (``.venv/test-wheels``) and fails loudly when it cannot, so CI tests
the same bytes every time. Run as plain ``pytest`` in an environment made before that step,
the tests fetch it into the user cache instead, or skip saying why.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REQUIREMENT = "syphon-python==0.2.0"
WHEEL = "syphon_python-0.2.0-py3-none-macosx_12_0_universal2.whl"
SHA256 = "ab7b90903aa46e71fd498c76493a31ceccc156c013da8f6b75ab32436694b76e"
"""Of the wheel PyPI served on 2026-12-03 (the only 0.2.0 wheel: universal2, macOS 12+)."""


def venv_folder() -> Path:
    """Where ``./run test`` keeps it: beside the environment that runs the tests."""
    return Path(sys.prefix) / "test-wheels"


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livediffusion" / "test-wheels"


def _checked(path: Path) -> Path | None:
    if not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != SHA256:
        path.unlink()  # a partial or foreign file: fetch again rather than test other code
        return None
    return path


def find() -> Path | None:
    """The checked wheel, if it is already here."""
    for folder in (venv_folder(), cache_folder()):
        found = _checked(folder / WHEEL)
        if found is not None:
            return found
    return None


def fetch(folder: Path) -> Path:
    """Download the wheel into ``folder`` with pip (no install, no dependencies)."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--only-binary=:all:", "--platform", "macosx_12_0_universal2",
        "--dest", str(folder), REQUIREMENT,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _checked(folder / WHEEL)
    if wheel is None:
        problem = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeError(
            f"could not fetch {WHEEL} (sha256 {SHA256[:12]}...) from PyPI: {problem[0]}"
        )
    return wheel


def unpack(wheel: Path, folder: Path) -> Path:
    """Unpack the wheel into ``folder`` (a ``sys.path`` entry holding ``syphon/``)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    return folder


if __name__ == "__main__":
    # ./run test: fetch once, into the environment; an error here stops the test run.
    if find() is None:
        fetch(venv_folder())
    print(f"{WHEEL}: {find()}")
