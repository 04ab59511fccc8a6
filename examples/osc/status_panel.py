#!/usr/bin/env python3
"""Show livediffusion's ``--osc-reply`` status as one updating line. Standard library only.

Start the server with a reply address, then run this where that address points::

    livediffusion serve --osc-reply 127.0.0.1:9001
    python examples/osc/status_panel.py            # listens on 127.0.0.1:9001

    in 29.97 fps  out 29.5 fps  latency 41.23 ms  dropped 3  sdxs-512-0.9 on torch-cuda float16
    ... and, with --osc-echo, the latest change after it:  | /strength 0.5

The server sends ``/status in_fps out_fps latency_p50_ms dropped model backend osc_rejected
controlnet_scale lora_weights`` once a second (with ``--osc-prefix /stage1``:
``/stage1/status``), and with ``--osc-echo`` every accepted change, which is shown after
the ``|``. The OSC decoder below reads just the types the server sends (``s``, ``f``, ``i``)
so this runs on a machine without python-osc; anything it cannot read is skipped, never fatal.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from collections.abc import Sequence

OscArg = int | float | str


def _string(data: bytes, at: int) -> tuple[str, int]:
    """The NUL-terminated string at ``at`` and where the next 4-byte-aligned item starts."""
    end = data.find(b"\0", at)
    if end < 0:
        raise ValueError("unterminated string")
    return data[at:end].decode("utf-8"), (end // 4 + 1) * 4


def decode(data: bytes) -> tuple[str, list[OscArg]]:
    """One OSC message -> (address, arguments); ``ValueError`` for anything else.

    OSC 1.0: a padded address, a padded type-tag string starting with ``,``, then each
    argument big-endian (``i`` int32, ``f`` float32) or as a padded string (``s``).
    """
    address, at = _string(data, 0)
    if not address.startswith("/"):
        raise ValueError("not an OSC message (bundles are not sent by the server)")
    tags, at = _string(data, at) if at < len(data) else (",", at)
    if not tags.startswith(","):
        raise ValueError("no type tags")
    args: list[OscArg] = []
    for tag in tags[1:]:
        if tag in "if":
            if at + 4 > len(data):
                raise ValueError("truncated")
            (number,) = struct.unpack(">i" if tag == "i" else ">f", data[at : at + 4])
            args.append(number)
            at += 4
        elif tag == "s":
            text, at = _string(data, at)
            args.append(text)
        else:
            raise ValueError(f"type tag {tag!r} is not one the server sends")
    return address, args


def _plain(value: OscArg) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)  # 0.5, not 0.5000000X


def status_line(args: Sequence[OscArg], last_change: str = "") -> str:
    """The line for one ``/status``: at least 6 arguments, in the order the server sends them
    (fields added later go at the end: the 7th is the OSC messages rejected so far)."""
    if len(args) < 6:
        raise ValueError(f"/status has at least 6 arguments, got {len(args)}")
    in_fps, out_fps, latency, dropped, model, backend = args[:6]
    line = (
        f"in {in_fps:.4g} fps  out {out_fps:.4g} fps  latency {latency:.4g} ms  "
        f"dropped {dropped}  {model} on {backend}"
    )
    rejected = args[6] if len(args) > 6 else 0
    if rejected:
        line += f"  OSC rejected {rejected}"
    return f"{line}  | {last_change}" if last_change else line


def run(host: str, port: int, count: int | None, seconds: float | None) -> None:
    """Show each ``/status`` that arrives; stop after ``count`` of them or ``seconds``."""
    deadline = None if seconds is None else time.monotonic() + seconds
    live = sys.stdout.isatty()  # a terminal: rewrite one line; a pipe or log: a line each
    shown, last_change = 0, ""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sock.settimeout(0.2)  # wake up for the deadline (and Ctrl-C on Windows)
        print(
            f"waiting for /status on {host}:{port} (livediffusion serve --osc-reply {host}:{port})",
            file=sys.stderr,
        )
        while count is None or shown < count:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                data = sock.recv(65_535)
                address, args = decode(data)
                if not address.endswith("/status"):  # an --osc-echo change
                    last_change = " ".join([address, *map(_plain, args)])
                    continue
                line = status_line(args, last_change)
            except TimeoutError:
                continue
            except (ValueError, TypeError):  # junk, or a /status we do not understand
                continue
            if live:
                print(f"\r{line}\x1b[K", end="", flush=True)
            else:
                print(line, flush=True)
            shown += 1
    if live:
        print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show livediffusion's --osc-reply status.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9001, help="port to listen on (9001)")
    parser.add_argument("--count", type=int, help="stop after this many /status")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, args.count, args.seconds)
    except KeyboardInterrupt:
        print()
        return 130
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
