"""``livediffusion bench --e2e``: the whole server, NDI in and NDI out, timed frame by frame.

::

    host process: feeder --NDI "ld-bench-in-*"--> serve (this process: capture, model, publish)
                  receiver <--NDI "ld-bench-out-*"--

The host (feeder and receiver) is its own process, as TouchDesigner or OBS would be, so its
Python threads do not share the server's GIL. Each frame the feeder sends carries its number
in two rows of black and white blocks (the number, then its complement), and the server runs
with ``blend`` 1: the model computes every stage of every frame, but the picture that comes out
is the picture that went in, so the receiver can read the number back and match it to the
time it was sent. Latency is receive time minus send time, on the host's one clock, for every
frame that made it; frames the server dropped (latest frame wins) are counted, not timed.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

from livediffusion.config import ServeConfig
from livediffusion.tools.measure import free_udp_port

__all__ = [
    "BITS",
    "MIN_SIDE",
    "E2EResult",
    "check_size",
    "decode_number",
    "encode_number",
    "format_e2e",
    "run_e2e",
]

log = logging.getLogger("livediffusion.tools.bench")

BITS = 20


MIN_SIDE = 4 * BITS
"""The narrowest frame whose number blocks survive NDI (20 blocks of at least 4 pixels)."""


def check_size(size: tuple[int, int]) -> None:
    """Refuse a model size the end-to-end bench cannot run, before anything is loaded:
    it feeds square frames at the model's size, each carrying its number."""
    height, width = size
    if height != width:
        raise ValueError(
            f"--e2e feeds square frames at the model's size: give a square --size, "
            f"got {width}x{height}"
        )
    if width < MIN_SIDE:
        raise ValueError(
            f"--e2e needs a model size of at least {MIN_SIDE} pixels (each frame carries its "
            f"number in 20 blocks of 4 pixels or more), got {width}x{height}: use --size 128 "
            "or more"
        )


