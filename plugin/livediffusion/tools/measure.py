"""Small helpers every measuring command shares: percentiles, a test picture, a free port.

They live apart so that ``bench``, its modes, its end-to-end run and ``soak`` use one copy
each without importing one another.
"""

from __future__ import annotations

import socket

import numpy as np
import numpy.typing as npt

__all__ = ["free_udp_port", "percentile", "picture"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def picture(height: int, width: int) -> npt.NDArray[np.uint8]:
    """A structured picture (gradients), so no stage sees an all-constant input."""
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    pixels[..., 0] = rows
    pixels[..., 1] = cols
    pixels[..., 2] = (rows + cols) / 2
    pixels[..., 3] = 255
    return pixels


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 free right now: the OSC port of a server run in-process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
