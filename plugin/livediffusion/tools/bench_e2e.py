"""``livediffusion bench --e2e``: the whole server, NDI in and NDI out, timed frame by frame.

With ``--streams N``, N such pairs, one host process each, served by one batched model.

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
    streams: int = 1
    per_stream: tuple[dict[str, float], ...] = ()  # each stream's fps and latency p50/p99


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
    streams: int = 1,
) -> E2EResult:
    """Serve ``backend`` between NDI loopback streams and time frames through it.

    ``streams``: that many NDI pairs, each fed and read back by a host process of its own
    (as several TouchDesigner outputs would be), all served by this one process through one
    batched model (``backend`` built for that many). ``backend`` must be warm (compiled and
    captured) so start-up is not timed.
    """
    from livediffusion.config import StreamConfig
    from livediffusion.run.server import run_server

    check_size(backend.model_size)
    width = backend.model_size[1]
    tag = f"{os.getpid()}-{int(time.time()) % 100000}"
    names = [(f"ld-bench-in-{tag}-{k}", f"ld-bench-out-{tag}-{k}") for k in range(streams)]
    look = dataclasses.replace(config.controls, blend=1.0)
    pairs: tuple[StreamConfig, ...]
    if streams == 1:
        (in_name, out_name), pairs = names[0], ()
    else:
        in_name = out_name = ""
        pairs = tuple(
            StreamConfig(f"s{k}", f"ndi://{src}", f"ndi://{dst}?fps={feed_fps:g}", look)
            for k, (src, dst) in enumerate(names)
        )
    serve = dataclasses.replace(
        config,
        source=f"ndi://{in_name}" if streams == 1 else config.source,
        sink=f"ndi://{out_name}?fps={feed_fps:g}" if streams == 1 else config.sink,
        streams=pairs,
        osc_port=free_udp_port(),
        controls=look,
        duration=None,
        status_interval=5.0,
        skip_similar=0.0,
    )
    context = multiprocessing.get_context("spawn")
    hosts = []
    for k, (src, dst) in enumerate(names):
        ours, theirs = context.Pipe(duplex=False)
        host = context.Process(
            target=_host,
            args=(src, dst, width, feed_fps, seconds, theirs),
            name=f"bench-host-{k}",
            daemon=True,
        )
        host.start()
        hosts.append((host, ours))
    stop = threading.Event()
    reports: list[dict[str, Any]] = [{} for _ in hosts]
    engines: list[Any] = []

    def wait_for_hosts() -> None:
        for report, (_, pipe) in zip(reports, hosts, strict=True):
            try:
                report.update(pipe.recv())
            except EOFError:
                report["error"] = "the bench host process ended without a report"
            if "error" in report:
                break
        stop.set()

    waiter = threading.Thread(target=wait_for_hosts, daemon=True)
    waiter.start()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        run_server(serve, backend=backend, stop=stop, status_stream=quiet, on_engine=engines.append)
    waiter.join(10.0)
    for host, _ in hosts:
        host.join(10.0)
        if host.is_alive():
            host.terminate()
    for report in reports:
        if "error" in report:
            raise RuntimeError(f"end-to-end bench: {report['error']}")
    every = np.concatenate([np.asarray(r["latencies_ms"], dtype=np.float64) for r in reports])
    server: dict[str, Any] = {}
    if engines:
        lanes = engines[0].lanes
        summaries = [lane.stats.summary() for lane in lanes]
        server = {
            "output_fps": sum(summary.output_fps for summary in summaries),
            "frames_in": sum(summary.frames_in for summary in summaries),
            "frames_out": sum(summary.frames_out for summary in summaries),
            "dropped": sum(summary.dropped for summary in summaries),
            "latency_p50_ms": max(summary.latency_p50_ms for summary in summaries),
            "latency_p99_ms": max(summary.latency_p99_ms for summary in summaries),
            "step_p50_ms": 1000.0 * engines[0].model_stats.step_p50(),
            "unreadable_at_host": sum(r.get("unreadable", 0) for r in reports),
        }
    per_stream = []
    for report in reports:
        latencies = np.asarray(report["latencies_ms"], dtype=np.float64)
        p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (np.nan,) * 2
        per_stream.append(
            {
                "fps": report["received"] / report["seconds"] if report["seconds"] else 0.0,
                "latency_p50_ms": float(p50),
                "latency_p99_ms": float(p99),
            }
        )
    p50, p99, worst = np.percentile(every, [50, 99, 100]) if len(every) else (np.nan,) * 3
    seconds_run = min(float(r["seconds"]) for r in reports)
    return E2EResult(
        seconds=seconds_run,
        sent=sum(int(r["sent"]) for r in reports),
        received=sum(int(r["received"]) for r in reports),
        fps=sum(entry["fps"] for entry in per_stream),
        latency_p50_ms=float(p50),
        latency_p99_ms=float(p99),
        latency_max_ms=float(worst),
        feed_fps=feed_fps,
        server=server,
        size=width,
        backend=backend.name,
        streams=streams,
        per_stream=tuple(per_stream),
    )


def format_e2e(result: E2EResult) -> str:
    server = result.server
    pairs = f"{result.streams} NDI pairs, each " if result.streams > 1 else ""
    lines = [
        f"end to end, NDI in -> serve -> NDI out over loopback, {result.size}x{result.size}, "
        f"{pairs}fed at {result.feed_fps:g} fps for {result.seconds:.1f} s ({result.backend}):",
        f"  {result.fps:.1f} frames/s came back ({result.received} of {result.sent} sent; "
        "the rest were dropped as newer frames arrived)",
        f"  frame latency p50 {result.latency_p50_ms:.2f} ms, p99 {result.latency_p99_ms:.2f} ms, "
        f"max {result.latency_max_ms:.2f} ms (send -> receive, every frame that came back)",
    ]
    if result.streams > 1:
        lines.extend(
            f"  stream {k}: {entry['fps']:.1f} frames/s, latency p50 "
            f"{entry['latency_p50_ms']:.2f} ms, p99 {entry['latency_p99_ms']:.2f} ms"
            for k, entry in enumerate(result.per_stream)
        )
    if server:
        lines.append(
            f"  server: step p50 {server['step_p50_ms']:.2f} ms, out {server['output_fps']:.1f} "
            f"fps, {server['dropped']} dropped at its input"
        )
    return "\n".join(lines)
