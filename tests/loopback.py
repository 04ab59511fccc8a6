"""Loopback helpers shared by the integration tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing listens on right now (for an OSC server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that refuses connections, below the ephemeral range.

    Not an ephemeral port: a client that keeps retrying a connection to one of those can
    end up connected to itself (Linux lets a socket whose source port happens to be the
    destination port connect to itself), which looks exactly like a listener.
    """
    for port in range(4000, 5000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(("127.0.0.1", port))
            except ConnectionRefusedError:
                return port
            except OSError:
                continue
    raise RuntimeError("every TCP port from 4000 to 4999 on 127.0.0.1 is taken")


class Child:
    """``python -m livediffusion ARGS`` with its output (stdout and stderr) read line by line
    on a thread, so a test can wait for a log line and still see everything afterwards."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "livediffusion", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first output line matching the regular expression ``pattern``, waiting up to
        ``timeout`` seconds for it; None if none came."""
        deadline = time.monotonic() + timeout
        checked = 0
        with self._changed:
            while True:
                for line in self.lines[checked:]:
                    match = re.search(pattern, line)
                    if match:
                        return match
                checked = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    def stop(
        self, sig: signal.Signals = signal.SIGTERM, *, timeout: float = 10.0
    ) -> tuple[int, float]:
        """Send ``sig`` and wait for the exit: (exit code, seconds it took). Killed if it
        outlasts ``timeout``; the rest of its output is read before this returns."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        elapsed = time.monotonic() - started
        self._reader.join(5)
        return code, elapsed

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def tail(self, count: int = 20) -> str:
        return "".join(self.lines[-count:])
