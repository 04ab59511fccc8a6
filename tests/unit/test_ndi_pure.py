"""The NDI module's pure parts: names, addresses, discovery bookkeeping and pixel formats.

No NDI runtime is needed: pixel buffers are built here in the layouts the NDI SDK
documents (*Frame Types*) and measured on the real runtime (row padding, UYVA's alpha
plane at half the stride), with row strides that are no multiple of the width.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from livediffusion_bridge import _ndi, _ndi_discovery, _ndi_formats
from livediffusion_bridge._ndi_discovery import (
    Sender,
    describe_target,
    merge_ips,
    normal_address,
    parse_address,
    pick,
    short_name,
    unique_senders,
)
from livediffusion_bridge._ndi_formats import (
    UnsupportedFormat,
    fourcc_text,
    frame_size,
    to_rgba,
    yuv_to_rgba,
)

# -- names and addresses -------------------------------------------------------------------


def test_short_name_and_address() -> None:
    assert short_name("HOST (NAME)") == "NAME"
    assert short_name("HOST (A (B))") == "A (B)"
    assert short_name("NAME") == "NAME"
    assert parse_address("127.0.0.1:5961") == "127.0.0.1:5961"
    assert parse_address("studio-pc.local:5962") == "studio-pc.local:5962"
    assert parse_address("[::1]:5961") == "[::1]:5961"
    assert parse_address("HOST (NAME)") is None
    assert parse_address("127.0.0.1:0") is None
    assert parse_address("127.0.0.1:70000") is None


def test_what_a_source_says_it_waits_for() -> None:
    assert describe_target("cam") == "NDI sender 'cam'"
    assert describe_target("HOST (cam)") == "NDI sender 'HOST (cam)'"
    assert describe_target("127.0.0.1:5961") == "NDI sender at 127.0.0.1:5961"
    assert describe_target("") == "any NDI sender (not our own)"


def test_pick_prefers_exact_then_short_then_case_and_earlier_entries() -> None:
    a, b, c = Sender("PC (cam)", "1:1"), Sender("MAC (cam)", "2:2"), Sender("PC (Cam 2)", "3:3")
    assert pick([a, b, c], "MAC (cam)") is b
    assert pick([a, b, c], "cam") is a  # a tie: the earlier entry
    assert pick([b, a, c], "cam") is b
    assert pick([a, b, c], "cam 2") is c
    assert pick([a, b, c], "pc (cam)") is a
    assert pick([a, b, c], "nothing") is None
    assert pick([a, b], "") is a
    assert pick([], "cam") is None


def test_ip_lists_merge_in_order_without_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    assert merge_ips("127.0.0.1", " 10.0.0.2, ,127.0.0.1", "10.0.0.3") == (
        "127.0.0.1,10.0.0.2,10.0.0.3"
    )
    monkeypatch.setenv(_ndi_discovery.EXTRA_IPS_ENV, "192.168.1.5")
    assert _ndi_discovery._extra_ips("10.0.0.9") == "127.0.0.1,192.168.1.5,10.0.0.9"


def test_loopback_aliases_become_127_0_0_1() -> None:
    assert normal_address("127.0.0.1:5961") == "127.0.0.1:5961"
    assert normal_address("10.0.0.2:5961") == "10.0.0.2:5961"
    assert normal_address("") == ""
    for alias in _ndi_discovery.LOOPBACK_ALIASES:
        assert normal_address(f"{alias}:5963") == "127.0.0.1:5963"
    # A probe answered through several aliases lists one sender several times.
    listed = [Sender("PC (a)", f"{alias}:5961") for alias in _ndi_discovery.LOOPBACK_ALIASES]
    listed.append(Sender("PC (b)", "10.0.0.2:5962"))
    assert unique_senders(listed) == [Sender("PC (a)", "127.0.0.1:5961"), listed[-1]]


def test_the_probe_asks_several_loopback_addresses_on_linux() -> None:
    assert _ndi_discovery.LOOPBACK_ALIASES[0] == "127.0.0.1"
    discovery = _ndi_discovery._Discovery(object(), "127.0.0.1,10.0.0.7")
    assert discovery._probe_ips == ",".join([*_ndi_discovery.LOOPBACK_ALIASES, "10.0.0.7"])
    assert discovery._main_ips == "127.0.0.1,10.0.0.7"


def test_own_senders_are_remembered_by_full_name() -> None:
    own = _ndi_discovery._OwnSenders()
    own.add("PC (out)", "127.0.0.1:5961")
    own.add("PC (out)", "127.0.0.1:5962")  # a new sender of the same name replaces it
    assert own.senders() == [Sender("PC (out)", "127.0.0.1:5962")]
    own.remove("PC (out)", "127.0.0.1:5961")  # the old one closing forgets nothing
    assert own.senders() == [Sender("PC (out)", "127.0.0.1:5962")]
    own.remove("PC (out)", "127.0.0.1:5962")
    own.remove("PC (out)", "127.0.0.1:5962")
    assert own.senders() == []


def test_frame_rates_and_ports() -> None:
    assert _ndi._rate(30.0) == (30, 1)
    assert _ndi._rate(29.97) == (2997, 100)
    assert _ndi._rate(59.94) == (2997, 50)
    assert _ndi._address_from_ports({5960, 22}, {5960, 22, 5963}) == "127.0.0.1:5963"
    assert _ndi._address_from_ports({22}, {22, 5960, 5961}) == "127.0.0.1:5961"
    assert _ndi._address_from_ports({22}, {22, 5961, 5962}) is None  # ambiguous
    assert _ndi._address_from_ports(None, {5961}) is None


# -- pixel formats -------------------------------------------------------------------------


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(20, 236, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    return pixels


def padded(rows: np.ndarray, stride: int, fill: int = 99) -> np.ndarray:
    """``rows`` (height, bytes) laid out with ``stride`` bytes per row, the rest ``fill``."""
    out = np.full((rows.shape[0], stride), fill, np.uint8)
    out[:, : rows.shape[1]] = rows
    return out.reshape(-1)


def ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BT.709 limited-range encoding NDI uses (float, per pixel)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    luma = 0.2126 * r + 0.7152 * g + 0.0722 * b
    y = 16 + luma * 219 / 255
    u = 128 + (b - luma) / 1.8556 * 224 / 255
    v = 128 + (r - luma) / 1.5748 * 224 / 255
    return y, u, v


def as_bytes(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def test_fourcc_codes_read_as_text() -> None:
    assert fourcc_text(0x59565955) == "UYVY"
    assert fourcc_text(0x41424752) == "RGBA"
    assert fourcc_text(0x36315050) == "PP16"


@pytest.mark.parametrize("fourcc", ["RGBA", "RGBX", "BGRA", "BGRX"])
def test_packed_rgb_with_a_stride_that_is_no_multiple_of_the_width(fourcc: str) -> None:
    # What NDI delivered for an 18-wide picture: rows of 96 bytes (72 used).
    height, width, stride = 10, 18, 96
    expected = picture(height, width)
    expected[..., 3] = np.arange(width, dtype=np.uint8)[None, :] * 10
    order = (2, 1, 0, 3) if fourcc.startswith("BGR") else (0, 1, 2, 3)
    raw = padded(expected[..., order].reshape(height, width * 4), stride)
    pixels = to_rgba(fourcc, raw, width, height, stride)
    assert pixels.shape == (height, width, 4) and pixels.flags.c_contiguous
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., :3], expected[..., :3])
    if fourcc.endswith("X"):
        assert (pixels[..., 3] == 255).all()  # X: whatever the padding byte held
    else:
        np.testing.assert_array_equal(pixels[..., 3], expected[..., 3])


def test_packed_rgb_without_padding_and_a_zero_stride() -> None:
    expected = picture(4, 6)
    raw = expected.reshape(-1).copy()
    np.testing.assert_array_equal(to_rgba("RGBA", raw, 6, 4, 24), expected)
    np.testing.assert_array_equal(to_rgba("RGBA", raw, 6, 4, 0), expected)  # 0: packed


@pytest.mark.parametrize(("width", "stride"), [(18, 64), (160, 320), (7, 32)])
def test_uyvy_converts_with_bt709(width: int, stride: int) -> None:
    height = 6
    rgb = picture(height, width + width % 2, seed=1)
    rgb[:, 1::2] = rgb[:, 0::2]  # pairs share their colour, as 4:2:2 chroma does
    y, u, v = ycbcr(rgb)
    pairs = rgb.shape[1] // 2
    macro = np.stack([u[:, 0::2], y[:, 0::2], v[:, 0::2], y[:, 1::2]], axis=-1)
    raw = padded(as_bytes(macro).reshape(height, pairs * 4), stride)
    pixels = to_rgba("UYVY", raw, width, height, stride)
    assert pixels.shape == (height, width, 4) and pixels.flags.c_contiguous
    assert (pixels[..., 3] == 255).all()
    assert np.abs(pixels[..., :3].astype(int) - rgb[:, :width, :3]).max() <= 2


def test_yuv_endpoints_and_primaries() -> None:
    def one(y: int, u: int, v: int) -> list[int]:
        pixel = yuv_to_rgba(*(np.array([[x]], np.uint8) for x in (y, u, v)), None)
        return [int(c) for c in pixel[0, 0]]

    assert one(16, 128, 128) == [0, 0, 0, 255]
    assert one(235, 128, 128) == [255, 255, 255, 255]
    assert one(0, 128, 128) == [0, 0, 0, 255]  # clipped, not wrapped
    assert one(255, 128, 128) == [255, 255, 255, 255]
    for rgb in ([255, 0, 0], [0, 255, 0], [0, 0, 255], [30, 100, 200]):
        y, u, v = ycbcr(np.array([[[*rgb, 255]]], np.uint8))
        got = one(*(int(as_bytes(c)[0, 0]) for c in (y, u, v)))
        assert max(abs(a - b) for a, b in zip(got[:3], rgb, strict=True)) <= 3, (rgb, got)


def test_uyva_takes_alpha_from_the_plane_after_the_picture() -> None:
    # Measured on NDI: a 50-wide UYVA frame had a 128-byte stride and alpha rows 64 apart.
    height, width, stride = 4, 50, 128
    uyvy = np.tile(np.array([128, 180, 128, 180], np.uint8), (height, width // 2))
    alpha = (np.arange(width, dtype=np.uint8)[None, :] * 5 + np.arange(height)[:, None]).astype(
        np.uint8
    )
    raw = np.concatenate([padded(uyvy, stride), padded(alpha, stride // 2)])
    assert raw.size == frame_size("UYVA", width, height, stride)
    pixels = to_rgba("UYVA", raw, width, height, stride)
    np.testing.assert_array_equal(pixels[..., 3], alpha)
    assert np.abs(pixels[..., :3].astype(int) - 191).max() <= 1  # Y 180: grey 191


@pytest.mark.parametrize("fourcc", ["NV12", "I420", "YV12"])
@pytest.mark.parametrize(("height", "width", "stride"), [(6, 18, 32), (5, 10, 16), (8, 8, 8)])
def test_planar_420(fourcc: str, height: int, width: int, stride: int) -> None:
    rows, half = height // 2, (width + 1) // 2
    small = picture(rows + 1, half, seed=2)
    # 2x2 blocks share their colour, as 4:2:0 chroma does (an odd last row repeats the
    # block above it: there is no chroma row of its own).
    rgb = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)[:height, :width]
    if height % 2:
        rgb[-1] = rgb[-2]
    y, u, v = ycbcr(rgb)
    u_small, v_small = u[0 : 2 * rows : 2, 0::2], v[0 : 2 * rows : 2, 0::2]
    luma = padded(as_bytes(y), stride)
    if fourcc == "NV12":
        uv = np.stack([u_small, v_small], axis=-1).reshape(rows, half * 2)
        chroma = padded(as_bytes(uv), stride)
    else:
        first, second = (u_small, v_small) if fourcc == "I420" else (v_small, u_small)
        chroma = np.concatenate(
            [padded(as_bytes(first), stride // 2), padded(as_bytes(second), stride // 2)]
        )
    raw = np.concatenate([luma, chroma])
    assert raw.size == frame_size(fourcc, width, height, stride)
    pixels = to_rgba(fourcc, raw, width, height, stride)
    assert pixels.shape == (height, width, 4) and pixels.flags.c_contiguous
    assert (pixels[..., 3] == 255).all()
    assert np.abs(pixels[..., :3].astype(int) - rgb[..., :3]).max() <= 2
    if fourcc != "NV12":  # read as the other of the two, U and V trade places
        other = to_rgba("YV12" if fourcc == "I420" else "I420", raw, width, height, stride)
        assert np.abs(other[..., :3].astype(int) - rgb[..., :3]).max() > 10


def test_formats_it_cannot_read_and_frames_that_do_not_add_up() -> None:
    raw = np.zeros(10_000, np.uint8)
    for fourcc in ("P216", "PA16", "ABCD"):
        with pytest.raises(UnsupportedFormat):
            frame_size(fourcc, 8, 8, 16)
        with pytest.raises(UnsupportedFormat):
            to_rgba(fourcc, raw, 8, 8, 16)
    with pytest.raises(ValueError, match="needs"):
        to_rgba("RGBA", np.zeros(100, np.uint8), 8, 8, 32)
    with pytest.raises(ValueError, match="too small"):
        to_rgba("RGBA", raw, 8, 8, 16)
    with pytest.raises(ValueError, match="no pixels"):
        to_rgba("RGBA", raw, 0, 8, 32)
    with pytest.raises(ValueError, match="no chroma"):
        to_rgba("NV12", raw, 8, 1, 8)
    assert issubclass(UnsupportedFormat, ValueError)  # the source skips both the same way


def test_frame_sizes_follow_the_sdk_layouts() -> None:
    assert frame_size("RGBA", 18, 10, 96) == 960
    assert frame_size("UYVY", 18, 10, 64) == 640
    assert frame_size("UYVA", 50, 6, 128) == 128 * 6 + 64 * 6
    assert frame_size("NV12", 16, 6, 32) == 32 * 6 + 32 * 3
    assert frame_size("I420", 16, 6, 32) == 32 * 6 + 2 * 16 * 3
    assert frame_size("YV12", 16, 7, 32) == 32 * 7 + 2 * 16 * 3  # odd height: no half row
    assert frame_size("RGBX", 18, 10, 0) == 18 * 4 * 10


class BindingFrame:
    """Mimics ndi-python's ``VideoFrameV2.data`` getter over a byte buffer: an array of
    shape ``(yres, xres, stride // xres)`` with row stride ``stride``, copied."""

    def __init__(self, buffer: bytes, xres: int, yres: int, stride: int) -> None:
        self._buffer = np.frombuffer(buffer, np.uint8)
        self.xres, self.yres, self.line_stride_in_bytes = xres, yres, stride

    @property
    def data(self) -> np.ndarray:
        per_pixel = self.line_stride_in_bytes // self.xres
        view = np.lib.stride_tricks.as_strided(
            self._buffer,
            shape=(self.yres, self.xres, per_pixel),
            strides=(self.line_stride_in_bytes, per_pixel, 1),
        )
        return view.copy()


def test_frame_bytes_reads_exactly_the_frame_and_restores_it() -> None:
    height, width, stride = 10, 18, 96
    buffer = bytes(range(256)) * 10  # more than the frame: what lies beyond is not read
    video = BindingFrame(buffer, width, height, stride)
    # The getter as it is loses bytes: 18 pixels of 5 bytes, not 96-byte rows.
    assert video.data.shape == (height, width, 5)
    raw = _ndi_formats._frame_bytes(video, stride * height)
    np.testing.assert_array_equal(raw, np.frombuffer(buffer, np.uint8)[: stride * height])
    assert (video.xres, video.yres, video.line_stride_in_bytes) == (width, height, stride)
    assert raw.flags.c_contiguous
    pixels = to_rgba("RGBA", raw, width, height, stride)
    np.testing.assert_array_equal(
        pixels[3], np.frombuffer(buffer, np.uint8)[3 * 96 : 3 * 96 + 72].reshape(18, 4)
    )


class FakeFinders:
    """Just enough of NDIlib for :class:`_ndi_discovery._Discovery`: finders come and go."""

    def __init__(self) -> None:
        self.born: dict[int, float] = {}
        self.lived: list[float] = []
        self.ips: list[str] = []
        self._next = 0

    def FindCreate(self, local: bool, groups: None, ips: str) -> str:
        return ips

    def find_create_v2(self, ips: str) -> int:
        self._next += 1
        self.born[self._next] = time.monotonic()
        self.ips.append(ips)
        return self._next

    def find_destroy(self, finder: int) -> None:
        self.lived.append(time.monotonic() - self.born.pop(finder))

    def find_get_current_sources(self, finder: int) -> list[object]:
        return []

    def find_wait_for_sources(self, finder: int, ms: int) -> bool:
        time.sleep(ms / 1000)
        return False


def test_no_finder_is_destroyed_young_and_a_young_probe_is_kept() -> None:
    fake = FakeFinders()
    discovery = _ndi_discovery._Discovery(fake, "127.0.0.1")
    assert discovery.senders() == []
    assert len(fake.born) == 2  # the long-lived finder and the probe
    discovery.reprobe()  # too young to have answered: kept
    assert len(fake.born) == 2 and fake.lived == []
    discovery.wait(_ndi_discovery._PROBE_MIN_AGE + 0.02)
    discovery.reprobe()  # old enough: replaced
    assert len(fake.lived) == 1 and len(fake.born) == 2
    discovery.close()  # the new probe is only milliseconds old: close waits for it
    assert fake.born == {}
    assert min(fake.lived) >= _ndi_discovery._FINDER_MIN_LIFE
    assert fake.ips[1] == ",".join(_ndi_discovery.LOOPBACK_ALIASES)


def test_a_missing_system_library_is_named_not_the_package() -> None:
    """What the H200's bare image said: the wheel was there, Avahi's client library was not."""
    from livediffusion_bridge._ndi_runtime import _load_failure

    missing = ImportError("libavahi-common.so.3: cannot open shared object file: No such file")
    text = _load_failure(missing)
    assert "ndi-python is installed" in text and "libavahi-common.so.3" in text
    assert "apt install libavahi-client3" in text
    absent = _load_failure(ModuleNotFoundError("No module named 'NDIlib'"))
    assert "pip install" in absent and "system library" not in absent
