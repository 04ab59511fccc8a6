"""livediffusion in OBS Studio: runs the server, shows its controls, sends changes as OSC.

Add this file under Tools -> Scripts -> + (``livediffusion hosts --path obs`` prints where it
is). It starts ``livediffusion serve`` from the environment it was installed into, restarts it
when it dies, and stops it when the script is removed or OBS quits. OBS runs scripts in its
own Python, which may have no packages at all, so this file uses the standard library only
and encodes OSC by hand. The guide is examples/obs/README.md in the livediffusion repository.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Union

import obspython as obs

MODELS = ("sdxs-512-0.9", "sdxs-512-dreamshaper", "sd-turbo")
DEFAULT_PROMPT = "a vivid oil painting, swirling colours, dramatic light"

# The server's controls (livediffusion/controls.py; a test holds the two equal): setting,
# label, default, tooltip. Each setting is also its OSC address: "strength" -> /strength.
SLIDERS = (
    ("strength", "Strength", 1.0, "1 = full re-imagining, 0 = almost none (sd-turbo: ~0.5)"),
    ("feedback", "Feedback", 0.1, "share of the previous frame's latent"),
    ("smoothing", "Smoothing", 0.4, "share of the previous output (calms flicker)"),
    ("blend", "Blend", 0.0, "mix of the input picture into the output"),
)
SEED_MAX = 2**31 - 1  # an OBS int property is a C int; the server would take up to 2**32 - 1
LOOK = ("prompt", "strength", "feedback", "smoothing", "blend", "seed", "bypass")
SERVER = ("executable", "model", "source", "sink", "osc_port", "extra_args")

TICK_MS = 250
STATUS_EVERY_S = 1.0
REPLY_FRESH_S = 3.0  # a /status reply younger than this: the server is there
PROMPT_SETTLE_S = 0.6  # OBS reports every keystroke: send the prompt once typing pauses
STOP_TIMEOUT_S = 5.0  # SIGTERM, then kill; the server promises to stop within 2 s
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
STABLE_S = 30.0  # a server that ran this long before dying starts the backoff afresh
STARTUP_ERROR = 2  # livediffusion's exit code for a setting to fix: restarting cannot help
# Variables of OBS's embedded Python that would send a venv's python to the wrong home.
_FOREIGN_ENV = ("PYTHONHOME", "PYTHONPATH", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")


def default_endpoints(platform: str) -> tuple[str, str]:
    """The source and sink that suit OBS on ``platform`` (``sys.platform``)."""
    if platform == "darwin":  # OBS's own virtual camera in, a Syphon Client source out
        return "camera://OBS Virtual Camera", "syphon://livediffusion"
    if platform == "win32":  # obs-spout2-plugin: a Spout filter out of OBS, Spout2 Capture in
        return "spout://livediffusion-in", "spout://livediffusion"
    return "ndi://livediffusion-in", "ndi://livediffusion"  # DistroAV both ways


def find_executable(
    user_path: str, start: Path | None = None, *, windows: bool = os.name == "nt"
) -> tuple[str | None, str]:
    """(the ``livediffusion`` command or None, where it came from or where it was looked for).

    A path set by the user wins. Otherwise this file sits in an installed package
    (.../site-packages/livediffusion/hosts/obs/), so walk up to the environment's
    ``bin/livediffusion`` (``Scripts\\livediffusion.exe`` on Windows); a source checkout
    installed in editable mode has it in ``.venv`` beside the package. Last, PATH.
    """
    if user_path:
        path = Path(user_path).expanduser()
        if path.is_file():
            return str(path), "the path set below"
        return None, f"livediffusion not found at {path} (the path set below)"
    name = str(Path("Scripts", "livediffusion.exe") if windows else Path("bin", "livediffusion"))
    here = (start or Path(__file__)).resolve().parent
    for folder in (here, *here.parents):
        for candidate in (folder / name, folder / ".venv" / name):
            if candidate.is_file():
                return str(candidate), "the environment this script belongs to"
    found = shutil.which("livediffusion")
    if found:
        return found, "PATH"
    return None, (
        f"livediffusion not found: no {name} above {here}, none on PATH. "
        "Set 'livediffusion executable' below, or add the script from an installed package "
        "(`livediffusion hosts --path obs` prints where it is)"
    )


# --- OSC, by hand (1.0: int32 'i', float32 'f', padded strings 's') -----------------------

OscArg = Union[int, float, str]  # noqa: UP007  (run, not only read: OBS's Python may be 3.8)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (4 - len(data) % 4)  # NUL-terminated, to a multiple of 4


def osc_message(address: str, *args: OscArg) -> bytes:
    """One OSC message: ``osc_message("/strength", 0.5)``."""
    tags = ","
    payload = b""
    for arg in args:
        if isinstance(arg, bool) or not isinstance(arg, (int, float, str)):
            raise TypeError(f"OSC arguments here are int, float or str, got {arg!r}")
        if isinstance(arg, int):
            tags += "i"
            payload += struct.pack(">i", arg)
        elif isinstance(arg, float):
            tags += "f"
            payload += struct.pack(">f", arg)
        else:
            tags += "s"
            payload += _padded(arg.encode("utf-8"))
    return _padded(address.encode("utf-8")) + _padded(tags.encode("ascii")) + payload


def _string_at(data: bytes, at: int) -> tuple[str, int]:
    end = data.index(b"\0", at)  # ValueError if unterminated
    return data[at:end].decode("utf-8"), at + (end - at) // 4 * 4 + 4


def parse_osc(data: bytes) -> tuple[str, list[OscArg]]:
    """(address, arguments) of one OSC message; ValueError if it is not one."""
    try:
        address, at = _string_at(data, 0)
        tags, at = _string_at(data, at) if at < len(data) else (",", at)
        args: list[OscArg] = []
        for tag in tags[1:]:
            if tag == "i":
                args.append(struct.unpack_from(">i", data, at)[0])
                at += 4
            elif tag == "f":
                args.append(struct.unpack_from(">f", data, at)[0])
                at += 4
            elif tag == "s":
                text, at = _string_at(data, at)
                args.append(text)
            else:
                raise ValueError(f"OSC type {tag!r} is not read here")
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"not an OSC message: {exc}") from None
    if not address.startswith("/") or not tags.startswith(","):
        raise ValueError("not an OSC message")
    return address, args


# --- the server ----------------------------------------------------------------------------


def _last_words(log: Path) -> str:
    """The line of the server's log that says why it stopped."""
    try:
        with open(log, "rb") as file:
            file.seek(max(0, file.seek(0, os.SEEK_END) - 8192))
            lines = file.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in lines if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "Traceback" in line:
            return line[:300]
    return lines[-1][:300] if lines else "(the log is empty)"