def block_size(width: int) -> int:
    """Pixels per block side: 16 (survives NDI's lossy compression with room to spare), less
    on frames too narrow for 20 of those."""
    block = min(16, width // BITS)
    if block < 4:
        raise ValueError(f"frames must be at least {4 * BITS} pixels wide, got {width}")
    return block


def encode_number(pixels: npt.NDArray[np.uint8], number: int) -> None:
    """Write ``number`` into the top two block rows (bits, then their complement)."""
    block = block_size(pixels.shape[1])
    for bit in range(BITS):
        on = (number >> bit) & 1
        left = bit * block
        pixels[:block, left : left + block, :3] = 255 if on else 0
        pixels[block : 2 * block, left : left + block, :3] = 0 if on else 255


def decode_number(pixels: npt.NDArray[np.uint8]) -> int | None:
    """The number :func:`encode_number` wrote, or None if the blocks do not read cleanly."""
    block = block_size(pixels.shape[1])
    if pixels.shape[0] < 2 * block:
        return None
    inner = slice(block // 4, block - block // 4)  # the block centres: away from any ringing
    rows = pixels[: 2 * block, : BITS * block, 1].astype(np.float32)  # green: most of the luma
    top = rows[:block][inner].reshape(-1, BITS, block)[:, :, inner].mean(axis=(0, 2))
    bottom = rows[block:][inner].reshape(-1, BITS, block)[:, :, inner].mean(axis=(0, 2))
    bits = top > 128
    if not np.all(bits == (bottom < 128)) or np.any(np.abs(top - 128) < 64):
        return None
    return int(sum(1 << index for index, on in enumerate(bits) if on))


@dataclass(frozen=True, slots=True)
class E2EResult:
    seconds: float
    sent: int
    received: int  # distinct frames read back with a readable number
    fps: float  # received / seconds
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    feed_fps: float
    server: dict[str, Any]  # the server's own counters (in/out fps, dropped, step p50)
    size: int
    backend: str


# -- the host process ------------------------------------------------------------------------


def _host(
    in_name: str, out_name: str, size: int, fps: float, seconds: float, pipe: Connection
) -> None:
    """Feed numbered frames, read them back, send the timings down ``pipe``."""
    from livediffusion_bridge import open_sink, open_source

    capacity = int(fps * (seconds + 120)) + 1000
    sent_at = np.zeros(capacity, dtype=np.float64)
    got_at = np.zeros(capacity, dtype=np.float64)
    stop = threading.Event()
    first = threading.Event()
    counts = {"sent": 0, "unreadable": 0}
    rows = np.linspace(40, 200, size, dtype=np.float32)[:, None]

    def feed() -> None:
        base = np.empty((size, size, 4), dtype=np.uint8)
        base[..., 0] = rows
        base[..., 1] = rows.T
        base[..., 2] = 128
        base[..., 3] = 255
        picture = base.copy()
        period = 1.0 / fps
        with open_sink(f"ndi://{in_name}?fps={fps:g}") as sink:
            number = 0
            next_time = time.perf_counter()
            while not stop.is_set() and number < capacity:
                encode_number(picture, number)
                sent_at[number] = time.perf_counter()
                sink.publish(picture)
                number += 1
                counts["sent"] = number
                next_time += period
                delay = next_time - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_time = time.perf_counter()  # behind: do not burst to catch up

    def receive() -> None:
        with open_source(f"ndi://{out_name}") as source:
            while not stop.is_set():
                frame = source.read(timeout=0.2)
                if frame is None:
                    continue
                now = time.perf_counter()
                try:
                    number = decode_number(frame.pixels)
                except ValueError:  # a frame of another size: not one of ours
                    number = None
                if number is None or number >= capacity:
                    counts["unreadable"] += 1
                    continue
                if got_at[number] == 0.0:
                    got_at[number] = now
                first.set()

    failures: list[str] = []

    def guarded(body: Any) -> Any:
        def run() -> None:
            try:
                body()
            except Exception as exc:  # said at once, not after the 90 s wait below
                failures.append(f"{type(exc).__name__}: {exc}")
                stop.set()

        return run

    threads = [threading.Thread(target=guarded(f), daemon=True) for f in (feed, receive)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 90.0
    while not first.wait(0.1) and not failures and time.monotonic() < deadline:
        pass
    if failures or not first.is_set():
        stop.set()
        problem = failures[0] if failures else "no frame came back through the server within 90 s"
        pipe.send({"error": problem})
        return
    time.sleep(1.0)  # settle: connection set-up and the first frames are not the steady state
    start_count = counts["sent"]
    started = time.perf_counter()
    time.sleep(seconds)
    ended = time.perf_counter()
    end_count = counts["sent"]
    time.sleep(0.2)  # let the last frames of the window arrive
    stop.set()
    for thread in threads:
        thread.join(5.0)
    window = slice(start_count, end_count)
    got = got_at[window] > 0
    latencies = (got_at[window][got] - sent_at[window][got]) * 1000.0
    pipe.send(
        {
            "seconds": ended - started,
            "sent": end_count - start_count,
            "received": int(got.sum()),
            "latencies_ms": latencies.tolist(),
            "unreadable": counts["unreadable"],
        }
    )


# -- the server, in this process ---------------------------------------------------------------


def run_e2e(
    config: ServeConfig,
    *,
    backend: Any,
    seconds: float = 10.0,
    feed_fps: float = 300.0,
) -> E2EResult:
    """Serve ``backend`` between two NDI loopback streams and time frames through it.

    ``backend`` must be warm (compiled and captured) so start-up is not timed.
    """
    from livediffusion.run.server import run_server

    check_size(backend.model_size)
    width = backend.model_size[1]
    tag = f"{os.getpid()}-{int(time.time()) % 100000}"
    in_name, out_name = f"ld-bench-in-{tag}", f"ld-bench-out-{tag}"
    serve = dataclasses.replace(
        config,
        source=f"ndi://{in_name}",
        sink=f"ndi://{out_name}?fps={feed_fps:g}",
        osc_port=free_udp_port(),
        controls=dataclasses.replace(config.controls, blend=1.0),
        duration=None,
        status_interval=5.0,
        skip_similar=0.0,
    )
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=False)
    host = context.Process(
        target=_host,
        args=(in_name, out_name, width, feed_fps, seconds, theirs),
        name="bench-host",
        daemon=True,
    )
    host.start()
    stop = threading.Event()
    report: dict[str, Any] = {}
    engines: list[Any] = []

    def wait_for_host() -> None:
        try:
            report.update(ours.recv())
        except EOFError:
            report["error"] = "the bench host process ended without a report"
        stop.set()

    waiter = threading.Thread(target=wait_for_host, daemon=True)
    waiter.start()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        run_server(serve, backend=backend, stop=stop, status_stream=quiet, on_engine=engines.append)
    waiter.join(10.0)
    host.join(10.0)
    if host.is_alive():
        host.terminate()
    if "error" in report:
        raise RuntimeError(f"end-to-end bench: {report['error']}")
    latencies = np.asarray(report["latencies_ms"], dtype=np.float64)
    server: dict[str, Any] = {}
    if engines:
        summary = engines[0].stats.summary()
        server = {
            "output_fps": summary.output_fps,
            "frames_in": summary.frames_in,
            "frames_out": summary.frames_out,
            "dropped": summary.dropped,
            "latency_p50_ms": summary.latency_p50_ms,
            "latency_p99_ms": summary.latency_p99_ms,
            "step_p50_ms": 1000.0 * engines[0].stats.step_p50(),
            "unreadable_at_host": report.get("unreadable", 0),
        }
    p50, p99, worst = np.percentile(latencies, [50, 99, 100]) if len(latencies) else (np.nan,) * 3
    return E2EResult(
        seconds=float(report["seconds"]),
        sent=int(report["sent"]),
        received=int(report["received"]),
        fps=report["received"] / report["seconds"] if report["seconds"] else 0.0,
        latency_p50_ms=float(p50),
        latency_p99_ms=float(p99),
        latency_max_ms=float(worst),
        feed_fps=feed_fps,
        server=server,
        size=width,
        backend=backend.name,
    )


def format_e2e(result: E2EResult) -> str:
    server = result.server
    lines = [
        f"end to end, NDI in -> serve -> NDI out over loopback, {result.size}x{result.size}, "
        f"fed at {result.feed_fps:g} fps for {result.seconds:.1f} s ({result.backend}):",
        f"  {result.fps:.1f} frames/s came back ({result.received} of {result.sent} sent; "
        "the rest were dropped as newer frames arrived)",
        f"  frame latency p50 {result.latency_p50_ms:.2f} ms, p99 {result.latency_p99_ms:.2f} ms, "
        f"max {result.latency_max_ms:.2f} ms (send -> receive, every frame that came back)",
    ]
    if server:
        lines.append(
            f"  server: step p50 {server['step_p50_ms']:.2f} ms, out {server['output_fps']:.1f} "
            f"fps, {server['dropped']} dropped at its input"
        )
    return "\n".join(lines)
