"""``livediffusion bench --plot FILE.png``: the comparison as a bar chart, with Pillow only.

Pillow is already installed with diffusers; matplotlib is not a dependency, and a chart of a
handful of bars needs no plotting library.
"""

from __future__ import annotations

from pathlib import Path

from livediffusion.tools.bench_e2e import E2EResult
from livediffusion.tools.bench_modes import ModeTiming

__all__ = ["plot"]

_WIDTH, _ROW, _LEFT, _TOP = 900, 46, 250, 60
_COLOURS = {
    "diffusers": (150, 150, 150),
    "eager": (90, 140, 200),
    "compiled": (70, 110, 190),
    "graph": (220, 90, 40),
    "e2e": (60, 160, 90),
}


def plot(rows: list[ModeTiming], e2e: E2EResult | None, path: str | Path, *, title: str) -> None:
    """Frames per second per mode (and end to end), one bar each, values printed on the bars."""
    from PIL import Image, ImageDraw

    bars = [(row.mode, row.fps, row.mode) for row in rows if row.fps]
    if e2e is not None:
        bars.append(("NDI end to end", e2e.fps, "e2e"))
    height = _TOP + _ROW * max(1, len(bars)) + 50
    image = Image.new("RGB", (_WIDTH, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((20, 15), title, fill=(0, 0, 0))
    draw.text((20, 32), "frames per second, longer is better", fill=(90, 90, 90))
    top_fps = max((fps for _, fps, _ in bars if fps), default=1.0)
    span = _WIDTH - _LEFT - 120
    for index, (label, fps, kind) in enumerate(bars):
        y = _TOP + index * _ROW
        length = int(span * (fps or 0.0) / top_fps)
        draw.text((20, y + 12), label, fill=(0, 0, 0))
        draw.rectangle((_LEFT, y + 6, _LEFT + max(length, 1), y + _ROW - 10), fill=_COLOURS[kind])
        draw.text((_LEFT + length + 8, y + 12), f"{fps:.1f}", fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
