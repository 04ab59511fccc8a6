"""LoRA styles and the ControlNet through the whole server: real OSC over UDP loopback, the
real loading path (``--weights`` a tiny diffusers folder, ``--lora`` files written the way the
tools write them, ``--controlnet tiny``), the memory transport in and out, on the CPU."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pythonosc.osc_message import OscMessage as Decoded
from pythonosc.osc_message_builder import OscMessageBuilder

from livediffusion.config import ServeConfig
from livediffusion.control.controls import Controls
from livediffusion.run.engine import Engine
from livediffusion.run.server import run_server
from livediffusion_bridge import memory
from livediffusion_models.lora import LoraRequest
from loopback import free_udp_port
from lorafiles import write_lora
from tinymodel import make_tiny_modules

pytestmark = pytest.mark.integration


def _dgram(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return bytes(builder.build().dgram)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two LoRAs for the tiny folder's model: one on the UNet and the text encoder
    (diffusers' format), one on the UNet only (kohya's)."""
    tiny = make_tiny_modules(0)  # what save_tiny_folder wrote: the same weights
    root = tmp_path_factory.mktemp("loras")
    both = write_lora(root / "ink", unet=tiny.unet, text_encoder=tiny.text_encoder, seed=1)
    unet_only = write_lora(root / "glow", unet=tiny.unet, fmt="kohya", seed=2)
    return both, unet_only


