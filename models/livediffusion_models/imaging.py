"""Fitting any input picture to the model's size and back, on the backend's device.

Geometry is worked out once per input/output shape on the host (:func:`plan_geometry`), so
the per-frame work is two slices and two interpolations on tensors that already live on the
device.

``fit="crop"`` fills the model's square with the centre of the picture (nothing is padded,
the sides are lost); ``fit="letterbox"`` keeps the whole picture and pads with black, and the
padding is cut away again on the way out so the output lines up with the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["FIT_MODES", "Box", "FitMode", "Geometry", "plan_geometry", "to_model", "to_pixels"]

FitMode = Literal["crop", "letterbox"]
FIT_MODES: tuple[FitMode, ...] = ("crop", "letterbox")


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True, slots=True)
class Geometry:
    """Where the input goes inside the model image, and which model pixels come back out."""

    input_size: tuple[int, int]  # (height, width)
    model_size: tuple[int, int]
    output_size: tuple[int, int]
    input_crop: Box  # region of the input that is used
    model_content: Box  # region of the model image holding that input (the rest is padding)
    output_crop: Box  # region of the model image that fills the output


def _center_crop(height: int, width: int, aspect: float) -> Box:
    """The largest centred box of ``width/height == aspect`` inside ``height x width``."""
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        return Box(0, (width - new_width) // 2, height, new_width)
    new_height = max(1, round(width / aspect))
    return Box((height - new_height) // 2, 0, new_height, width)


def plan_geometry(
    input_size: tuple[int, int],
    model_size: tuple[int, int],
    *,
    output_size: tuple[int, int] | None = None,
    fit: FitMode = "crop",
) -> Geometry:
    """Work out the crop and padding boxes for one input shape. Sizes are ``(height, width)``."""
    in_h, in_w = input_size
    m_h, m_w = model_size
    out_h, out_w = output_size or input_size
    if min(in_h, in_w, m_h, m_w, out_h, out_w) < 1:
        raise ValueError(f"sizes must be positive: {input_size}, {model_size}, {output_size}")
    if fit == "crop":
        input_crop = _center_crop(in_h, in_w, m_w / m_h)
        content = Box(0, 0, m_h, m_w)
    elif fit == "letterbox":
        input_crop = Box(0, 0, in_h, in_w)
        scale = min(m_h / in_h, m_w / in_w)
        c_h, c_w = max(1, round(in_h * scale)), max(1, round(in_w * scale))
        content = Box((m_h - c_h) // 2, (m_w - c_w) // 2, c_h, c_w)
    else:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    inner = _center_crop(content.height, content.width, out_w / out_h)
    output_crop = Box(content.top + inner.top, content.left + inner.left, inner.height, inner.width)
    return Geometry(
        input_size=(in_h, in_w),
        model_size=(m_h, m_w),
        output_size=(out_h, out_w),
        input_crop=input_crop,
        model_content=content,
        output_crop=output_crop,
    )


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    import torch.nn.functional as F

    if tuple(image.shape[-2:]) == size:
        return image
    shrinking = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def to_model(
    pixels: torch.Tensor, geometry: Geometry, *, out: torch.Tensor, pad: bool = True
) -> torch.Tensor:
    """RGBA uint8 ``(H, W, 4)`` -> ``out``: ``(1, 3, h, w)`` in ``[-1, 1]``, padded with black.

    Only the content box is written each call; ``pad=False`` skips painting the padding, for
    a caller whose ``out`` already holds it from an earlier frame of the same geometry.
    """
    box = geometry.input_crop
    rgb = pixels[box.top : box.top + box.height, box.left : box.left + box.width, :3]
    image = rgb.permute(2, 0, 1).unsqueeze(0).to(out.dtype).mul_(2.0 / 255.0).sub_(1.0)
    content = geometry.model_content
    if pad and (content.height, content.width) != geometry.model_size:
        out.fill_(-1.0)
    target = out[
        :,
        :,
        content.top : content.top + content.height,
        content.left : content.left + content.width,
    ]
    target.copy_(_resize(image, (content.height, content.width)))
    return out


def to_pixels(image: torch.Tensor, geometry: Geometry, *, out: torch.Tensor) -> torch.Tensor:
    """``(1, 3, h, w)`` in ``[-1, 1]`` -> ``out``: RGBA uint8 ``(H, W, 4)`` at the output size."""
    box = geometry.output_crop
    region = image[:, :, box.top : box.top + box.height, box.left : box.left + box.width]
    resized = _resize(region, geometry.output_size)
    rgb = resized[0].permute(1, 2, 0).add(1.0).mul_(127.5).round_().clamp_(0.0, 255.0)
    out[..., :3].copy_(rgb)
    out[..., 3] = 255
    return out
