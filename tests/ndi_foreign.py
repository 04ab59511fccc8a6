"""Another NDI program on this machine, for the NDI tests: a context manager and its script.

Run as a script it is a small NDI program of its own (a finder plus a sender that sends a
little picture ten times a second), the way a VJ host, OBS or NDI Tools would sit beside
livediffusion. Every NDI process listens on the shared discovery port 5960, and over
loopback each answers a finder with only its own senders, so its presence is what broke
finding senders by name. :func:`foreign_ndi_program` starts it, checks that it holds port
5960, and stops it afterwards (test modules wrap it in a fixture); the script also quits
when its parent goes away.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BRIDGE_ROOT = Path(__file__).resolve().parents[1] / "bridge"
DISCOVERY_PORT = 5960


@dataclass(frozen=True)
class ForeignNdi:
    """The running foreign program: its sender's full NDI name and its listening ports."""

    process: subprocess.Popen[str]
    sender_name: str
    ports: frozenset[int]


def start_foreign(seconds: float = 600.0, timeout: float = 30.0) -> ForeignNdi:
    """Start the foreign NDI program and wait until its sender is up."""
    name = f"ld-foreign-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), name, str(seconds)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("ready\t"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout):
        stop_foreign(process)
        raise RuntimeError(f"the foreign NDI program did not start: {''.join(lines)[-2000:]}")
    _, full_name, ports = lines[-1].rstrip("\n").split("\t")
    return ForeignNdi(process, full_name, frozenset(int(p) for p in ports.split(",") if p))


def stop_foreign(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _main(name: str, seconds: float) -> None:
    sys.path.insert(0, str(BRIDGE_ROOT))
    import NDIlib
    import numpy as np

    from livediffusion_bridge._ndi import _listening_ports

    parent = os.getppid()
    if not NDIlib.initialize():
        raise SystemExit("NDIlib.initialize() failed")
    finder = NDIlib.find_create_v2(NDIlib.FindCreate(True, None, "127.0.0.1"))
    sender = NDIlib.send_create(NDIlib.SendCreate(name, None, False, False))
    pixels = np.zeros((48, 64, 4), np.uint8)
    pixels[..., 1] = 200
    pixels[..., 3] = 255
    frame = NDIlib.VideoFrameV2()
    frame.data = pixels
    frame.FourCC = NDIlib.FOURCC_VIDEO_TYPE_RGBX
    NDIlib.send_send_video_v2(sender, frame)
    full_name = str(NDIlib.send_get_source_name(sender).ndi_name)
    ports = ",".join(str(p) for p in sorted(_listening_ports() or ()))
    print(f"ready\t{full_name}\t{ports}", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end and os.getppid() == parent:
        NDIlib.send_send_video_v2(sender, frame)
        NDIlib.find_get_current_sources(finder)  # a finder in use, like a host's source menu
        time.sleep(0.1)
    NDIlib.send_destroy(sender)
    NDIlib.find_destroy(finder)


@contextmanager
def foreign_ndi_program() -> Iterator[ForeignNdi]:
    """Another NDI program (finder + sender) running for the duration of the block."""
    foreign = start_foreign()
    try:
        if foreign.ports:  # known on Linux and macOS: it competes for discovery
            assert DISCOVERY_PORT in foreign.ports, foreign.ports
        yield foreign
    finally:
        stop_foreign(foreign.process)


if __name__ == "__main__":
    _main(sys.argv[1], float(sys.argv[2]))
