"""camera://: the URI and its options, the device listings (parsed from FFmpeg's own log text,
and V4L2's sysfs), and what this machine's real PyAV says. The read path is in
tests/integration/test_camera_lavfi.py; AVFoundation and DirectShow cannot run here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from livediffusion_bridge import (
    BackendUnavailableError,
    InvalidURIError,
    TransportError,
    list_sources,
    open_sink,
    open_source,
    parse_uri,
)

av = pytest.importorskip("av")
from livediffusion_bridge import _camera  # noqa: E402  (after the PyAV check)

pytestmark = pytest.mark.timeout(60)
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="V4L2 is Linux's")

# What `ffmpeg -f avfoundation -list_devices true -i ""` prints (FFmpeg 3.x and 6.x), and
# what PyAV's log capture hands over: the same messages without the "[... @ 0x...]" prefix.
AVFOUNDATION_OLD = """\
[AVFoundation input device @ 0x7fc02b100300] AVFoundation video devices:
[AVFoundation input device @ 0x7fc02b100300] [0] FaceTime HD Camera
[AVFoundation input device @ 0x7fc02b100300] [1] Capture screen 0
[AVFoundation input device @ 0x7fc02b100300] AVFoundation audio devices:
[AVFoundation input device @ 0x7fc02b100300] [0] Built-in Microphone
"""
AVFOUNDATION_CAPTURED = [
    "AVFoundation video devices:\n",
    "[0] OBS Virtual Camera\n",
    "[1] FaceTime HD Camera (Built-in)\n",
    "[2] Capture screen 0\n",
    "AVFoundation audio devices:\n",
    "[0] MacBook Pro Microphone\n",
    "[1] BlackHole 2ch\n",
]
# DirectShow before FFmpeg 4.4: headings, then names and their alternative names.
DSHOW_OLD = """\
[dshow @ 000000000065c500] DirectShow video devices (some may be both video and audio devices)
[dshow @ 000000000065c500]  "USB 2861 Device"
[dshow @ 000000000065c500]     Alternative name "@device_pnp_\\\\?\\usb#vid_eb1a&pid_5051&mi_00"
[dshow @ 000000000065c500]  "FaceTime HD Camera"
[dshow @ 000000000065c500]     Alternative name "@device_pnp_\\\\?\\pci#ven_14e4&dev_1570"
[dshow @ 000000000065c500] DirectShow audio devices
[dshow @ 000000000065c500]  "Headset Microphone (Cirrus Logic CS4208 (AB 94))"
[dshow @ 000000000065c500]     Alternative name "@device_cm_{33D9A762-90C8-11D0-BD43}\\wave_{2362}"
"""
# FFmpeg 4.4 and newer: each device tagged; recent builds print some lines as "in#0".
DSHOW_NEW = """\
[dshow @ 0000020e1a16fd40] "Integrated Camera" (video)
[dshow @ 0000020e1a16fd40]   Alternative name "@device_pnp_\\\\?\\usb#vid_04f2&pid_b6d9"
[in#0 @ 000001bd07e70b00] "OBS Virtual Camera" (video)
[in#0 @ 000001bd07e70b00]   Alternative name "@device_sw_{860BB310-5D01-11D0-BD3B}\\{A3FCE0F5}"
[dshow @ 000001836119fd40] "DirectShow Softcam" (none)
[dshow @ 000001836119fd40]   Alternative name "@device_sw_{860BB310-5D01-11D0-BD3B}\\Softcam"
[dshow @ 000002798dd4fb80] "Microphone (Realtek(R) Audio)" (audio)
[dshow @ 000002798dd4fb80]   Alternative name "@device_cm_{33D9A762-90C8-11D0-BD43}\\wave_{8E14}"
[dshow @ 000002798dd4fb80] "Cam Link 4K" (audio, video)
"""


def test_the_uri_names_a_camera_by_index_or_by_name_with_options() -> None:
    uri = parse_uri("camera://FaceTime HD Camera?fps=30&size=1280x720")
    assert (uri.scheme, uri.target) == ("camera", "FaceTime HD Camera")
    assert dict(uri.options) == {"fps": "30", "size": "1280x720"}
    assert parse_uri("camera://0").target == "0"
    assert str(parse_uri("camera://OBS Virtual Camera")) == "camera://OBS Virtual Camera"


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("camera://0?fsp=30", "unknown option(s) fsp for a camera:// source"),
        ("camera://0?fps=0", "a frame rate above 0"),
        ("camera://0?fps=fast", "a number"),
        ("camera://0?size=big", "WIDTHxHEIGHT"),
        ("camera://0?size=0x720", "sides between 1"),
    ],
)
def test_bad_options_fail_at_open_naming_what_is_allowed(uri: str, says: str) -> None:
    with pytest.raises(InvalidURIError, match=says.replace("(", r"\(").replace(")", r"\)")):
        open_source(uri)


def test_a_camera_is_a_source_only_and_a_window_a_sink_only() -> None:
    with pytest.raises(InvalidURIError, match="camera:// can only be a source"):
        open_sink("camera://0")
    with pytest.raises(InvalidURIError, match="window:// can only be a sink"):
        open_source("window://")


@pytest.mark.parametrize("text", [AVFOUNDATION_OLD.splitlines(keepends=True), [AVFOUNDATION_OLD]])
def test_avfoundation_listing_keeps_video_devices_in_order(text: list[str]) -> None:
    assert _camera.parse_avfoundation_devices(text) == [
        (0, "FaceTime HD Camera"),
        (1, "Capture screen 0"),
    ]


def test_avfoundation_listing_from_captured_messages_skips_microphones() -> None:
    assert _camera.parse_avfoundation_devices(AVFOUNDATION_CAPTURED) == [
        (0, "OBS Virtual Camera"),
        (1, "FaceTime HD Camera (Built-in)"),
        (2, "Capture screen 0"),
    ]


def test_dshow_listing_of_old_ffmpeg_uses_the_headings() -> None:
    assert _camera.parse_dshow_devices([DSHOW_OLD]) == ["USB 2861 Device", "FaceTime HD Camera"]


def test_dshow_listing_of_new_ffmpeg_uses_the_tags() -> None:
    # "(none)": a virtual camera whose app is not running has no pins to offer
    assert _camera.parse_dshow_devices(DSHOW_NEW.splitlines()) == [
        "Integrated Camera",
        "OBS Virtual Camera",
        "Cam Link 4K",
    ]


def test_the_avfoundation_address_asks_for_no_microphone() -> None:
    address = _camera.PLATFORMS["darwin"].address
    assert address("1", 30.0, None) == ("1:none", {"framerate": "30"})
    assert address("FaceTime HD Camera", 59.94, (1280, 720)) == (
        "FaceTime HD Camera:none",
        {"framerate": "59.94", "video_size": "1280x720"},
    )


def test_the_dshow_address_is_video_equals_name() -> None:
    file, settings = _camera.PLATFORMS["win32"].address("OBS Virtual Camera", 30.0, (640, 480))
    assert file == "video=OBS Virtual Camera"
    assert settings["video_size"] == "640x480" and settings["framerate"] == "30"


def _fake_sysfs(root: Path, nodes: dict[int, str]) -> None:
    (root / "dev").mkdir()
    for number, name in nodes.items():
        folder = root / "sys" / f"video{number}"
        folder.mkdir(parents=True)
        (folder / "name").write_text(name + "\n")
        (root / "dev" / f"video{number}").touch()
    (root / "sys" / "video7").mkdir()  # sysfs without a device node: not listed
    (root / "sys" / "video7" / "name").write_text("Gone\n")


def test_v4l2_lists_device_nodes_with_their_sysfs_names_in_number_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_sysfs(tmp_path, {10: "Cam Link 4K", 2: "HD Pro Webcam C920", 0: "Integrated Camera"})
    monkeypatch.setattr(_camera, "V4L2_DEVICES", tmp_path / "dev")
    monkeypatch.setattr(_camera, "V4L2_SYSFS", tmp_path / "sys")
    assert _camera.PLATFORMS["linux"].cameras() == [
        ("0", "Integrated Camera"),
        ("2", "HD Pro Webcam C920"),
        ("10", "Cam Link 4K"),
    ]
    address = _camera.PLATFORMS["linux"].address
    assert address("hd pro webcam c920", 30.0, None)[0] == str(tmp_path / "dev" / "video2")
    assert address("3", 30.0, None)[0] == str(tmp_path / "dev" / "video3")
    with pytest.raises(TransportError, match=r"no V4L2 camera named 'Nope'.*2: HD Pro Webcam"):
        address("Nope", 30.0, None)


@linux_only
def test_listing_the_cameras_here_goes_through_the_real_v4l2_input() -> None:
    listing = list_sources(timeout=0.5)
    assert "camera" not in listing.errors
    nodes = sorted(Path("/dev").glob("video[0-9]*"))
    assert len(listing.of_kind("camera")) == len(nodes)


@linux_only
def test_a_missing_device_is_waited_for_and_named(caplog: pytest.LogCaptureFixture) -> None:
    number = next(n for n in range(40, 80) if not Path(f"/dev/video{n}").exists())
    with open_source(f"camera://{number}?fps=15&size=640x480") as source:
        assert source.waiting_for == f"camera {number} (V4L2)"
        assert source.read(0.3) is None
        assert source.waiting_for == f"camera {number} (V4L2)"
    assert f"/dev/video{number}" in caplog.text  # PyAV's own open failure, said once


def test_the_device_log_is_captured_from_the_real_libav_and_logging_restored() -> None:
    before = av.logging.get_level()
    lines = _camera._device_log("lavfi", "nosuchfilter")
    assert any("nosuchfilter" in line for line in lines), lines
    assert av.logging.get_level() == before


def test_a_pyav_without_the_platform_input_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "avfoundation" in av.formats_available:
        pytest.skip("this PyAV has AVFoundation")
    key = "linux" if sys.platform.startswith("linux") else sys.platform
    monkeypatch.setitem(_camera.PLATFORMS, key, _camera.PLATFORMS["darwin"])
    with pytest.raises(BackendUnavailableError, match=r"no AVFoundation input.*--no-binary av"):
        open_source("camera://0")
    assert "camera" in list_sources(timeout=0.1).errors
