"""A stop is always clean and quick: SIGTERM or Ctrl-C during warm-up or with a slow CPU frame
in flight (the full-size model at 512x512 takes seconds per frame here) exits 0 (or 130 for
Ctrl-C) within 2 s, without the C++ runtime aborting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from loopback import free_udp_port

pytestmark = pytest.mark.integration


def _serve_until(marker: str) -> tuple[subprocess.Popen[str], list[str]]:
    command = [
        sys.executable, "-m", "livediffusion", "serve",
        "--source", "test://pattern", "--sink", "memory://out",
        "--weights", "random", "--device", "cpu", "--osc-port", str(free_udp_port()),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    if not seen.wait(180):
        process.kill()
        raise AssertionError("".join(lines[-20:]))
    return process, lines


def _stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(sig)
    try:
        code = process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    return code, time.monotonic() - started


@pytest.mark.parametrize(
    ("marker", "sig", "codes"),
    [
        ("first frame processed", signal.SIGTERM, (0,)),  # the next frame is in flight
        ("warming up", signal.SIGINT, (0, 130)),
    ],
)
def test_a_stop_is_clean_and_quick(
    marker: str, sig: signal.Signals, codes: tuple[int, ...]
) -> None:
    process, lines = _serve_until(marker)
    time.sleep(1.0)  # well inside the next frame (or the warm-up): seconds each on this CPU
    code, elapsed = _stop(process, sig)
    time.sleep(0.2)
    output = "".join(lines[-20:])
    assert code in codes, output
    assert elapsed < 2.0, f"took {elapsed:.2f} s\n{output}"
    assert "terminate called" not in output and "Traceback" not in output, output
