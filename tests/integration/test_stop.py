"""A stop is always clean and quick: SIGTERM or Ctrl-C during warm-up or with a slow CPU frame
in flight (the full-size model at 512x512 takes seconds per frame here) exits 0 (or 130 for
Ctrl-C) within 2 s, without the C++ runtime aborting."""

from __future__ import annotations

import re
import signal
import time

import pytest

from loopback import Child, free_udp_port

pytestmark = pytest.mark.integration


def _serve_until(marker: str) -> Child:
    child = Child(
        "serve", "--source", "test://pattern", "--sink", "memory://out",
        "--weights", "random", "--device", "cpu", "--osc-port", str(free_udp_port()),
    )  # fmt: skip
    if child.wait_for(re.escape(marker), 180) is None:
        child.kill()
        raise AssertionError(child.tail())
    return child


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
    child = _serve_until(marker)
    time.sleep(1.0)  # well inside the next frame (or the warm-up): seconds each on this CPU
    code, elapsed = child.stop(sig, timeout=15)
    output = child.tail()
    assert code in codes, output
    assert elapsed < 2.0, f"took {elapsed:.2f} s\n{output}"
    assert "terminate called" not in output and "Traceback" not in output, output
