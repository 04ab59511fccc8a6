#!/usr/bin/env python3
"""Send livediffusion controls over OSC from a terminal or a shell script.

Needs only python-osc (``pip install python-osc``)::

    python examples/osc/livediffusion_osc.py set /strength 0.6
    python examples/osc/livediffusion_osc.py prompt "neon jellyfish, deep sea"
    python examples/osc/livediffusion_osc.py sweep /strength 0.2 1.0 --seconds 4 --rate 30
    python examples/osc/livediffusion_osc.py cycle-prompts "ink" "neon" "moss" --every 8 --count 6
    python examples/osc/livediffusion_osc.py --port 9001 listen   # print what arrives on 9001

``--host``/``--port`` name the server (default 127.0.0.1:9000); for ``listen`` they name the
address to listen on, which is handy to see what another app (TouchDesigner, a phone) sends.
"""

from __future__ import annotations

import argparse
import functools
import socket
import sys
import time
from collections.abc import Iterator, Sequence

from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.udp_client import SimpleUDPClient

OscValue = int | float | str

# What `livediffusion osc` lists; anything else is logged and dropped by the server.
KNOWN_ADDRESSES = (
    "/prompt",
    "/strength",
    "/seed",
    "/feedback",
    "/smoothing",
    "/blend",
    "/bypass",
    "/pause",
)


def parse_value(text: str) -> OscValue:
    """``"7"`` -> 7, ``"0.5"`` -> 0.5, anything else stays a string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _address(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"OSC addresses start with '/', got {text!r}")
    if text not in KNOWN_ADDRESSES:
        print(f"warning: livediffusion does not know {text}; it will drop it", file=sys.stderr)
    return text


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def sweep_values(start: float, end: float, seconds: float, rate: float) -> list[float]:
    """Evenly spaced values from ``start`` to ``end`` inclusive, ``rate`` per second."""
    steps = max(1, round(seconds * rate))
    return [start + (end - start) * i / steps for i in range(steps + 1)]


def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _send(client: SimpleUDPClient, address: str, values: Sequence[OscValue]) -> None:
    client.send_message(address, list(values))
    print(address, *values)


def sweep(client: SimpleUDPClient, address: str, values: Sequence[float], seconds: float) -> None:
    interval = seconds / max(1, len(values) - 1)
    began = time.monotonic()
    for i, value in enumerate(values):
        _sleep_until(began + i * interval)  # a fixed grid: no drift from slow sends
        _send(client, address, [value])


def cycle_prompts(
    client: SimpleUDPClient, prompts: Sequence[str], every: float, count: int | None
) -> None:
    began = time.monotonic()
    i = 0
    while count is None or i < count:
        _sleep_until(began + i * every)
        _send(client, "/prompt", [prompts[i % len(prompts)]])
        i += 1


def osc_messages(datagram: bytes) -> Iterator[OscMessage]:
    """The messages in a datagram, bundles unpacked.

    Unlike python-osc's own packet parser this keeps messages whose address lacks the leading
    ``/`` (the server drops those), so ``listen`` shows what a sender really sends.
    """
    if datagram.startswith(b"#bundle\x00"):
        at = 16  # "#bundle\0" and an 8-byte time tag, then (int32 size, element) pairs
        while at + 4 <= len(datagram):
            size = int.from_bytes(datagram[at : at + 4], "big")
            yield from osc_messages(datagram[at + 4 : at + 4 + size])
            at += 4 + size
    else:
        yield OscMessage(datagram)


def listen(host: str, port: int, count: int | None, seconds: float | None) -> None:
    """Print every OSC message that arrives on ``host:port`` (bundles unpacked)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sock.settimeout(0.2)  # wake up now and then: for the deadline, and Ctrl-C on Windows
        print(f"listening on {host}:{sock.getsockname()[1]}", file=sys.stderr)
        while count is None or received < count:
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                data, sender = sock.recvfrom(65_535)
            except TimeoutError:
                continue
            try:
                messages = list(osc_messages(data))
            except ParseError as exc:
                print(f"# not OSC from {sender[0]}: {exc}", file=sys.stderr)
                continue
            for message in messages:
                print(message.address, *message.params)
            received += 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Send livediffusion controls over OSC.")
    parser.add_argument("--host", default="127.0.0.1", help="server address (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="server OSC port (9000)")
    # The same two options after the command too (`set /seed 3 --port 9001`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--port", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(commands.add_parser, parents=[common])

    set_ = add("set", help="send one message: set /strength 0.6")
    set_.add_argument("address", type=_address)
    set_.add_argument("values", nargs="+", metavar="value", help="ints, floats or strings")

    prompt = add("prompt", help="send /prompt (words are joined)")
    prompt.add_argument("words", nargs="+")

    sweep_ = add("sweep", help="glide a number linearly, then stop")
    sweep_.add_argument("address", type=_address)
    sweep_.add_argument("start", type=float)
    sweep_.add_argument("end", type=float)
    sweep_.add_argument("--seconds", type=_non_negative, default=4.0)
    sweep_.add_argument("--rate", type=_positive, default=30.0, help="messages per second")

    cycle = add("cycle-prompts", help="send prompts in turn, on a clock")
    cycle.add_argument("prompts", nargs="+")
    cycle.add_argument("--every", type=_non_negative, default=8.0, metavar="SECONDS")
    cycle.add_argument("--count", type=int, help="stop after this many (default: Ctrl-C)")

    listen_ = add("listen", help="print the OSC arriving on --host:--port")
    listen_.add_argument("--count", type=int, help="stop after this many datagrams")
    listen_.add_argument("--seconds", type=_positive, help="stop after this long")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "listen":
            listen(args.host, args.port, args.count, args.seconds)
            return 0
        client = SimpleUDPClient(args.host, args.port)
        if args.command == "set":
            _send(client, args.address, [parse_value(v) for v in args.values])
        elif args.command == "prompt":
            _send(client, "/prompt", [" ".join(args.words)])
        elif args.command == "sweep":
            values = sweep_values(args.start, args.end, args.seconds, args.rate)
            sweep(client, args.address, values, args.seconds)
        else:
            cycle_prompts(client, args.prompts, args.every, args.count)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