@dataclass
class Served:
    port: int
    reply: socket.socket
    stop: threading.Event
    engine: Engine
    thread: threading.Thread
    codes: list[int]
    presets: Path

    def send(self, address: str, *args: Any) -> None:
        self.reply.sendto(_dgram(address, *args), ("127.0.0.1", self.port))

    def ask_status(self) -> list[Any]:
        """Asked from a socket of its own: the answer, not an --osc-reply tick of before."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
            asker.bind(("127.0.0.1", 0))
            asker.settimeout(5)
            asker.sendto(_dgram("/status"), ("127.0.0.1", self.port))
            decoded = Decoded(asker.recv(65_535))
        assert decoded.address == "/status"
        return list(decoded.params)

    def frame(self) -> np.ndarray:
        """A frame made after everything sent so far was applied (two frames later)."""
        out = memory.channel("styled-out")
        time.sleep(0.3)
        count = out.published_count
        return out.wait_published(count + 2, timeout=30)[-1].pixels.astype(int)

    def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "never happened"
            time.sleep(0.02)


@pytest.fixture
def serve(tiny_folder: Path, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    memory.reset()
    feeding = threading.Event()
    picture = np.random.default_rng(0).integers(0, 256, (48, 64, 4), dtype=np.uint8)

    def feed() -> None:
        while not feeding.is_set():
            memory.channel("styled-in").push(picture)
            time.sleep(0.03)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    started: list[Served] = []

    def launch(**settings: Any) -> Served:
        reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        reply.bind(("127.0.0.1", 0))
        port = free_udp_port()
        config = ServeConfig(
            source="memory://styled-in",
            sink="memory://styled-out",
            weights=str(tiny_folder),
            backend="torch",
            device="cpu",
            compile="off",
            size=(64, 64),
            osc_port=port,
            osc_reply=("127.0.0.1", reply.getsockname()[1]),
            osc_echo=True,
            presets=str(tmp_path / "presets.json"),
            controls=Controls(feedback=0.0, smoothing=0.0, prompt_glide=0.0),
            status_interval=0.5,
        )
        config = replace(config, **settings)
        stop = threading.Event()
        codes: list[int] = []
        engines: list[Engine] = []
        thread = threading.Thread(
            target=lambda: codes.append(run_server(config, stop=stop, on_engine=engines.append)),
            daemon=True,
        )
        thread.start()
        out = memory.channel("styled-out")
        deadline = time.monotonic() + 90
        while not (engines and engines[0].warm and out.published_count > 0):
            assert thread.is_alive(), codes
            assert time.monotonic() < deadline, "the server never warmed up"
            time.sleep(0.05)
        served = Served(port, reply, stop, engines[0], thread, codes, Path(config.presets or ""))
        started.append(served)
        return served

    yield launch
    for served in started:
        served.stop.set()
        served.thread.join(15)
        served.reply.close()
        assert served.codes == [0]
    feeding.set()
    feeder.join(5)
    memory.reset()


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_a_lora_weight_over_osc_changes_the_next_frames_and_the_models_weights(
    serve: Callable[..., Served], lora_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    ink, glow = lora_files
    served = serve(lora=(LoraRequest(str(ink.parent), 1.0), LoraRequest(str(glow), 0.5)))
    backend = served.engine.backend
    assert backend.loras == ("ink", "style_kohya")
    assert backend.lora_weights == (1.0, 0.5)
    base = served.frame()
    assert _differs(served.frame(), base) < 0.01  # no feedback: the same state, the same frame

    served.send("/lora/0/weight", 0.0)  # the one on the text encoder too: prompts re-encoded
    served.until(lambda: backend.lora_weights == (0.0, 0.5))
    without = served.frame()
    assert _differs(without, base) > 0.2

    served.send("lora_1_on", 0)  # a TouchDesigner channel name; off keeps the weight
    served.until(lambda: backend.lora_weights == (0.0, 0.0))
    off = served.frame()
    assert _differs(off, without) > 0.05
    assert served.ask_status()[8] == "0 0"  # what the model runs at: off is 0, not its 0.5
    served.send("/lora/1/on", 1)
    served.until(lambda: backend.lora_weights == (0.0, 0.5))
    assert _differs(served.frame(), without) < 0.01  # the same look again (no feedback)

    # /status says the weights the model runs at, after the seven fields of before
    status = served.ask_status()
    assert status[6] == 0 and status[7] == pytest.approx(0.0) and status[8] == "0 0.5"

    # it glides like every value: on the way, the model runs at weights in between
    served.send("/glide", 1.0)
    served.send("/lora/0/weight", 1.0)
    seen: set[float] = set()
    deadline = time.monotonic() + 10
    while backend.lora_weights[0] != 1.0 and time.monotonic() < deadline:
        seen.add(backend.lora_weights[0])
        time.sleep(0.01)
    assert backend.lora_weights[0] == 1.0
    assert any(0.0 < weight < 1.0 for weight in seen), seen
    served.send("/glide", 0.0)

    # presets keep the LoRAs' values and a recall brings them back
    served.send("/lora/1/weight", 0.25)
    served.send("/lora/1/on", 0)
    served.until(lambda: served.engine.styles.snapshot()[1].on is False)
    served.send("/preset/save", 4)
    presets = served.presets
    served.until(lambda: presets.exists() and "4" in json.loads(presets.read_text())["presets"])
    saved = json.loads(presets.read_text())["presets"]["4"]["lora"]
    assert saved == [{"weight": 1.0, "on": True}, {"weight": 0.25, "on": False}]
    served.send("/lora/0/weight", 0.5)
    served.send("/lora/1/on", 1)
    served.until(lambda: backend.lora_weights == (0.5, 0.25))
    served.send("/preset/recall", 4)
    served.until(lambda: backend.lora_weights == (1.0, 0.0))

    # a LoRA that is not there: refused, logged, counted; frames keep coming
    caplog.set_level(logging.INFO)
    out = memory.channel("styled-out")
    before = out.published_count
    rejected = served.ask_status()[6]
    served.send("/lora/2/weight", 0.5)
    served.send("/lora/0/weight", 7.0)  # out of range
    served.until(lambda: served.ask_status()[6] == rejected + 2)
    assert out.wait_published(before + 3, timeout=30)
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "/lora/2/weight: N must be a LoRA's number, 0..1 in --lora order" in said
    assert "/lora/0/weight must be between 0 and 2, got 7" in said
    assert backend.lora_weights == (1.0, 0.0)


def test_controlnet_scale_steers_the_output_and_zero_is_no_controlnet(
    serve: Callable[..., Served],
) -> None:
    served = serve(controlnet="tiny")
    assert served.ask_status()[7] == pytest.approx(1.0)  # an unknown ControlNet starts at 1
    steered = served.frame()
    served.send("/controlnet/scale", 0)
    served.until(lambda: served.ask_status()[7] == 0.0)
    at_zero = served.frame()
    assert _differs(steered, at_zero) > 0.05
    served.send("/controlnet/scale", 2.5)  # out of range: nothing changes
    served.send("/controlnet/scale", 1.5)
    served.until(lambda: served.ask_status()[7] == pytest.approx(1.5))
    assert _differs(served.frame(), at_zero) > 0.05
    served.stop.set()
    served.thread.join(15)

    plain = serve()  # the same model, input and look, without a ControlNet
    assert plain.ask_status()[7] == 0.0 and plain.ask_status()[8] == ""
    assert _differs(plain.frame(), at_zero) < 0.01


@pytest.mark.parametrize("case", ["wrong base", "damaged", "missing"])
def test_a_bad_lora_stops_the_start_in_one_line_naming_it(
    case: str,
    tiny_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 and one line: a wrong base names both bases, a damaged file names the file,
    a missing one is said before the model loads."""
    from diffusers import UNet2DConditionModel

    import livediffusion_models.weights
    from livediffusion.cli import main

    tiny = make_tiny_modules(0)
    if case == "wrong base":
        config = {k: v for k, v in tiny.unet.config.items() if not k.startswith("_")}
        sd1 = UNet2DConditionModel.from_config({**config, "cross_attention_dim": 768})
        path = write_lora(tmp_path / "sd1", unet=sd1, fmt="kohya")
        says = ["for SD 1.x (768-wide cross-attention)", "32-wide cross-attention", "style_kohya"]
    elif case == "damaged":
        path = write_lora(tmp_path / "cut", unet=tiny.unet)
        path.write_bytes(path.read_bytes()[:300])
        says = ["damaged file", str(path)]
    else:
        path = tmp_path / "nowhere.safetensors"
        says = ["no such file or folder", "nowhere.safetensors"]

        def no_model(*args: object, **kwargs: object) -> None:
            raise AssertionError("the model loaded before the missing LoRA was said")

        monkeypatch.setattr(livediffusion_models.weights, "load_model", no_model)
    code = main(
        [
            "serve", "--source", "test://pattern", "--sink", "memory://bad-lora",
            "--weights", str(tiny_folder), "--device", "cpu", "--compile", "off",
            "--osc-port", str(free_udp_port()), "--lora", f"{path}:0.7",
        ]
    )  # fmt: skip
    assert code == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if "livediffusion: error" in line
    ]
    assert len(errors) == 1, errors
    assert all(fragment in errors[0] for fragment in says), errors[0]
    memory.reset()


def test_bench_times_a_lora_a_weight_change_and_a_controlnet_on_random_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``bench --weights tiny --lora random --controlnet tiny``: the rows beside the plain
    frame, with a LoRA made for the architecture and a ControlNet built from its UNet."""
    from livediffusion.cli import main

    report = tmp_path / "styles.json"
    code = main(
        [
            "bench", "--weights", "tiny", "--device", "cpu", "--compile", "off",
            "--size", "64", "--frames", "3", "--warmup", "1",
            "--lora", "random:0.7", "--controlnet", "tiny", "--json", str(report),
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    for row in ("frame, plain", "frame + ControlNet tiny", "frame + LoRA", "LoRA weight change"):
        assert row in out, out
    rows = {row["name"]: row for row in json.loads(report.read_text())["styles"]}
    assert len(rows) == 4 and all(row["ms_p50"] > 0 for row in rows.values())
    assert rows["frame + ControlNet tiny"]["share"] is not None
