"""The NDI runtime inside ndi-python: loaded on first use, shared by every source and sink of
the process, destroyed after the last; the ndi-python version the bridge needs, named when
it is older."""

from __future__ import annotations

import atexit
import math
import platform
import re
import sys
import threading
from importlib import metadata
from typing import Any

from .errors import BackendUnavailableError

__all__ = ["INSTALL_HINT", "NDI_PYTHON_NEEDED", "UPGRADE_HINT", "binding_problem"]

INSTALL_HINT = 'pip install "livediffusion[ndi]"'
NDI_PYTHON_NEEDED = "6.3.2.1"
"""The first ndi-python with the calls this module makes (see :func:`binding_problem`)."""
UPGRADE_HINT = f'pip install --upgrade "ndi-python>={NDI_PYTHON_NEEDED}"'

# -- the runtime ---------------------------------------------------------------------------

_runtime_lock = threading.Lock()
_create_lock = threading.Lock()
_users = 0
_initialized = False


def _load() -> Any:
    try:
        import NDIlib
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(_load_failure(exc)) from exc
    problem = binding_problem(NDIlib)
    if problem is not None:
        raise BackendUnavailableError(problem)
    return NDIlib


def binding_problem(ndi: Any) -> str | None:
    """Why this ndi-python cannot run this module, in one line naming the fix; None if it can.

    This module calls ``recv_capture_v2(receiver, ms, want_video, want_audio,
    want_metadata)`` (asking for video only, so NDI never hands over audio or metadata to
    free) and ``RecvCreateV3(None, ...)`` (a receiver connected later). ndi-python binds
    both only from 6.3.2.1 (buresu/ndi-python ``src/main.cpp``, "Add new flags for
    recv_capture_v*"); 5.1.1.x binds ``recv_capture_v2(instance, timeout_in_ms)`` and a
    ``RecvCreateV3`` whose source must be a ``Source``, so every capture there raised a
    ``TypeError`` that no reconnect could cure. The installed distribution's version
    decides; a copy that pip did not install (no version recorded) is judged by the
    signature pybind11 writes into ``recv_capture_v2.__doc__``.
    """
    version = _installed_version()
    if version is not None:
        if _version_key(version) >= _version_key(NDI_PYTHON_NEEDED):
            return None
        found = f"ndi-python {version} is installed"
    else:
        signature = str(getattr(ndi.recv_capture_v2, "__doc__", None) or "")
        if "recv_capture_v2(" not in signature or "want_audio" in signature:
            return None  # the five-argument call, or nothing to judge by: try it
        found = "the installed ndi-python lacks recv_capture_v2's want_video/want_audio flags"
    return (
        f"{found}, but livediffusion needs ndi-python {NDI_PYTHON_NEEDED} or newer: "
        f"{UPGRADE_HINT}{_no_wheel_note()}"
    )


def _installed_version() -> str | None:
    try:
        return metadata.version("ndi-python")
    except metadata.PackageNotFoundError:
        return None


def _version_key(version: str) -> tuple[int, ...]:
    """``"6.3.2.6"`` -> ``(6, 3, 2, 6)``; a suffix (``rc1``, ``.post1``) ends the numbers."""
    numbers: list[int] = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(part):
            break
    return tuple(numbers)


def _no_wheel_note() -> str:
    """Where pip has no new enough wheel: Intel Macs and macOS 12 or older only get 5.1.1.1."""
    if sys.platform != "darwin":
        return ""
    release = _version_key(platform.mac_ver()[0] or "0")
    if platform.machine() == "x86_64" or release < (13,):
        return (
            " (pip has no such wheel for Intel Macs or macOS 12 and older:"
            " use Syphon here, or NDI on another machine)"
        )
    return ""


def _load_failure(exc: BaseException) -> str:
    """The package is there but a system library it links is not (a bare Linux image lacks
    Avahi's client libraries): say which, not "install the package" again."""
    text = str(exc)
    missing = re.search(r"(lib[\w.+-]+\.so(?:\.\d+)*): cannot open shared object file", text)
    if missing is None:
        return f"NDI needs the ndi-python package: {INSTALL_HINT} ({text})"
    library = missing.group(1)
    hint = ""
    if library.startswith("libavahi"):
        hint = " (Debian/Ubuntu: apt install libavahi-client3; Fedora: dnf install avahi-libs)"
    elif library.startswith("libdbus"):
        hint = " (Debian/Ubuntu: apt install libdbus-1-3)"
    return f"ndi-python is installed, but the NDI runtime needs the system library {library}{hint}"


def _acquire() -> Any:
    """The NDIlib module, with the runtime initialised once for the whole process."""
    global _users, _initialized
    ndi = _load()
    with _runtime_lock:
        if not _initialized:
            if not ndi.initialize():
                why = "" if ndi.is_supported_CPU() else ": this CPU is not supported by NDI"
                raise BackendUnavailableError(f"the NDI runtime failed to start{why}")
            _initialized = True
            atexit.register(_shutdown, ndi)
        _users += 1
    return ndi


def _release() -> None:
    global _users
    with _runtime_lock:
        _users = max(0, _users - 1)


def _shutdown(ndi: Any) -> None:
    # Only at exit, and only when nothing is open: re-initialising NDI after destroy() in
    # one process is not something to rely on, and destroying under live objects crashes.
    global _initialized
    with _runtime_lock:
        if _initialized and _users == 0:
            ndi.destroy()
            _initialized = False


def _ms(seconds: float) -> int:
    return max(0, math.ceil(seconds * 1000))
