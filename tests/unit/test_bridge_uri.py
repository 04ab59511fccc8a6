"""URI parsing, the entry points' error messages, and import hygiene of the bridge."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import livediffusion_bridge as bridge
from livediffusion_bridge import (
    BackendUnavailableError,
    BridgeError,
    InvalidURIError,
    SourceInfo,
    SourceNotFoundError,
    SourceURI,
    parse_uri,
    transports,
)

BRIDGE_ROOT = Path(bridge.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("uri", "scheme", "target", "options"),
    [
        ("test://pattern", "test", "pattern", {}),
        ("test://pattern?size=320x240&fps=60", "test", "pattern", {"size": "320x240", "fps": "60"}),
        ("TEST://pattern", "test", "pattern", {}),
        ("  memory://input  ", "memory", "input", {}),
        ("ndi://", "ndi", "", {}),
        ("ndi://Resolume", "ndi", "Resolume", {}),
        ("ndi://STUDIO-PC (TouchDesigner)", "ndi", "STUDIO-PC (TouchDesigner)", {}),
        ("ndi://127.0.0.1:5961", "ndi", "127.0.0.1:5961", {}),
        ("ndi://my%3Fodd%20name?wait=2", "ndi", "my?odd name", {"wait": "2"}),
        ("syphon://Resolume Arena - Composition", "syphon", "Resolume Arena - Composition", {}),
        ("spout://TDSyphonSpoutOut", "spout", "TDSyphonSpoutOut", {}),
        ("file:///Users/me/clip.mp4", "file", "/Users/me/clip.mp4", {}),
        ("file://clips/loop.mov?loop=0", "file", "clips/loop.mov", {"loop": "0"}),
        ("file:///C:/clips/loop.mov", "file", "C:/clips/loop.mov", {}),
        ("file://C:\\clips\\loop.mov", "file", "C:\\clips\\loop.mov", {}),
        ("test://pattern?FPS=25", "test", "pattern", {"fps": "25"}),
        ("memory://x?flag=", "memory", "x", {"flag": ""}),
    ],
)
def test_parse_good(uri: str, scheme: str, target: str, options: dict[str, str]) -> None:
    parsed = parse_uri(uri)
    assert parsed == SourceURI(scheme, target, options)
    assert parsed.scheme == scheme
    assert parsed.target == target
    assert dict(parsed.options) == options


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("", "expected scheme://target"),
        ("pattern", "expected scheme://target"),
        ("/tmp/clip.mp4", "expected scheme://target"),
        ("ndi:Resolume", "expected scheme://target"),
        ("://x", "expected scheme://target"),
        ("http://example.com", "unknown scheme 'http'"),
        ("rtmp://host/app", "known schemes: ndi, syphon, spout, test, file, memory"),
        ("ndi://x?fps", "bad options"),
        ("ndi://x?a=1&a=2", "given twice"),
        ("ndi://x?=1", "empty option name"),
        ("ndi://a#b", "'#' is not allowed"),
    ],
)
def test_parse_bad(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURIError, match=None) as caught:
        parse_uri(uri)
    assert fragment in str(caught.value)
    assert isinstance(caught.value, ValueError)  # InvalidURIError is also a ValueError


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(InvalidURIError, match="must be a string"):
        parse_uri(b"test://pattern")  # type: ignore[arg-type]


def test_options_are_read_only_and_round_trip() -> None:
    parsed = parse_uri("ndi://STUDIO (Out 1)?wait=1.5&bandwidth=lowest")
    with pytest.raises(TypeError):
        parsed.options["wait"] = "2"  # type: ignore[index]
    assert parse_uri(str(parsed)) == parsed
    odd = SourceURI("ndi", "a?b%c", {"x": "1 2"})
    assert parse_uri(str(odd)) == odd


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(InvalidURIError) as caught:
        bridge.open_source("v4l2:///dev/video0")
    for scheme in bridge.SCHEMES:
        assert scheme in str(caught.value)


def test_source_only_scheme_as_sink() -> None:
    with pytest.raises(InvalidURIError, match="can only be a source"):
        bridge.open_sink("test://pattern")
    with pytest.raises(InvalidURIError, match="can only be a source"):
        bridge.open_sink("file:///tmp/x.mp4")


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("test://pattern?fsp=30", "unknown option(s) fsp"),
        ("test://pattern?size=512", "WIDTHxHEIGHT"),
        ("test://pattern?size=0x10", "sides between"),
        ("test://pattern?size=8x8", "at least 16x16"),
        ("test://pattern?fps=0", "frame rate above 0"),
        ("test://pattern?fps=fast", "a number"),
        ("test://bars", "use test://pattern"),
        ("memory://", "needs a channel name"),
        ("memory://x?size=3x3", "unknown option(s) size"),
        ("file://", "needs a path"),
        ("file:///tmp/x.mp4?loop=maybe", "1/0, true/false"),
        ("ndi://x?bandwidth=best", "one of highest, lowest"),
        ("ndi://x?wait=-1", "a number, 0..600"),
    ],
)
def test_bad_options(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidURIError) as caught:
        bridge.open_source(uri)
    assert fragment in str(caught.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(SourceNotFoundError) as caught:
        bridge.open_source(f"file://{missing}")
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, BridgeError)


@pytest.mark.skipif(sys.platform == "darwin", reason="Syphon is available on macOS")
def test_syphon_off_macos_names_the_extra() -> None:
    for opener in (bridge.open_source, bridge.open_sink):
        with pytest.raises(BackendUnavailableError) as caught:
            opener("syphon://Resolume")
        assert "macOS" in str(caught.value)
        assert 'pip install "livediffusion[mac]"' in str(caught.value)


@pytest.mark.skipif(sys.platform == "win32", reason="Spout is available on Windows")
def test_spout_off_windows_names_the_extra() -> None:
    for opener in (bridge.open_source, bridge.open_sink):
        with pytest.raises(BackendUnavailableError) as caught:
            opener("spout://TD")
        assert "Windows" in str(caught.value)
        assert 'pip install "livediffusion[windows]"' in str(caught.value)


def test_missing_ndi_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "NDIlib", None)  # makes `import NDIlib` fail
    for opener in (bridge.open_source, bridge.open_sink):
        with pytest.raises(BackendUnavailableError) as caught:
            opener("ndi://Resolume")
        assert 'pip install "livediffusion[ndi]"' in str(caught.value)


def test_listing_collects_a_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "NDIlib", None)
    listing = bridge.list_sources(timeout=0.1)
    assert isinstance(listing.errors["ndi"], BackendUnavailableError)
    assert list(listing) == []


def test_listing_failures_do_not_hide_other_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(timeout: float) -> list[SourceInfo]:
        raise RuntimeError("driver exploded")

    def fine(timeout: float) -> list[SourceInfo]:
        return [SourceInfo("spout://A", "spout", "A")]

    def unavailable(timeout: float) -> list[SourceInfo]:
        raise BackendUnavailableError("no library")

    listers = {"_ndi": broken, "_syphon": unavailable, "_spout": fine}
    monkeypatch.setattr(transports, "_listed_kinds", lambda: ["ndi", "syphon", "spout"])
    monkeypatch.setattr(
        transports, "_module", lambda name: types.SimpleNamespace(list_sources=listers[name])
    )
    listing = bridge.list_sources(timeout=0.1)
    assert [s.uri for s in listing] == ["spout://A"]
    assert len(listing) == 1
    assert set(listing.errors) == {"ndi", "syphon"}
    assert "driver exploded" in str(listing.errors["ndi"])
    assert isinstance(listing.errors["ndi"], BridgeError)
    assert listing.of_kind("spout")[0].name == "A"


def test_pump_events_sleeps_without_a_run_loop() -> None:
    import time

    start = time.monotonic()
    bridge.pump_events(0.05)
    assert 0.04 <= time.monotonic() - start < 1.0


def test_import_loads_no_transport_library() -> None:
    code = (
        "import sys, livediffusion_bridge, livediffusion_bridge.memory\n"
        "heavy = {'NDIlib', 'av', 'torch', 'syphon', 'SpoutGL', 'Metal', 'objc',\n"
        "         'livediffusion_models', 'livediffusion'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BRIDGE_ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    assert result.stdout.strip() == "[]"
