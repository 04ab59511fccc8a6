"""``livediffusion doctor``: prove, on the user's own machine, that the platform paths work.

The report is what bug reports start from, so it is one table of checks (:data:`CHECKS`):
each row is a name and a function that returns PASS, FAIL or SKIP with one line of detail.
A check that raises becomes a FAIL with the exception's message, so one broken library never
hides the rest of the report. Later issues add rows; nothing else needs to change. Optional
runtimes (NDI, Syphon, Spout, PyAV, MIDI, torch, coremltools) are imported inside the checks
only, so a missing one is a line in the report, not a crash on import.
"""

from __future__ import annotations

import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import metadata
from importlib.util import find_spec
from typing import Any, Literal, TextIO

import numpy as np
import numpy.typing as npt

from livediffusion.backends import BACKENDS, choose_backend
from livediffusion.config import ServeConfig
from livediffusion_models.coreml import PSNR_PASS_DB

__all__ = [
    "CHECKS",
    "Check",
    "CheckResult",
    "Context",
    "compare_pictures",
    "quadrant_picture",
    "run_checks",
    "run_doctor",
]

Status = Literal["PASS", "FAIL", "SKIP"]
Outcome = tuple[Status, str]
Pixels = npt.NDArray[np.uint8]

ROUND_TRIP_TIMEOUT = 10.0
"""Seconds a round trip may take: loopback NDI delivers in well under one, Syphon discovery
may take a few."""
ROUND_TRIP_TOLERANCE = 24.0
"""Largest allowed difference of a quadrant's mean per channel: NDI is lossy (200 -> 188)."""
PROMPT = "a doctor's test"
NDI_HINT = 'pip install "livediffusion[ndi]"'
MAC_HINT = 'pip install "livediffusion[mac]"'


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report."""

    status: Status
    name: str
    detail: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Context:
    """What every check is given: the options the user ran doctor with, and a scratch pad
    where one step leaves what the next needs (the Core ML rows are one path in four steps)."""

    config: ServeConfig
    quick: bool = False
    scratch: dict[str, Any] = field(default_factory=dict)


Check = Callable[[Context], Outcome]


def _version(distribution: str) -> str | None:
    """An installed distribution's version, without importing it (torch takes seconds)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _import(*names: str) -> tuple[Any, ...]:
    """Import optional runtimes by name: a failure is the check's FAIL, with its message."""
    return tuple(importlib.import_module(name) for name in names)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else repr(exc)}"[:300]


def _rosetta() -> bool:
    """An x86_64 Python on Apple Silicon: MPS and Core ML are then out of reach."""
    if sys.platform != "darwin" or platform.machine() != "x86_64":
        return False
    with suppress(OSError, subprocess.SubprocessError):
        command = ["sysctl", "-in", "sysctl.proc_translated"]
        answer = subprocess.run(command, capture_output=True, text=True, timeout=5, check=False)
        return answer.stdout.strip() == "1"
    return False


def os_description() -> str:
    machine = platform.machine()
    if sys.platform == "darwin":
        rosetta = " under Rosetta (install an arm64 Python)" if _rosetta() else ""
        return f"macOS {platform.mac_ver()[0]} {machine}{rosetta}"
    if sys.platform == "win32":
        return f"Windows {platform.release()} ({platform.version()}) {machine}"
    name = platform.system()
    with suppress(OSError):
        name = platform.freedesktop_os_release().get("PRETTY_NAME", name)
    return f"{name} (kernel {platform.release()}) {machine}"


# -- 1, 2. Python and backends ---------------------------------------------------------------


def _check_python(context: Context) -> Outcome:
    found = [f"{platform.python_implementation()} {platform.python_version()}"]
    found += (f"{name} {_version(name) or 'missing'}" for name in ("numpy", "torch", "diffusers"))
    return "PASS", ", ".join(found)


def _torch_found(config: ServeConfig) -> str:
    import torch

    from livediffusion_models.backends.torch_backend import resolve_device

    devices = [
        f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
    ]
    if torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    found = f"torch {torch.__version__}; devices: {', '.join(devices)}"
    with suppress(RuntimeError, ValueError):  # an absent --device is the check's own sentence
        found += f"; --device {config.device} -> {resolve_device(config.device)}"
    return found


