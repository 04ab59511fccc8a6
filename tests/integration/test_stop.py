"""A stop is always clean and quick: SIGTERM or Ctrl-C during warm-up or with a slow CPU frame
in flight exits 0 (or 130 for Ctrl-C) within 2 s, without the C++ runtime aborting.

The warm-up case runs the full-size model (its one grey frame takes about 7 s at 512x512 here):
a real model's weights are in memory when the process goes. The frame-in-flight cases need
only a frame that lasts seconds, so they run ``--weights tiny`` (the same classes) at a large
size: ready in 4 s instead of 14 s for the full-size random build, with frames of 1.4 s at
1024x1024 on an idle 2-core machine (about twice that beside another test).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from loopback import Child, free_udp_port

pytestmark = pytest.mark.integration


def _serve_until(marker: str, weights: str, size: int) -> Child:
    child = Child(
        "serve", "--source", "test://pattern", "--sink", "memory://out", "--weights", weights,
        "--device", "cpu", "--size", str(size), "--osc-port", str(free_udp_port()),
    )  # fmt: skip
    if child.wait_for(re.escape(marker), 180) is None:
        child.kill()
        raise AssertionError(child.tail())
    return child


@pytest.mark.parametrize(
    ("marker", "weights", "size", "sig", "codes"),
    [
        # the next frame is in flight, and lasts longer than the second below
        ("first frame processed", "tiny", 1024, signal.SIGTERM, (0,)),
        ("warming up", "random", 512, signal.SIGINT, (0, 130)),  # its one grey frame: ~7 s
    ],
)
def test_a_stop_is_clean_and_quick(
    marker: str, weights: str, size: int, sig: signal.Signals, codes: tuple[int, ...]
) -> None:
    child = _serve_until(marker, weights, size)
    time.sleep(1.0)  # well inside the next frame (or the warm-up)
    code, elapsed = child.stop(sig, timeout=15)
    output = child.tail()
    assert code in codes, output
    assert elapsed < 2.0, f"took {elapsed:.2f} s\n{output}"
    assert "terminate called" not in output and "Traceback" not in output, output


class _CpuLoad:
    """Busy processes, one per core: the machine as busy as a show laptop running a host."""

    def __init__(self) -> None:
        count = os.cpu_count() or 2
        self.processes = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)
        ]

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def _flood(port: int, seconds: float) -> int:
    """Junk OSC as fast as one socket sends it: malformed, out of range, over the rate."""
    junk = [b"/strength\0\0\0,f\0\0\x3f", b"garbage", b"/seed\0\0\0,f\0\0\0\x3f\0\0\0"]
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ended = time.monotonic() + seconds
        while time.monotonic() < ended:
            for datagram in junk:
                sock.sendto(datagram, ("127.0.0.1", port))
                sent += 1
    return sent


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_under_load_with_a_receiver_after_a_flood_is_quick(sig: signal.Signals) -> None:
    """Stops took 2.2 to 3.6 s (3 of 18 tries): the engine waited its whole second for a
    frame that could not end in it, the prompt thread's poll added to it, and each step
    waited after the one before. Here everything at once: both cores busy, an NDI receiver
    connected, a second of OSC junk just before the signal."""
    pytest.importorskip("NDIlib", reason="ndi-python (the NDI runtime) is not installed")
    from livediffusion_bridge import open_source

    port = free_udp_port()
    child = Child(
        "serve", "--source", "test://pattern", "--sink", f"ndi://ld-stop-{uuid.uuid4().hex[:8]}",
        "--weights", "tiny", "--device", "cpu", "--size", "1024", "--osc-port", str(port),
    )  # fmt: skip
    stop = threading.Event()
    received = [0]
    load: _CpuLoad | None = None
    try:
        listening = child.wait_for(r"output listening on (\S+:\d+)", 180)
        assert listening, child.tail()

        def receive() -> None:
            with open_source(f"ndi://{listening.group(1)}") as receiver:
                while not stop.is_set():
                    if receiver.read(0.2) is not None:
                        received[0] += 1

        threading.Thread(target=receive, daemon=True).start()
        assert child.wait_for("first frame processed", 300), child.tail()
        load = _CpuLoad()
        time.sleep(1.0)
        assert _flood(port, 1.0) > 1000
        code, elapsed = child.stop(sig, timeout=20)
    finally:
        stop.set()
        if load is not None:
            load.close()
        child.kill()
    output = child.tail(30)
    assert received[0] > 0, output  # the receiver was connected
    assert code in (0, 130), output
    assert elapsed < 2.0, f"took {elapsed:.2f} s\n{output}"
    assert "terminate called" not in output and "Traceback" not in output, output
