#!/usr/bin/env python3
"""Drive livediffusion over OSC from a terminal or a shell script, and read its answers.

Needs only python-osc (``pip install python-osc``). It is a script to copy and adapt, so it
does not import livediffusion: the addresses are listed here, as ``livediffusion osc`` does::

    python examples/osc/livediffusion_osc.py set /strength 0.6  # or: set strength 0.6
    python examples/osc/livediffusion_osc.py prompt "neon jellyfish, deep sea"
    python examples/osc/livediffusion_osc.py morph "ink wash" "neon city" --mix 0.3
    python examples/osc/livediffusion_osc.py sweep /prompt/mix 0 1 --seconds 8
    python examples/osc/livediffusion_osc.py cycle-prompts "ink" "neon" "moss" --every 8
    python examples/osc/livediffusion_osc.py preset save 3       # later: preset recall 3
    python examples/osc/livediffusion_osc.py reset
    python examples/osc/livediffusion_osc.py status               # fps, latency, model ...
    python examples/osc/livediffusion_osc.py ping                 # round trip in ms
    python examples/osc/livediffusion_osc.py watch                # the --osc-reply stream
    python examples/osc/livediffusion_osc.py --port 9001 listen   # raw: what arrives on 9001

``--host``/``--port`` name the server (default 127.0.0.1:9000). For ``listen`` and ``watch``
they name where to listen instead (``watch`` defaults to port 9001, the port used with
``livediffusion serve --osc-reply 127.0.0.1:9001``). ``--prefix /stage1`` talks to a server
started with ``--osc-prefix /stage1``. The options may come before or after the command.
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from pythonosc.osc_message import OscMessage, ParseError
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

OscValue = int | float | str

# What `livediffusion osc` lists; anything else is logged and dropped by the server.
KNOWN_ADDRESSES = (
    "/prompt",
    "/prompt/a",
    "/prompt/b",
    "/prompt/mix",
    "/strength",
    "/seed",
    "/feedback",
    "/smoothing",
    "/blend",
    "/bypass",
    "/pause",
    "/glide",
    "/prompt/glide",
    "/seed/glide",
    "/controlnet/scale",
    "/lora/N/weight",
    "/lora/N/on",
    "/preset/save",
    "/preset/recall",
    "/reset",
    "/status",
    "/ping",
)

# The arguments of the server's /status reply (and of the --osc-reply stream), in order.
# New fields only ever go at the end: a server older or newer than this script still reads.
STATUS_FIELDS = (
    "in_fps",
    "out_fps",
    "latency_p50_ms",
    "dropped",
    "model",
    "backend",
    "osc_rejected",
    "controlnet_scale",
    "lora_weights",
)
STATUS_MINIMUM = 6  # what every server sends

SERVER_PORT = 9000
REPLY_PORT = 9001  # the port the docs use for --osc-reply; `watch` listens there by default


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


def show_value(value: object) -> str:
    """Floats travel as 32-bit: print 29.97, not 29.969999313354492."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def canonical(address: str) -> str | None:
    """The address the server reads ``address`` as, or None if it knows none.

    The server's own rule (``livediffusion.control.controls.canonical_address``): the leading ``/``
    is optional and ``_`` may stand for ``/``, because TouchDesigner's OSC Out CHOP uses
    channel names as addresses (``strength``, ``prompt_mix``).
    """
    path = address if address.startswith("/") else "/" + address
    for name in (path, path.replace("_", "/")):
        if name in KNOWN_ADDRESSES:
            return name
        if re.fullmatch(r"/lora/\d+/(weight|on)", name):
            return name  # /lora/N/weight for a LoRA's number N (from 0, in --lora order)
    return None


def _address(text: str) -> str:
    known = canonical(text)
    if known is not None:
        return known  # `set strength 0.6` sends /strength, as the server would read it
    if not text.strip("/"):
        raise argparse.ArgumentTypeError(f"not an OSC address: {text!r}")
    print(f"warning: livediffusion does not know {text}; it will drop it", file=sys.stderr)
    return text if text.startswith("/") else "/" + text


def _prefix(text: str) -> str:
    # The server's --osc-prefix rule, so a typo fails here rather than as silence there.
    if text and not re.fullmatch(r"(/[A-Za-z0-9_.\-]+)+", text):
        raise argparse.ArgumentTypeError(f"a prefix looks like /stage1, got {text!r}")
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