def _coreml_found(config: ServeConfig) -> str:
    from livediffusion_models.coreml import coremltools_version, runtime_available

    runtime = "available" if runtime_available() else "not available"
    return f"coremltools {coremltools_version() or 'missing'}; Core ML runtime {runtime}"


_FOUND: Mapping[str, Callable[[ServeConfig], str]] = {
    "torch": _torch_found,
    "coreml": _coreml_found,
}
"""What a backend reports about itself; a backend without a row shows its description."""


def _backend_check(name: str) -> Check:
    """A row per backend: FAIL only for the one this config would run, SKIP for the others."""

    def check(context: Context) -> Outcome:
        config, describe = context.config, _FOUND.get(name)
        try:
            BACKENDS[name].check(config)
        except Exception as exc:
            status: Status = "FAIL" if name == choose_backend(config.backend) else "SKIP"
            found = ""
            with suppress(Exception):  # the sentence matters, what was found is a bonus
                found = f" ({describe(config)})" if describe else ""
            return status, f"{str(exc).strip().splitlines()[0]}{found}"
        return "PASS", describe(config) if describe else BACKENDS[name].description

    return check


def _check_backend_choice(context: Context) -> Outcome:
    requested, auto = context.config.backend, choose_backend("auto")
    if requested == "auto":
        return "PASS", f"--backend auto picks {auto} here"
    return "PASS", f"--backend {choose_backend(requested)} requested; auto would pick {auto}"


# -- 3. Transports importable ----------------------------------------------------------------


def _check_ndi(context: Context) -> Outcome:
    if find_spec("NDIlib") is None:
        # NDI is the default transport off macOS; on a Mac Syphon is, and NDI is optional.
        return ("SKIP" if sys.platform == "darwin" else "FAIL"), f"not installed: {NDI_HINT}"
    from livediffusion_bridge import BackendUnavailableError, check_transport

    try:
        check_transport("ndi")  # the version check the NDI transport makes when it opens
    except BackendUnavailableError as exc:
        return "FAIL", str(exc)
    (ndi,) = _import("NDIlib")
    if not ndi.initialize():
        cpu = "" if ndi.is_supported_CPU() else " (this CPU is not supported by NDI)"
        return "FAIL", f"NDIlib.initialize() failed{cpu}"
    return "PASS", f"ndi-python {_version('ndi-python')}, {ndi.version()}"


def _check_syphon(context: Context) -> Outcome:
    if sys.platform != "darwin":
        return "SKIP", "needs macOS"
    if find_spec("syphon") is None:
        return "FAIL", f"syphon-python is not installed: {MAC_HINT}"
    metal, _, _ = _import("Metal", "syphon", "syphon.utils.numpy")
    device = metal.MTLCreateSystemDefaultDevice()
    gpu = device.name() if device is not None else "no Metal device"
    return "PASS", f"syphon-python {_version('syphon-python')}; Metal: {gpu}"


def _check_spout(context: Context) -> Outcome:
    if sys.platform != "win32":
        return "SKIP", "needs Windows"
    if find_spec("SpoutGL") is None:
        return "SKIP", 'optional, not installed: pip install "livediffusion[windows]"'
    _import("SpoutGL")
    return "PASS", f"SpoutGL {_version('spoutgl') or '?'}"


def _check_pyav(context: Context) -> Outcome:
    _import("av")
    return "PASS", f"PyAV {_version('av')} (file:// sources)"


def _check_osc(context: Context) -> Outcome:
    _import("pythonosc.dispatcher", "pythonosc.osc_server")
    return "PASS", f"python-osc {_version('python-osc')}"


def _check_midi(context: Context) -> Outcome:
    missing = " and ".join(name for name in ("mido", "rtmidi") if find_spec(name) is None)
    if missing:
        return "SKIP", f'optional, {missing} missing: pip install "livediffusion[midi]"'
    _import("mido", "rtmidi")
    from livediffusion.control import midi

    versions = f"mido {_version('mido')}, python-rtmidi {_version('python-rtmidi')}"
    # Importing says little: the ports must be listable, or no controller can be opened.
    try:
        ports = midi.list_ports()
    except midi.MidiError as exc:
        if sys.platform.startswith("linux") and not midi.ALSA_SEQUENCER.exists():
            # No sequencer device at all (a server, a container): MIDI cannot run here,
            # as Syphon cannot off macOS. Where there is one, failing to list is a fault.
            return "SKIP", f"{versions}; {exc}"
        return "FAIL", f"{versions}; {exc}"
    listed = ", ".join(repr(name) for name in ports) if ports else "none plugged in"
    return "PASS", f"{versions}; {len(ports)} input ports: {listed}"


