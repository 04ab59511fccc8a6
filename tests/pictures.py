"""Test pictures whose orientation and colour order can be checked after a round trip."""

from __future__ import annotations

import numpy as np


def oriented_picture(seed: int) -> np.ndarray:
    """A 128x96 RGBA gradient with a white top-left corner: a flip or R/B swap shows."""
    y, x = np.mgrid[0:96, 0:128]
    pixels = np.empty((96, 128, 4), dtype=np.uint8)
    pixels[..., 0] = (x * 2 + seed * 60) % 256
    pixels[..., 1] = (y * 2) % 256
    pixels[..., 2] = 200 if seed % 2 else 30
    pixels[:32, :32, :3] = 255
    pixels[..., 3] = 255
    return pixels