class Sender:
    """Sends to one server, with its ``--osc-prefix`` in front of every address."""

    def __init__(self, host: str, port: int, prefix: str = "") -> None:
        self._client = SimpleUDPClient(host, port)
        self.prefix = prefix

    def send(self, address: str, values: Sequence[OscValue] = ()) -> None:
        self._client.send_message(self.prefix + address, list(values))
        print(self.prefix + address, *values)


def sweep(sender: Sender, address: str, values: Sequence[float], seconds: float) -> None:
    interval = seconds / max(1, len(values) - 1)
    began = time.monotonic()
    for i, value in enumerate(values):
        _sleep_until(began + i * interval)  # a fixed grid: no drift from slow sends
        sender.send(address, [value])


def cycle_prompts(sender: Sender, prompts: Sequence[str], every: float, count: int | None) -> None:
    began = time.monotonic()
    i = 0
    while count is None or i < count:
        _sleep_until(began + i * every)
        sender.send("/prompt", [prompts[i % len(prompts)]])
        i += 1


def osc_messages(datagram: bytes) -> Iterator[OscMessage]:
    """The messages in a datagram, bundles unpacked.

    Unlike python-osc's own packet parser this keeps messages whose address lacks the leading
    ``/`` (TouchDesigner channel names), so ``listen`` shows what a sender really sends.
    """
    if datagram.startswith(b"#bundle\x00"):
        at = 16  # "#bundle\0" and an 8-byte time tag, then (int32 size, element) pairs
        while at + 4 <= len(datagram):
            size = int.from_bytes(datagram[at : at + 4], "big")
            yield from osc_messages(datagram[at + 4 : at + 4 + size])
            at += 4 + size
    else:
        yield OscMessage(datagram)


