"""Spout through the engine's threads with the real SpoutGL (Windows only; never run on the
project's Linux machines, where ``tests/integration/test_spout_engine.py`` runs the same
layout on the contract fake).

Spout shares textures through OpenGL/DirectX, so this needs a GPU driver and a desktop
session. Every party has its own thread, as in ``livediffusion serve``: an "application"
thread publishes a picture with a ``SpoutSink``; the engine (a tiny model on the CPU, in
bypass) receives it on its capture thread and sends on its publish thread; a "viewer"
thread reads the engine's output with a ``SpoutSource``. Everything is built on the main
thread, which makes no OpenGL context: each thread must make its own.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from livediffusion.control.controls import Controls, ControlStore
from livediffusion.run.engine import Engine
from livediffusion.tools.doctor import compare_pictures, quadrant_picture
from livediffusion_bridge import Frame, list_sources, open_sink, open_source

pytestmark = [
    pytest.mark.windows,
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform != "win32", reason="Spout needs Windows"),
]

BYPASS = Controls(bypass=True, smoothing=0.0, feedback=0.0, prompt_glide=0.0, seed_glide=0.0)


def test_a_picture_crosses_the_engine_threads_with_size_orientation_and_colours(
    make_tiny_backend: Callable[..., Any],
) -> None:
    pytest.importorskip("SpoutGL")
    tag = uuid.uuid4().hex[:8]
    app_name, out_name = f"ld-test-in-{tag}", f"ld-test-out-{tag}"
    sent = quadrant_picture(96, 128)  # not square: catches a width/height mix-up
    done = threading.Event()
    errors: list[BaseException] = []
    got: list[Frame] = []

    app = open_sink(f"spout://{app_name}")
    viewer = open_source(f"spout://{out_name}")
    engine = Engine(
        source=open_source(f"spout://{app_name}"),
        sink=open_sink(f"spout://{out_name}"),
        backend=make_tiny_backend(),
        controls=ControlStore(BYPASS),
    )

    def publish() -> None:
        try:
            while not done.is_set():
                app.publish(sent)
                done.wait(1 / 60)
        except Exception as exc:
            errors.append(exc)

    def watch() -> None:
        try:
            deadline = time.monotonic() + 60.0
            while not done.is_set() and time.monotonic() < deadline:
                frame = viewer.read(0.1)
                if frame is not None:
                    got.append(frame)
                    if len(got) >= 3:
                        return
        except Exception as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=publish, name="application", daemon=True),
        threading.Thread(target=watch, name="viewer", daemon=True),
    ]
    engine.start()
    try:
        for thread in threads:
            thread.start()
        threads[1].join(70.0)
        listed = {s.name for s in list_sources(timeout=1.0).of_kind("spout")}
    finally:
        done.set()
        threads[0].join(5.0)
        engine.stop()
        for party in (engine.source, engine.sink, viewer, app):
            party.close()  # on the main thread, after the threads that used them ended
    assert errors == [] and engine.errors == []
    assert {app_name, out_name} <= listed
    assert got, "no frame came back through the engine"
    for frame in got:
        assert frame.pixels.shape == sent.shape
        assert compare_pictures(sent, frame.pixels) is None
    assert not np.array_equal(got[-1].pixels, np.zeros_like(sent))
