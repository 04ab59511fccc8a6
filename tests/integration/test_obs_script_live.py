"""The OBS script (under the ``obspython`` fake) runs a real ``livediffusion serve``: Start
launches it and its status shows in the properties, a property change reaches it over OSC,
Stop ends it cleanly, a killed server is restarted, and unloading the script leaves no
server behind."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pythonosc.osc_message import OscMessage

from livediffusion.hosts import HOST_FILES
from loopback import free_udp_port
from obspython_fake import Host, install, loaded

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.name == "nt", reason="checks processes with POSIX signals"),
]

# Cheap and offline: the real classes scaled down, on the CPU (about 10 s to start here).
SERVE = {
    "source": "test://pattern",
    "sink": "memory://out",
    "model": "sdxs-512-0.9",
    "autostart": False,
}
CHEAP = "--weights tiny --device cpu --size 64 --status-interval 1"
START_S = 180.0  # a cold start on a loaded 2-core machine


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Host]:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the server logs go here
    yield from loaded(install(monkeypatch))


def _controller(host: Host) -> Any:
    assert host.module is not None
    return host.module._controller


def _running(host: Host) -> bool:
    return host.text("status").startswith("running (") and " fps" in host.text("status")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _echoes(sock: socket.socket, address: str, seconds: float) -> list[list[Any]]:
    """The arguments of every ``address`` message arriving within ``seconds``."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = OscMessage(sock.recvfrom(65535)[0])
        except TimeoutError:
            break
        if message.address == address:
            found.append(list(message.params))
    return found


def test_start_shows_a_real_server_that_takes_changes_and_stop_ends_it(host: Host) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echoes:
        echoes.bind(("127.0.0.1", 0))
        reply = f"--osc-reply 127.0.0.1:{echoes.getsockname()[1]} --osc-echo"
        host.load(
            HOST_FILES["obs"],
            {**SERVE, "osc_port": free_udp_port(), "extra_args": f"{CHEAP} {reply}"},
        )
        host.show()
        assert "server: " in host.text("status")  # found by itself: this checkout's .venv
        assert host.click("start") is True
        proc = _controller(host).proc
        assert proc is not None and proc.poll() is None
        assert host.tick_until(lambda: _running(host), START_S), host.text("status")
        status = host.text("status")
        assert f"pid {proc.pid}" in status and "sdxs-512-0.9 on torch-cpu" in status

        host.set("strength", 0.25)
        assert [0.25] in _echoes(echoes, "/strength", 5.0)  # the server took it

        host.click("stop")
        assert proc.returncode == 0  # a clean SIGTERM stop
        assert _gone(proc.pid)
        assert host.text("status").startswith("stopped")


def test_a_killed_server_comes_back_and_unload_leaves_none(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = host.load(
        HOST_FILES["obs"],
        {**SERVE, "osc_port": free_udp_port(), "extra_args": CHEAP, "autostart": True},
    )
    monkeypatch.setattr(module, "BACKOFF_S", (0.5,))
    first = _controller(host).proc
    assert first is not None  # started at load
    assert host.tick_until(lambda: _running(host), START_S), host.text("status")

    os.kill(first.pid, signal.SIGKILL)
    assert host.tick_until(lambda: "died (exit code -9)" in host.text("status"), 10)

    def back() -> bool:
        proc = _controller(host).proc
        return proc is not None and proc.pid != first.pid and _running(host)

    assert host.tick_until(back, START_S), host.text("status")
    second = _controller(host).proc
    host.unload()
    assert second.returncode == 0
    assert _gone(first.pid) and _gone(second.pid)
