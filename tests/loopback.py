"""Loopback helpers shared by the integration tests."""

from __future__ import annotations

import socket


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
