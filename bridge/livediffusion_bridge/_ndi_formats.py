"""NDI's pixel formats in, RGBA out: packed 8-bit formats, 4:2:2 and planar YUV, any stride."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from .frame import Pixels

__all__ = ["UnsupportedFormat", "frame_size", "to_rgba"]

# -- pixel formats -------------------------------------------------------------------------


class UnsupportedFormat(ValueError):
    """A pixel format this module does not convert (16-bit P216/PA16, unknown codes)."""


_PACKED = {"RGBA": (0, 1, 2), "RGBX": (0, 1, 2), "BGRA": (2, 1, 0), "BGRX": (2, 1, 0)}
"""4-byte formats: where R, G and B sit in each pixel."""


def fourcc_text(code: int) -> str:
    """NDI FourCC codes are four ASCII characters, first one in the low byte."""
    return int(code).to_bytes(4, "little", signed=False).decode("ascii", "replace")


def _natural_stride(fourcc: str, width: int) -> int:
    if fourcc in _PACKED:
        return width * 4
    if fourcc in ("UYVY", "UYVA"):
        return (width + 1) // 2 * 4
    return width  # the 8-bit planar formats: one byte per luma sample


def frame_size(fourcc: str, width: int, height: int, stride: int) -> int:
    """Bytes a received frame occupies in NDI's buffer: the planes the NDI SDK describes
    (*Frame Types*), all sized from ``line_stride_in_bytes`` of the first plane.

    Raises :class:`UnsupportedFormat` for formats :func:`to_rgba` does not convert.
    """
    stride = stride or _natural_stride(fourcc, width)
    if fourcc in _PACKED or fourcc == "UYVY":
        return stride * height
    if fourcc == "UYVA":
        # The alpha plane follows the UYVY plane; its rows are stride/2 apart (measured:
        # a 50-wide frame had a 128-byte UYVY stride and alpha rows 64 bytes apart).
        return stride * height + stride // 2 * height
    if fourcc == "NV12":
        return stride * height + stride * (height // 2)
    if fourcc in ("I420", "YV12"):
        return stride * height + 2 * (stride // 2) * (height // 2)
    raise UnsupportedFormat(f"pixel format {fourcc!r} is not supported")


def to_rgba(
    fourcc: str, raw: npt.NDArray[np.uint8], width: int, height: int, stride: int
) -> Pixels:
    """Convert one received frame (its bytes in NDI's layout) to contiguous RGBA.

    ``raw`` holds at least :func:`frame_size` bytes; the result may share memory with it.
    YUV is read as BT.709 with limited (16-235) range: that is what this NDI runtime
    writes and reads at every size, measured, although the NDI SDK documents BT.601 for
    SD sizes. Raises :class:`UnsupportedFormat`, or ``ValueError`` for a frame whose
    numbers do not add up.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame has no pixels: {width}x{height}")
    stride = stride or _natural_stride(fourcc, width)
    if stride < _natural_stride(fourcc, width):
        raise ValueError(f"stride {stride} is too small for {width} pixels of {fourcc}")
    size = frame_size(fourcc, width, height, stride)
    flat = np.asarray(raw, dtype=np.uint8).reshape(-1)
    if flat.size < size:
        raise ValueError(f"{fourcc} frame {width}x{height} needs {size} bytes, got {flat.size}")
    first = flat[: stride * height].reshape(height, stride)
    if fourcc in _PACKED:
        rows = first[:, : width * 4].reshape(height, width, 4)
        red, green, blue = _PACKED[fourcc]
        if (red, green, blue) == (0, 1, 2):
            pixels = np.ascontiguousarray(rows)
        else:
            pixels = np.ascontiguousarray(rows[..., (red, green, blue, 3)])
        if fourcc.endswith("X"):
            pixels[..., 3] = 255
        return pixels
    if fourcc in ("UYVY", "UYVA"):
        pairs = (width + 1) // 2
        macro = first[:, : pairs * 4].reshape(height, pairs, 4)
        luma = macro[..., 1::2].reshape(height, pairs * 2)[:, :width]
        columns = np.arange(width) // 2
        alpha = None
        if fourcc == "UYVA":
            half = stride // 2
            plane = flat[stride * height : stride * height + half * height]
            alpha = plane.reshape(height, half)[:, :width]
        return yuv_to_rgba(luma, macro[:, columns, 0], macro[:, columns, 2], alpha)
    luma = first[:, :width]
    chroma_rows = height // 2
    if chroma_rows < 1:
        raise ValueError(f"{fourcc} frame {width}x{height} has no chroma rows")
    rest = flat[stride * height :]
    half_width = (width + 1) // 2
    if fourcc == "NV12":
        interleaved = rest[: stride * chroma_rows].reshape(chroma_rows, stride)
        if stride < half_width * 2:
            raise ValueError(f"stride {stride} is too small for the chroma of {width} pixels")
        uv = interleaved[:, : half_width * 2].reshape(chroma_rows, half_width, 2)
        u_plane, v_plane = uv[..., 0], uv[..., 1]
    else:
        half = stride // 2
        if half < half_width:
            raise ValueError(f"stride {stride} is too small for the chroma of {width} pixels")
        first_plane = rest[: half * chroma_rows].reshape(chroma_rows, half)[:, :half_width]
        second = rest[half * chroma_rows : 2 * half * chroma_rows].reshape(chroma_rows, half)
        second_plane = second[:, :half_width]
        # I420 is Y, U, V; YV12 is Y, V, U (the SDK's code sample shows V first for both).
        u_plane, v_plane = (
            (first_plane, second_plane) if fourcc == "I420" else (second_plane, first_plane)
        )
    rows = np.minimum(np.arange(height) // 2, chroma_rows - 1)[:, None]
    columns = (np.arange(width) // 2)[None, :]
    return yuv_to_rgba(luma, u_plane[rows, columns], v_plane[rows, columns], None)


def yuv_to_rgba(
    y: npt.NDArray[np.uint8],
    u: npt.NDArray[np.uint8],
    v: npt.NDArray[np.uint8],
    alpha: npt.NDArray[np.uint8] | None,
) -> Pixels:
    """BT.709 limited-range Y'CbCr (one sample of each per pixel) to RGBA."""
    luma = (y.astype(np.float32) - 16.0) * np.float32(255 / 219)
    cb = (u.astype(np.float32) - 128.0) * np.float32(255 / 224)
    cr = (v.astype(np.float32) - 128.0) * np.float32(255 / 224)
    pixels: Pixels = np.empty((*y.shape, 4), dtype=np.uint8)
    for channel, value in enumerate(
        (luma + 1.5748 * cr, luma - 0.18732 * cb - 0.46812 * cr, luma + 1.8556 * cb)
    ):
        np.clip(value + 0.5, 0, 255, out=value)
        pixels[..., channel] = value
    pixels[..., 3] = 255 if alpha is None else alpha
    return pixels


def _frame_bytes(video: Any, size: int) -> npt.NDArray[np.uint8]:
    """``size`` bytes from the start of a received frame's buffer, copied out of NDI's.

    ndi-python's ``VideoFrameV2.data`` getter builds an array of shape
    ``(yres, xres, line_stride_in_bytes // xres)`` with row stride ``line_stride_in_bytes``
    and no base object, which pybind11 answers by copying just those elements. That shape
    loses bytes whenever the stride is no multiple of the width, and never reaches the
    planes after the first. So the frame's numbers are set, for this one read, to a
    ``size`` x 1 x 1 array of 1-byte rows (an exact copy of ``size`` bytes), then restored
    before the frame is freed.
    """
    saved = (video.xres, video.yres, video.line_stride_in_bytes)
    try:
        video.xres, video.yres, video.line_stride_in_bytes = 1, size, 1
        data = np.asarray(video.data, dtype=np.uint8)
    finally:
        video.xres, video.yres, video.line_stride_in_bytes = saved
    if data.size != size:
        raise ValueError(f"ndi-python returned {data.size} bytes, expected {size}")
    if not data.flags.owndata:  # a binding that hands out a view of NDI's buffer: copy it
        data = data.copy()
    return data.reshape(-1)
