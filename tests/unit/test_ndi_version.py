"""An ndi-python older than the bridge's calls is named at open, with the command that fixes it.

The bridge calls ``recv_capture_v2(receiver, ms, want_video, want_audio, want_metadata)`` and
``RecvCreateV3(None, ...)``, bound from ndi-python 6.3.2.1 on; 5.1.1.1 (the only wheel for
Intel Macs and macOS 12) binds ``recv_capture_v2(instance, timeout_in_ms)``, and there every
capture raised a ``TypeError`` the reconnect loop never caught. These tests make the real
NDIlib look old in the two ways the bridge can see it: the version pip recorded
(``importlib.metadata``), and, for a copy pip did not install, the signature pybind11 writes
into ``recv_capture_v2.__doc__`` (copied from 5.1.1.5's ``src/main.cpp``: two arguments).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from importlib import metadata
from typing import Any, cast

import pytest

from livediffusion.tools import doctor
from livediffusion_bridge import (
    BackendUnavailableError,
    _ndi_runtime,
    list_sources,
    open_sink,
    open_source,
)

NDIlib = pytest.importorskip("NDIlib")

FIX = 'pip install --upgrade "ndi-python>=6.3.2.1"'
OLD_SIGNATURE = (
    "recv_capture_v2(instance: capsule, timeout_in_ms: int) -> Tuple[NDIlib.FrameType, "
    "NDIlib.VideoFrameV2, NDIlib.AudioFrameV2, NDIlib.MetadataFrame]\n"
)


def recorded_version(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    """What ``importlib.metadata`` says about ndi-python (None: not recorded at all)."""
    real = metadata.version

    def version_of(name: str) -> str:
        if name.lower().replace("_", "-") != "ndi-python":
            return real(name)
        if version is None:
            raise metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(metadata, "version", version_of)


def old_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real NDIlib with 5.1's ``recv_capture_v2``: two arguments, all three frames."""
    old = types.ModuleType("NDIlib")
    old.__dict__.update({k: v for k, v in vars(NDIlib).items() if not k.startswith("__")})

    def recv_capture_v2(instance: object, timeout_in_ms: int) -> Any:
        return NDIlib.recv_capture_v2(instance, timeout_in_ms, True, True, True)

    recv_capture_v2.__doc__ = OLD_SIGNATURE
    old.recv_capture_v2 = recv_capture_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "NDIlib", old)


def assert_named(message: str, found: str) -> None:
    assert "\n" not in message
    assert found in message and "6.3.2.1 or newer" in message and FIX in message, message


def ndi_row() -> tuple[str, str]:
    return doctor._check_ndi(cast(Any, None))


def test_the_installed_ndi_python_has_the_calls_the_bridge_makes() -> None:
    assert _ndi_runtime.binding_problem(NDIlib) is None
    assert "want_audio" in (NDIlib.recv_capture_v2.__doc__ or "")
    NDIlib.RecvCreateV3(None, NDIlib.RECV_COLOR_FORMAT_RGBX_RGBA)  # no TypeError
    assert ndi_row()[0] == "PASS"


@pytest.mark.parametrize(
    "opening",
    [
        lambda: open_source("ndi://anything"),
        lambda: open_source("ndi://127.0.0.1:5961"),
        lambda: open_sink("ndi://anything"),
    ],
    ids=["source by name", "source by address", "sink"],
)
def test_an_older_version_is_named_with_the_fix_when_opening(
    monkeypatch: pytest.MonkeyPatch, opening: Callable[[], object]
) -> None:
    recorded_version(monkeypatch, "5.1.1.1")
    with pytest.raises(BackendUnavailableError) as caught:
        opening()
    assert_named(str(caught.value), "ndi-python 5.1.1.1 is installed")


def test_doctor_and_the_source_listing_say_the_same_line(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_version(monkeypatch, "5.1.1.5")
    status, detail = ndi_row()
    assert status == "FAIL"
    assert_named(detail, "ndi-python 5.1.1.5 is installed")
    listing = list_sources(timeout=0.5)
    assert_named(str(listing.errors["ndi"]), "ndi-python 5.1.1.5 is installed")


def test_an_unrecorded_copy_with_the_old_signature_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded_version(monkeypatch, None)
    old_binding(monkeypatch)
    with pytest.raises(BackendUnavailableError) as caught:
        open_source("ndi://anything")
    assert_named(str(caught.value), "lacks recv_capture_v2's want_video/want_audio flags")


def test_an_unrecorded_copy_with_the_new_signature_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_version(monkeypatch, None)
    assert _ndi_runtime.binding_problem(NDIlib) is None


def test_an_intel_mac_is_told_no_wheel_exists_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_version(monkeypatch, "5.1.1.1")
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(_ndi_runtime.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(_ndi_runtime.platform, "mac_ver", lambda: ("14.5", ("", "", ""), "x86_64"))
    problem = _ndi_runtime.binding_problem(NDIlib)
    assert problem is not None and "no such wheel for Intel Macs" in problem
    monkeypatch.setattr(_ndi_runtime.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(_ndi_runtime.platform, "mac_ver", lambda: ("12.7", ("", "", ""), "arm64"))
    assert "macOS 12 and older" in str(_ndi_runtime.binding_problem(NDIlib))
    monkeypatch.setattr(_ndi_runtime.platform, "mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    assert "wheel" not in str(_ndi_runtime.binding_problem(NDIlib))


def test_versions_compare_by_their_numbers() -> None:
    key = _ndi_runtime._version_key
    assert key("6.3.2.6") > key("6.3.2.1") > key("6.3.2.0") > key("5.1.1.5")
    assert key("6.3.2.10") > key("6.3.2.9")
    assert key("6.3.2.1rc1") == (6, 3, 2, 1)