# -- 4, 5. Round trips -----------------------------------------------------------------------

QUADRANTS = ((220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 220))
"""Top-left red, top-right green, bottom-left blue, bottom-right white: every flip, mirror and
red/blue swap changes at least one quadrant's colour."""


def quadrant_picture(height: int = 64, width: int = 64) -> Pixels:
    """An opaque RGBA picture of four coloured quadrants, whose orientation can be read back."""
    pixels = np.empty((height, width, 4), dtype=np.uint8)
    top, left = height // 2, width // 2
    pixels[:top, :left, :3], pixels[:top, left:, :3] = QUADRANTS[0], QUADRANTS[1]
    pixels[top:, :left, :3], pixels[top:, left:, :3] = QUADRANTS[2], QUADRANTS[3]
    pixels[..., 3] = 255
    return pixels


def _quadrant_means(pixels: Pixels) -> npt.NDArray[np.float64]:
    """Each quadrant's mean RGB over its middle half, away from edges a lossy codec blurs."""
    h, w = pixels.shape[0] // 2, pixels.shape[1] // 2
    rgb = pixels[..., :3].astype(np.float64)
    boxes = [
        rgb[y + h // 4 : y + h - h // 4, x + w // 4 : x + w - w // 4]
        for y in (0, h)
        for x in (0, w)
    ]
    return np.array([box.mean(axis=(0, 1)) for box in boxes])


def compare_pictures(
    sent: Pixels, got: Pixels, tolerance: float = ROUND_TRIP_TOLERANCE
) -> str | None:
    """``None`` if ``got`` is ``sent`` within ``tolerance``; else what is wrong, in words."""
    if got.shape[:2] != sent.shape[:2]:
        return f"sent {sent.shape[1]}x{sent.shape[0]}, got {got.shape[1]}x{got.shape[0]}"
    expected, received = _quadrant_means(sent), _quadrant_means(got)
    error = float(np.abs(received - expected).max())
    if error <= tolerance:
        return None
    suspects = {
        "upside down": sent[::-1],
        "mirrored left-right": sent[:, ::-1],
        "rotated 180 degrees": sent[::-1, ::-1],
        "with red and blue swapped (BGRA read as RGBA)": sent[..., (2, 1, 0, 3)],
    }
    for what, picture in suspects.items():
        if np.abs(received - _quadrant_means(picture)).max() <= tolerance:
            return f"the picture came back {what}"
    sent_rgb, got_rgb = expected.round().astype(int).tolist(), received.round().astype(int).tolist()
    return f"colours off by up to {error:.0f}: quadrants sent {sent_rgb}, got {got_rgb}"


def _round_trip(scheme: str, *, pump: bool) -> Outcome:
    """Publish the quadrants to a sink and read them back through a source in this process."""
    from livediffusion_bridge import open_sink, open_source, pump_events

    sent = quadrant_picture()
    name = f"livediffusion-doctor-{os.getpid()}"
    started = time.monotonic()
    with open_sink(f"{scheme}://{name}") as sink:
        sink.publish(sent)  # senders open at the first frame
        # NDI: straight to the sender's port, as discovery may answer for another process.
        target = sink.listen_address or name
        # A Syphon source never picks this process's own servers unless asked (own=1).
        own = "?own=1" if scheme == "syphon" else ""
        with open_source(f"{scheme}://{target}{own}") as source:
            frame = None
            while frame is None and time.monotonic() < started + ROUND_TRIP_TIMEOUT:
                sink.publish(sent)
                if pump:  # Syphon discovery travels through the main thread's run loop
                    pump_events(0.01)
                frame = source.read(0.05)
    uri = f"{scheme}://{target}"
    if frame is None:
        return "FAIL", f"nothing came back from {uri} within {ROUND_TRIP_TIMEOUT:g} s"
    problem = compare_pictures(sent, frame.pixels)
    if problem is not None:
        return "FAIL", f"{uri}: {problem}"
    seconds = frame.timestamp - started
    return "PASS", f"64x64 via {uri} in {seconds:.2f} s: size, orientation and colours kept"


def _check_ndi_round_trip(context: Context) -> Outcome:
    if find_spec("NDIlib") is None:
        return "SKIP", f"NDIlib is not installed: {NDI_HINT}"
    return _round_trip("ndi", pump=False)


def _check_syphon_round_trip(context: Context) -> Outcome:
    if sys.platform != "darwin":
        return "SKIP", "needs macOS"
    if find_spec("syphon") is None:
        return "SKIP", f"syphon-python is not installed: {MAC_HINT}"
    return _round_trip("syphon", pump=True)


SPOUT_HINT = 'pip install "livediffusion[windows]"'


def _spout_unavailable() -> str | None:
    """Why the Spout round trip cannot run here, or None."""
    if sys.platform != "win32":
        return "needs Windows"
    if find_spec("SpoutGL") is None:
        return f"SpoutGL is not installed: {SPOUT_HINT}"
    return None


def _check_spout_round_trip(context: Context) -> Outcome:
    why = _spout_unavailable()
    if why is not None:
        return "SKIP", why
    return _threaded_round_trip("spout")


def _threaded_round_trip(scheme: str) -> Outcome:
    """Like :func:`_round_trip`, but laid out as the engine is: source and sink built on this
    thread, the sink publishing on a thread of its own and the source reading on another.

    Spout needs an OpenGL context current on the thread that sends or receives, so a round
    trip on one thread would hide exactly what breaks in ``serve``. A non-square picture
    catches a width/height mix-up (SpoutGL's ``sendImage`` labels them the wrong way round).
    """
    import threading

    from livediffusion_bridge import Frame, open_sink, open_source

    sent = quadrant_picture(64, 96)
    uri = f"{scheme}://livediffusion-doctor-{os.getpid()}"
    done = threading.Event()
    frames: list[Frame] = []
    errors: list[BaseException] = []
    started = time.monotonic()
    sink = open_sink(uri)
    try:
        source = open_source(uri)
    except BaseException:
        sink.close()
        raise

    def publish() -> None:
        try:
            while not done.is_set():
                sink.publish(sent)
                done.wait(1 / 60)
        except Exception as exc:
            errors.append(exc)
            done.set()

    def capture() -> None:
        try:
            while not done.is_set() and time.monotonic() < started + ROUND_TRIP_TIMEOUT:
                frame = source.read(0.05)
                if frame is not None:
                    frames.append(frame)
                    break
        except Exception as exc:
            errors.append(exc)
        finally:
            done.set()

    threads = [
        threading.Thread(target=publish, name="doctor publish", daemon=True),
        threading.Thread(target=capture, name="doctor capture", daemon=True),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(ROUND_TRIP_TIMEOUT + 5.0)
    finally:
        done.set()
        source.close()  # here, after the threads ended: as the engine's owner does
        sink.close()
    if errors:
        return "FAIL", f"{uri}: {_one_line(errors[0])}"
    if not frames:
        return "FAIL", f"nothing came back from {uri} within {ROUND_TRIP_TIMEOUT:g} s"
    problem = compare_pictures(sent, frames[0].pixels)
    if problem is not None:
        return "FAIL", f"{uri}: {problem}"
    seconds = frames[0].timestamp - started
    return "PASS", (
        f"96x64 via {uri} in {seconds:.2f} s, publishing and reading on their own threads: "
        "size, orientation and colours kept"
    )


# -- 6, 7. One frame through the model -------------------------------------------------------


def _check_torch_frame(context: Context) -> Outcome:
    if context.quick:
        return "SKIP", "--quick: no model loaded"
    from livediffusion_models.backends import FrameParams
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    config, choice = context.config, BACKENDS["torch"]
    choice.check(config)
    spec = get_model(config.model)
    weights = config.weights or spec.hub_id
    dtype = choice.load_dtype(config)
    backend = choice.build(
        config, load_model(spec, weights, cache_dir=config.cache_dir, torch_dtype=dtype)
    )
    try:
        backend.set_prompt(backend.encode_prompt(PROMPT))
        height, width = backend.model_size
        pixels = quadrant_picture(height, width)
        out = np.empty_like(pixels)
        backend.step(pixels, FrameParams(), out=out)  # the first frame picks kernels: untimed
        started = time.perf_counter()
        backend.step(pixels, FrameParams(), out=out)
        ms = (time.perf_counter() - started) * 1000
    finally:
        backend.close()
    found = f"{backend.name}, {width}x{height}, {ms:.0f} ms per frame ({weights} weights)"
    if not (out[..., 3] == 255).all():
        return "FAIL", f"{found}: the output is not opaque"
    if float(out[..., :3].std()) == 0.0:
        return "FAIL", f"{found}: the output is one flat colour (NaN in the model?)"
    return "PASS", found


COREML_SIZE = (64, 64)
"""The tiny model's picture: the whole Core ML path in seconds, whatever model is configured."""


@dataclass
class _CoreMLRun:
    """What the Core ML rows hand on to the next: each row is one step, so a pasted report
    names the step that broke. The conversion goes to a temporary cache, so every run goes
    the whole way (convert, compile, load, frame) and leaves nothing behind."""

    cache: tempfile.TemporaryDirectory[str]
    model: Any  # LoadedModel of the tiny weights
    converted: Any = None  # ConvertedModel
    compiled: bool = False
    programs: Any = None  # {name: CompiledMLModel}


def _coreml_skip(context: Context) -> str | None:
    if context.quick:
        return "--quick: no model loaded"
    from livediffusion_models.coreml import runtime_available

    if not runtime_available():
        return f"needs macOS 14+ and coremltools ({MAC_HINT}); `livediffusion convert` works here"
    return None


def _coreml_run(context: Context, needs: str) -> _CoreMLRun | str:
    """The run so far, or why this row is skipped (no Core ML here, or a row above failed)."""
    why = _coreml_skip(context)
    if why is not None:
        return why
    run = context.scratch.get("coreml")
    if not isinstance(run, _CoreMLRun) or getattr(run, needs) in (None, False):
        return "the Core ML step above did not pass"
    return run


def _check_coreml_convert(context: Context) -> Outcome:
    why = _coreml_skip(context)
    if why is not None:
        return "SKIP", why
    from livediffusion_models.coreml.convert import convert
    from livediffusion_models.registry import get_model
    from livediffusion_models.weights import load_model

    config, settings = context.config, context.config.coreml
    spec = get_model(config.model)
    cache = tempfile.TemporaryDirectory(prefix="livediffusion-doctor-")
    run = _CoreMLRun(cache=cache, model=load_model(spec, "tiny", progress=False))
    context.scratch["coreml"] = run
    run.converted = convert(
        run.model,
        model=spec.name,
        fingerprint=run.model.fingerprint,
        size=COREML_SIZE,
        precision=settings.precision,
        target=settings.target,
        variant=settings.variant,
        stateful=settings.states,
        cache_dir=cache.name,
        compile=False,  # the next row's step
        progress=lambda message: None,
    )
    key = run.converted.key
    names = ", ".join(f"{name}.mlpackage" for name in run.converted.programs)
    state = " +states" if key.stateful else ""
    return "PASS", (
        f"tiny {spec.name} {COREML_SIZE[1]}x{COREML_SIZE[0]}, {key.variant} {key.precision} "
        f"{key.target}{state}: {names} (coremltools {key.coremltools})"
    )


def _check_coreml_compile(context: Context) -> Outcome:
    run = _coreml_run(context, "converted")
    if isinstance(run, str):
        return "SKIP", run
    from livediffusion_models.coreml.convert import compile_programs

    compile_programs(run.converted, progress=lambda message: None)
    missing = [p.compiled.name for p in run.converted.programs.values() if not p.compiled.is_dir()]
    if missing:
        return "FAIL", f"no compiled program at {', '.join(missing)} after compile_model"
    run.compiled = True
    names = ", ".join(p.compiled.name for p in run.converted.programs.values())
    return "PASS", f"{names} via coremltools' compile_model"


def _check_coreml_load(context: Context) -> Outcome:
    run = _coreml_run(context, "compiled")
    if isinstance(run, str):
        return "SKIP", run
    from livediffusion_models.coreml.runtime import load_programs, optimization_hints

    settings = context.config.coreml
    run.programs = load_programs(run.converted, settings=settings)
    hints = optimization_hints(settings)
    shown = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in (hints or {}).items())
    return "PASS", (
        f"{len(run.programs)} CompiledMLModel, compute units {settings.compute_units}, "
        f"optimization hints: {shown or 'none'}"
    )


def _check_coreml_frame(context: Context) -> Outcome:
    run = _coreml_run(context, "programs")
    if isinstance(run, str):
        return "SKIP", run
    from livediffusion_models.coreml.compare import compare_converted

    try:
        psnr: Mapping[str, float] = compare_converted(run.model, run.converted, run.programs)
    finally:
        run.programs = None
        run.cache.cleanup()
    values = ", ".join(f"{name} {value:.1f} dB" for name, value in psnr.items())
    low = ", ".join(name for name, value in psnr.items() if not value >= PSNR_PASS_DB)
    if low or not psnr:
        return "FAIL", f"PSNR below {PSNR_PASS_DB:g} dB for {low or 'every program'}: {values}"
    return "PASS", f"PSNR {values} against torch on the same weights and inputs (>= 35 dB)"


CHECKS: tuple[tuple[str, Check], ...] = (
    ("python", _check_python),
    *((f"backend {name}", _backend_check(name)) for name in BACKENDS),
    ("backend choice", _check_backend_choice),
    ("ndi", _check_ndi),
    ("syphon", _check_syphon),
    ("spout", _check_spout),
    ("pyav", _check_pyav),
    ("python-osc", _check_osc),
    ("midi", _check_midi),
    ("ndi round trip", _check_ndi_round_trip),
    ("syphon round trip", _check_syphon_round_trip),
    ("spout round trip", _check_spout_round_trip),
    ("torch one frame", _check_torch_frame),
    ("coreml convert", _check_coreml_convert),
    ("coreml compile", _check_coreml_compile),
    ("coreml load", _check_coreml_load),
    ("coreml frame vs torch", _check_coreml_frame),
)
"""The report's rows, in order. A new platform path is a new row here."""


def run_checks(
    context: Context, checks: tuple[tuple[str, Check], ...] | None = None
) -> Iterator[CheckResult]:
    """Run each check in turn (default: :data:`CHECKS`), yielding each result when known."""
    for name, check in CHECKS if checks is None else checks:
        started = time.perf_counter()
        try:
            status, detail = check(context)
        except Exception as exc:  # a check never takes the report down with it
            status, detail = "FAIL", _one_line(exc)
        yield CheckResult(status, name, detail, time.perf_counter() - started)


def header(config: ServeConfig) -> list[str]:
    """Who is reporting: versions, the OS, and the options the checks run with."""
    version = _version("livediffusion") or "unknown (not installed)"
    size = f"{config.size[1]}x{config.size[0]}" if config.size else "default"
    return [
        f"livediffusion {version}, Python {platform.python_version()}, {os_description()}",
        f"doctor: --model {config.model} --weights {config.weights or 'default'} --backend "
        f"{config.backend} --device {config.device} --dtype {config.dtype} --size {size}",
        "paste this whole report into bug reports",
        "",
    ]


def run_doctor(config: ServeConfig, *, quick: bool = False, stream: TextIO | None = None) -> int:
    """Print the report to ``stream`` (default: stdout); 0 if nothing FAILed, else 1."""
    out = sys.stdout if stream is None else stream  # looked up per call, so redirection works
    for line in header(config):
        print(line, file=out, flush=True)
    checks = CHECKS
    width = max((len(name) for name, _ in checks), default=0)
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for result in run_checks(Context(config, quick=quick), checks):
        counts[result.status] += 1
        line = f"{result.status}  {result.name:<{width}}  {result.seconds:6.2f} s  {result.detail}"
        print(line, file=out, flush=True)
    summary = f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
    print(f"\n{summary}", file=out, flush=True)
    return 1 if counts["FAIL"] else 0
