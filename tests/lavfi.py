"""FFmpeg's lavfi test source as a camera: the camera source's real read path (PyAV opens,
decodes and converts) without a device. ``camera://testsrc2`` plays ``testsrc2`` paced in
real time like a device; ``?fps=`` sets its rate. Like many devices it ignores the asked size
(it always sends 320x240), so the source's own rescaling is what honours ``?size=``."""

from __future__ import annotations

from livediffusion_bridge._camera import DeviceFormat

NATIVE = (320, 240)
"""What the lavfi 'camera' sends."""


def _address(target: str, fps: float, size: tuple[int, int] | None) -> tuple[str, dict[str, str]]:
    # "NAME/SECONDS": a camera that vanishes after that long (the graph ends)
    name, _, seconds = target.partition("/")
    duration = f":duration={seconds}" if seconds else ""
    width, height = NATIVE
    return f"{name}=size={width}x{height}:rate={fps:g}{duration},realtime", {}


LAVFI = DeviceFormat("lavfi", "lavfi", _address, lambda: [("testsrc2", "lavfi testsrc2")])