def log_file(port: int) -> Path:
    """Where the server on ``port`` writes its output (a copy of the script per port)."""
    return Path(tempfile.gettempdir()) / f"livediffusion-obs-{port}.log"


def _child_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in _FOREIGN_ENV}


class Controller:
    """The script's state: one server process, one OSC socket, the last values sent.

    OBS calls in from its UI thread (settings, buttons) and its video thread (the timer), so
    every entry takes the lock; the timer skips a turn rather than wait.
    """

    def __init__(self, settings: object) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))  # /status answers come back here
        self.sock.setblocking(False)
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.started_at = 0.0
        self.started_with: dict[str, str] = {}
        self.wanted = False  # someone asked for a server; a death is then restarted
        self.failures = 0
        self.restart_at: float | None = None
        self.problem = ""
        self.look: dict[str, OscArg] = {}
        self.server: dict[str, str] = {}
        self.executable: tuple[str | None, str] = (None, "")
        self.prompt_due: float | None = None
        self.next_status = 0.0
        self.last_reply = -1e9
        self.reply: list[OscArg] = []
        self.shown = ""
        self.log_path = Path()  # set at each start: the log of that server

    # settings ---------------------------------------------------------------------------

    def read(self, settings: object) -> None:
        """Take the settings; send what changed in the look (the first call only reads)."""
        look: dict[str, OscArg] = {
            "prompt": str(obs.obs_data_get_string(settings, "prompt")),
            "seed": int(obs.obs_data_get_int(settings, "seed")),
            "bypass": int(bool(obs.obs_data_get_bool(settings, "bypass"))),
        }
        for key, *_ in SLIDERS:
            look[key] = float(obs.obs_data_get_double(settings, key))
        server = {
            key: str(obs.obs_data_get_string(settings, key)).strip()
            for key in SERVER
            if key != "osc_port"
        }
        server["osc_port"] = str(int(obs.obs_data_get_int(settings, "osc_port")))
        with self.lock:
            first = not self.look
            for key in LOOK:
                if first or look[key] == self.look[key]:
                    continue
                if key == "prompt":
                    self.prompt_due = time.monotonic() + PROMPT_SETTLE_S
                else:
                    self.send(key, look[key])
            self.look = look
            if first or server["executable"] != self.server["executable"]:
                self.executable = find_executable(server["executable"])
            self.server = server
            self.show_status()

    @property
    def port(self) -> int:
        """Where OSC goes: the running server's port, else the one set."""
        return int((self.started_with if self.proc is not None else self.server)["osc_port"])

    def send(self, key: str, value: OscArg) -> None:
        """``/key value``: a string for the prompt, ints for seed and bypass, else float."""
        if key != "prompt":
            value = int(value) if key in ("seed", "bypass") else float(value)
        self._send(osc_message("/" + key, value))

    def _send(self, datagram: bytes) -> None:
        # OSError: nothing there yet (Windows says so); the next tick asks again
        with contextlib.suppress(OSError):
            self.sock.sendto(datagram, ("127.0.0.1", self.port))

    def send_all(self) -> None:
        for key in LOOK:
            self.send(key, self.look[key])
        self.prompt_due = None

    # the process ------------------------------------------------------------------------

    def serve_command(self, executable: str) -> list[str]:
        look, server = self.look, self.server
        command = [executable, "serve"]
        for flag, key in (("--model", "model"), ("--source", "source"), ("--sink", "sink")):
            if server[key]:
                command += [flag, server[key]]
        command += ["--osc-port", server["osc_port"], "--prompt", str(look["prompt"])]
        command += ["--seed", str(look["seed"])]
        for key, *_ in SLIDERS:
            command += ["--" + key, f"{float(look[key]):.4g}"]
        windows = os.name == "nt"
        for word in shlex.split(server["extra_args"], posix=not windows):
            quoted = windows and len(word) > 1 and word[0] == word[-1] == '"'
            command.append(word[1:-1] if quoted else word)
        return command

    def start(self) -> None:
        """Start the server, or restart it with the current settings."""
        with self.lock:
            self.failures = 0
            self.restart_at = None
            self.problem = ""
            if self.proc is not None:
                self._end()
            elif self._connected():
                self.problem = (
                    f"a server that this script did not start answers on port {self.port}: "
                    "stop it, or set another OSC port"
                )
                self.show_status()
                return
            self.wanted = True
            self._launch()
            self.show_status()

    def _launch(self) -> None:
        self.executable = find_executable(self.server["executable"])
        executable, where = self.executable
        if executable is None:
            self.wanted = False
            self.problem = where
            return
        command = self.serve_command(executable)
        self.log_path = log_file(int(self.server["osc_port"]))
        flags = 0
        if sys.platform == "win32":
            flags = subprocess.CREATE_NO_WINDOW  # no console window beside OBS
        try:
            with open(self.log_path, "wb") as log:
                log.write(f"# {shlex.join(command)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                    creationflags=flags,
                )
        except (OSError, ValueError) as exc:
            self.wanted = False
            self.problem = f"could not start {executable}: {exc}"
            return
        self.command = command
        self.started_at = time.monotonic()
        self.started_with = dict(self.server)
        self.last_reply = -1e9
        self.reply = []
        print(f"livediffusion: started pid {self.proc.pid}: {shlex.join(command)}")

    def stop(self) -> None:
        with self.lock:
            self.wanted = False
            self.restart_at = None
            self.problem = ""
            self._end()
            self.show_status()

    def _end(self) -> None:
        """SIGTERM (on Windows: TerminateProcess), then kill if it lingers; always reaped."""
        proc, self.proc = self.proc, None
        self.last_reply = -1e9
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(f"livediffusion: pid {proc.pid} ended with code {proc.returncode}")

    def close(self) -> None:
        with self.lock:
            self.wanted = False
            self._end()
            self.sock.close()

    # the timer --------------------------------------------------------------------------

    def tick(self) -> None:
        if not self.lock.acquire(blocking=False):
            return  # a button or a setting is being handled: next time
        try:
            now = time.monotonic()
            self._watch(now)
            if self.prompt_due is not None and now >= self.prompt_due:
                self.send("prompt", self.look["prompt"])
                self.prompt_due = None
            if now >= self.next_status:
                self.next_status = now + STATUS_EVERY_S
                self._send(osc_message("/status"))
            self._receive(now)
            self.show_status()
        finally:
            self.lock.release()

    def _watch(self, now: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            self.proc = None
            self.last_reply = -1e9
            ran = now - self.started_at
            why = _last_words(self.log_path)
            code = proc.returncode
            print(f"livediffusion: pid {proc.pid} exited with code {code} after {ran:.0f} s")
            if code == STARTUP_ERROR:
                self.wanted = False
                self.problem = f"the server stopped at start-up: {why}"
            elif self.wanted:
                if ran >= STABLE_S:
                    self.failures = 0
                delay = BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)]
                self.failures += 1
                self.restart_at = now + delay
                self.problem = (
                    f"the server died (exit code {code}) after {ran:.0f} s: {why}; "
                    f"restart {self.failures} after {delay:g} s"
                )
        due = self.restart_at
        if self.proc is None and self.wanted and due is not None and now >= due:
            self.restart_at = None
            self._launch()

    def _connected(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self.last_reply < REPLY_FRESH_S

    def _receive(self, now: float) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:  # Windows: an earlier send found nobody
                continue
            except OSError:
                return
            try:
                address, args = parse_osc(data)
            except ValueError:
                continue
            if address == "/status" and len(args) >= 6:  # later fields go after the six
                fresh = not self._connected(now)
                self.reply = args
                self.last_reply = now
                if fresh:  # a new server, or one back: give it every current value
                    self.send_all()

    # what the properties show -----------------------------------------------------------

    def status_text(self) -> str:
        now = time.monotonic()
        lines = []
        pid = f"pid {self.proc.pid}" if self.proc is not None else ""
        if self._connected(now) and len(self.reply) >= 6:
            in_fps, out_fps, latency, dropped, model, backend = self.reply[:6]
            if backend == "starting":
                figures = f"loading {model}"
            else:
                figures = (
                    f"in {float(in_fps):.1f} fps, out {float(out_fps):.1f} fps, "
                    f"latency {float(latency):.0f} ms, dropped {dropped}, {model} on {backend}"
                )
            if self.proc is not None:
                lines.append(f"running ({pid}, OSC port {self.port}): {figures}")
            else:
                lines.append(
                    f"a server this script did not start answers on port {self.port}: {figures}"
                )
        elif self.proc is not None:
            lines.append(f"starting ({pid}, OSC port {self.port})")
        elif self.restart_at is not None:
            lines.append(f"restarting in {max(0.0, self.restart_at - now):.0f} s")
        else:
            lines.append("stopped")
        if self.problem:
            lines.append(self.problem)
        executable, where = self.executable
        if executable is None:
            if where != self.problem:
                lines.append(where)
        else:
            lines.append(f"server: {executable} (from {where})")
        if self.proc is not None and any(
            self.server.get(key) != self.started_with.get(key) for key in SERVER
        ):
            lines.append("server settings changed: press 'Start / restart server' to apply")
        log = self.log_path if self.command else log_file(self.port)
        lines.append(f"log: {log} (as of {time.strftime('%H:%M:%S')})")
        return "\n".join(lines)

    def show_status(self) -> None:
        text = self.status_text()
        if text != self.shown:
            self.shown = text
            obs.obs_data_set_string(self.settings, "status", text)


# --- what OBS calls ------------------------------------------------------------------------

_controller: Controller | None = None


def script_description() -> str:
    return (
        "<b>livediffusion</b>: live img2img diffusion on a video feed. This script runs "
        "<code>livediffusion serve</code> in the background, restarts it if it dies, and "
        "sends the controls below to it as OSC. Press <i>Refresh status</i> to see how it "
        "runs. Guide: examples/obs/README.md in the livediffusion repository."
    )


def script_defaults(settings: object) -> None:
    source, sink = default_endpoints(sys.platform)
    for key, value in (
        ("prompt", DEFAULT_PROMPT),
        ("model", MODELS[0]),
        ("source", source),
        ("sink", sink),
        ("extra_args", ""),
        ("executable", ""),
        ("status", "stopped"),
    ):
        obs.obs_data_set_default_string(settings, key, value)
    for key, _, default, _ in SLIDERS:
        obs.obs_data_set_default_double(settings, key, default)
    obs.obs_data_set_default_int(settings, "seed", 42)
    obs.obs_data_set_default_int(settings, "osc_port", 9000)
    obs.obs_data_set_default_bool(settings, "bypass", False)
    obs.obs_data_set_default_bool(settings, "autostart", True)


def script_properties() -> object:
    props = obs.obs_properties_create()
    obs.obs_properties_add_text(props, "status", "Status", obs.OBS_TEXT_INFO)
    obs.obs_properties_add_button(props, "start", "Start / restart server", _on_start)
    obs.obs_properties_add_button(props, "stop", "Stop server", _on_stop)
    obs.obs_properties_add_button(props, "refresh", "Refresh status", _on_refresh)

    obs.obs_properties_add_text(props, "prompt", "Prompt", obs.OBS_TEXT_DEFAULT)
    for key, label, _, tooltip in SLIDERS:
        slider = obs.obs_properties_add_float_slider(props, key, label, 0.0, 1.0, 0.01)
        obs.obs_property_set_long_description(slider, tooltip)
    seed = obs.obs_properties_add_int(props, "seed", "Seed", 0, SEED_MAX, 1)
    obs.obs_property_set_long_description(seed, "the noise; a new seed fades in")
    obs.obs_properties_add_bool(props, "bypass", "Bypass (show the input)")

    model = obs.obs_properties_add_list(
        props, "model", "Model", obs.OBS_COMBO_TYPE_EDITABLE, obs.OBS_COMBO_FORMAT_STRING
    )
    for name in MODELS:
        obs.obs_property_list_add_string(model, name, name)
    for key, label, tooltip in (
        ("source", "Source (into livediffusion)", "camera://NAME, ndi://NAME, spout://NAME, ..."),
        ("sink", "Sink (out of livediffusion)", "syphon://NAME, ndi://NAME, spout://NAME"),
        ("extra_args", "More serve flags", "e.g. --size 384 --device cuda (livediffusion serve"),
    ):
        text = obs.obs_properties_add_text(props, key, label, obs.OBS_TEXT_DEFAULT)
        obs.obs_property_set_long_description(text, tooltip)
    obs.obs_properties_add_int(props, "osc_port", "OSC port", 1, 65535, 1)
    path = obs.obs_properties_add_path(
        props, "executable", "livediffusion executable", obs.OBS_PATH_FILE, "", None
    )
    obs.obs_property_set_long_description(path, "empty: found beside this script, or on PATH")
    obs.obs_properties_add_bool(props, "autostart", "Start the server with OBS")
    return props


def script_load(settings: object) -> None:
    global _controller
    _controller = Controller(settings)
    _controller.read(settings)
    obs.timer_add(_tick, TICK_MS)
    atexit.register(_at_exit)  # OBS unloads scripts on quit; this is for when it does not
    if obs.obs_data_get_bool(settings, "autostart"):
        _controller.start()


def script_update(settings: object) -> None:
    if _controller is not None:
        _controller.read(settings)


def script_unload() -> None:
    global _controller
    obs.timer_remove(_tick)
    atexit.unregister(_at_exit)
    controller, _controller = _controller, None
    if controller is not None:
        controller.close()


def _tick() -> None:
    if _controller is not None:
        _controller.tick()


def _at_exit() -> None:
    if _controller is not None:
        _controller.close()


def _on_start(props: object, prop: object) -> bool:
    if _controller is not None:
        _controller.start()
    return True  # redraw: the status changed


def _on_stop(props: object, prop: object) -> bool:
    if _controller is not None:
        _controller.stop()
    return True


def _on_refresh(props: object, prop: object) -> bool:
    if _controller is not None:
        _controller.tick()
        _controller.show_status()
    return True