def ask(
    host: str,
    port: int,
    address: str,
    args: Sequence[OscValue],
    expect: str,
    timeout: float,
    accept: Callable[[list[object]], bool] = lambda params: True,
) -> tuple[OscMessage, float] | None:
    """Send one message and wait for the answer at ``expect``: (reply, seconds) or None.

    The server answers ``/status`` and ``/ping`` to the address and port the question came
    from, so the question leaves from a socket of our own that we then read (python-osc's
    client keeps its socket private). Anything else arriving on it is skipped.
    """
    family, _, _, _, server = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 0))
        began = time.monotonic()
        sock.sendto(builder.build().dgram, server)
        while (left := began + timeout - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, _ = sock.recvfrom(65_535)
            except TimeoutError:
                break
            except ConnectionResetError:
                continue  # Windows reports "nothing listens there" (ICMP) on the next read
            try:
                replies = list(osc_messages(data))
            except (ParseError, ValueError, IndexError):
                continue  # not OSC: not our answer
            for reply in replies:
                if reply.address == expect and accept(list(reply.params)):
                    return reply, time.monotonic() - began
    return None


def _no_reply(host: str, port: int, prefix: str, timeout: float) -> int:
    hint = f" and --osc-prefix {prefix}" if prefix else ""
    print(
        f"no reply from {host}:{port} in {timeout:g} s: "
        f"is livediffusion serve running with --osc-port {port}{hint}?",
        file=sys.stderr,
    )
    return 1


def status(host: str, port: int, prefix: str, timeout: float) -> int:
    """Ask once and print the labelled fields; 1 if nothing answered."""
    answer = ask(host, port, prefix + "/status", [], prefix + "/status", timeout)
    if answer is None:
        return _no_reply(host, port, prefix, timeout)
    reply, _ = answer
    print(f"{reply.address} from {host}:{port}")
    for name, value in zip(STATUS_FIELDS, reply.params, strict=False):
        print(f"  {name:<15} {show_value(value)}")
    return 0


def ping(host: str, port: int, prefix: str, timeout: float) -> int:
    """Round trip of /ping -> /pong; a random token tells our pong from anyone else's."""
    token = random.randrange(2**31)
    answer = ask(
        host,
        port,
        prefix + "/ping",
        [token],
        prefix + "/pong",
        timeout,
        accept=lambda params: params == [token],
    )
    if answer is None:
        return _no_reply(host, port, prefix, timeout)
    reply, seconds = answer
    print(f"{reply.address} from {host}:{port} in {seconds * 1000:.2f} ms")
    return 0


def raw_line(message: OscMessage) -> str:
    return " ".join([message.address, *(str(p) for p in message.params)])


def watch_line(message: OscMessage) -> str:
    """One line per message: /status labelled, echoed changes (``/strength 0.5``) as they are."""
    params = list(message.params)
    if message.address.endswith("/status") and len(params) >= STATUS_MINIMUM:
        fields = "  ".join(
            f"{name}={show_value(value)}"
            for name, value in zip(STATUS_FIELDS, params, strict=False)
        )
        text = f"{message.address}  {fields}"
    else:
        text = " ".join([message.address, *(show_value(p) for p in params)])
    return f"{time.strftime('%H:%M:%S')} {text}"


def listen(
    host: str,
    port: int,
    count: int | None,
    seconds: float | None,
    line: Callable[[OscMessage], str] = raw_line,
) -> None:
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
            except (ParseError, ValueError, IndexError) as exc:
                print(f"# not OSC from {sender[0]}: {exc}", file=sys.stderr)
                continue
            for message in messages:
                print(line(message), flush=True)
            received += 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Drive livediffusion over OSC.")
    parser.add_argument("--host", default="127.0.0.1", help="server address (127.0.0.1)")
    parser.add_argument("--port", type=int, help="server OSC port (9000; watch: 9001)")
    parser.add_argument(
        "--prefix", type=_prefix, default="", metavar="/NAME", help="the server's --osc-prefix"
    )
    # The same options after the command too (`set /seed 3 --port 9001`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--port", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--prefix", type=_prefix, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(commands.add_parser, parents=[common])

    set_ = add("set", help="send one message: set /strength 0.6 (or strength, prompt_mix ...)")
    set_.add_argument("address", type=_address)
    set_.add_argument("values", nargs="+", metavar="value", help="ints, floats or strings")

    prompt = add("prompt", help="send /prompt (words are joined)")
    prompt.add_argument("words", nargs="+")

    morph = add("morph", help="set /prompt/a and /prompt/b; /prompt/mix morphs between them")
    morph.add_argument("a", metavar="A_TEXT")
    morph.add_argument("b", metavar="B_TEXT")
    morph.add_argument("--mix", type=float, help="also send /prompt/mix (0 = A, 1 = B)")

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

    preset = add("preset", help="preset save N / preset recall N (N: 0..999)")
    preset.add_argument("action", choices=("save", "recall"))
    preset.add_argument("number", type=int)

    add("reset", help="forget feedback and smoothing; start afresh")

    for name, text in (("status", "ask for fps, latency, model"), ("ping", "time a round trip")):
        asking = add(name, help=text)
        asking.add_argument("--timeout", type=_positive, default=2.0, metavar="SECONDS")

    for name, text in (
        ("listen", "print the raw OSC arriving on --host:--port"),
        ("watch", "print the --osc-reply stream (/status, --osc-echo changes) on port 9001"),
    ):
        listening = add(name, help=text)
        listening.add_argument("--count", type=int, help="stop after this many datagrams")
        listening.add_argument("--seconds", type=_positive, help="stop after this long")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host: str = args.host
    port: int = args.port
    if args.port is None:
        port = REPLY_PORT if args.command == "watch" else SERVER_PORT
    prefix: str = args.prefix
    try:
        if args.command in ("listen", "watch"):
            line = watch_line if args.command == "watch" else raw_line
            listen(host, port, args.count, args.seconds, line)
            return 0
        if args.command == "status":
            return status(host, port, prefix, args.timeout)
        if args.command == "ping":
            return ping(host, port, prefix, args.timeout)
        sender = Sender(host, port, prefix)
        if args.command == "set":
            sender.send(args.address, [parse_value(v) for v in args.values])
        elif args.command == "prompt":
            sender.send("/prompt", [" ".join(args.words)])
        elif args.command == "morph":
            sender.send("/prompt/a", [args.a])
            sender.send("/prompt/b", [args.b])
            if args.mix is not None:
                sender.send("/prompt/mix", [args.mix])
        elif args.command == "preset":
            sender.send(f"/preset/{args.action}", [args.number])
        elif args.command == "reset":
            sender.send("/reset")
        elif args.command == "sweep":
            values = sweep_values(args.start, args.end, args.seconds, args.rate)
            sweep(sender, args.address, values, args.seconds)
        else:
            cycle_prompts(sender, args.prompts, args.every, args.count)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
