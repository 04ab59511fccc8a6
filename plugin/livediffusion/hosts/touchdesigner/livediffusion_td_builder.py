"""Builds a ``livediffusion`` Base COMP in TouchDesigner: run this file in a Text DAT.

In TouchDesigner: add a Text DAT, set its File parameter to the path that
``livediffusion hosts --path touchdesigner`` prints (or paste this whole file into it), then
right-click it and choose Run Script. Next to the Text DAT appears ``livediffusion``: wire a
TOP into it, take the diffused picture from its output, and pulse Start. Right-click it and
Save Component .tox to keep it. examples/touchdesigner/README.md is the step-by-step guide.

Inside the COMP: the input goes out through a Syphon Spout Out TOP (macOS, Windows) or an NDI
Out TOP, the server's picture comes back through a Syphon Spout In TOP or an NDI In TOP to the
output; parameter changes leave through an OSC Out DAT, the server's ``/status`` arrives at an
OSC In DAT, and the extension ``LivediffusionExt`` starts and stops ``livediffusion serve``.

Everything between a ``# >>> NAME`` line and its ``# <<< NAME`` line is copied, as text, into
a DAT of the COMP, so that code runs inside TouchDesigner exactly as it is written (and
type-checked) here. Only the standard library and TouchDesigner's documented Python API are
used: ``COMP.create``, ``appendCustomPage`` and the ``Page.append*`` methods, ``par``,
``Connector.connect``, ``oscoutDAT.sendOSC``, extensions (Derivative's UserGuide pages
"COMP Class", "Page Class", "Par Class", "Connector Class", "Extensions", "OSC Out DAT",
"OSC In DAT", "NDI In TOP", "NDI Out TOP", "Parameter Execute DAT", "Execute DAT").
"""

# >>> extension
from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

if TYPE_CHECKING:
    ParValue = float | int | str | bool
    OscValue = float | int | str

    # The slice of TouchDesigner's Python API used here, as Derivative documents it. Inside
    # TouchDesigner these names are globals; this block only exists for the type checker.
    _O = TypeVar("_O", bound="OP")

    class Par(Protocol):  # "Par Class"
        name: str
        owner: COMP
        val: ParValue
        default: ParValue
        label: str
        min: float
        max: float
        normMin: float
        normMax: float
        clampMin: bool
        clampMax: bool
        readOnly: bool
        menuNames: Sequence[str]
        menuLabels: Sequence[str]

        def eval(self) -> ParValue: ...
        def pulse(self) -> None: ...

    class Pars(Protocol):  # OP.par: one attribute per parameter; assigning sets its value
        def __getattr__(self, name: str) -> Par: ...
        def __setattr__(self, name: str, value: ParValue | OP) -> None: ...

    class ParGroup(Protocol):  # what Page.append* returns: the parameters of one line
        def __getitem__(self, index: int) -> Par: ...

    class Page(Protocol):  # "Page Class": appendFloat(name, label=None, size=1, order=None, ...)
        def appendFloat(
            self, name: str, label: str | None = ..., size: int = ..., order: int | None = ...
        ) -> ParGroup: ...
        def appendInt(
            self, name: str, label: str | None = ..., size: int = ..., order: int | None = ...
        ) -> ParGroup: ...
        def appendStr(self, name: str, label: str | None = ...) -> ParGroup: ...
        def appendToggle(self, name: str, label: str | None = ...) -> ParGroup: ...
        def appendPulse(self, name: str, label: str | None = ...) -> ParGroup: ...
        def appendMenu(self, name: str, label: str | None = ...) -> ParGroup: ...

    class Connector(Protocol):  # "Connector Class"
        owner: OP
        connections: Sequence[Connector]

        def connect(self, target: OP | Connector) -> None: ...

    class OP(Protocol):  # "OP Class"
        name: str
        path: str
        par: Pars
        nodeX: int
        nodeY: int
        inputConnectors: Sequence[Connector]
        outputConnectors: Sequence[Connector]

        def parent(self, n: int = 1) -> COMP: ...
        def destroy(self) -> None: ...

    class TOP(OP, Protocol): ...

    class DAT(OP, Protocol):
        text: str

    class OscOutDAT(DAT, Protocol):  # "OSC Out DAT": sendOSC(address, values, ...)
        def sendOSC(self, address: str, values: Sequence[OscValue]) -> None: ...

    class Extensions(Protocol):  # COMP.ext.<class name>
        LivediffusionExt: LivediffusionExt

    class COMP(OP, Protocol):  # "COMP Class"
        ext: Extensions

        def create(self, optype: type[_O], name: str) -> _O: ...
        def op(self, path: str) -> OP | None: ...
        def appendCustomPage(self, name: str) -> Page: ...

    # Operator types, globals inside TouchDesigner (its `td` module), passed to COMP.create;
    # `me` is the DAT whose script runs. Bound here for the checkers only: this never runs.
    baseCOMP = cast("type[COMP]", None)
    inTOP = cast("type[TOP]", None)
    outTOP = cast("type[TOP]", None)
    switchTOP = cast("type[TOP]", None)
    syphonspoutoutTOP = cast("type[TOP]", None)
    syphonspoutinTOP = cast("type[TOP]", None)
    ndioutTOP = cast("type[TOP]", None)
    ndiinTOP = cast("type[TOP]", None)
    oscoutDAT = cast("type[OscOutDAT]", None)
    oscinDAT = cast("type[DAT]", None)
    textDAT = cast("type[DAT]", None)
    parameterexecuteDAT = cast("type[DAT]", None)
    executeDAT = cast("type[DAT]", None)
    me = cast("DAT", None)


def _text(value: ParValue) -> str:
    return str(value)


def _number(value: ParValue) -> float:
    return float(value)


def _whole(value: ParValue) -> int:
    return round(float(value))


def _switch(value: ParValue) -> int:
    return 1 if value in (True, 1, 1.0, "1", "on", "True") else 0  # 0/1: what every build sends


CONTROL_PARS: dict[str, tuple[str, Callable[[ParValue], OscValue]]] = {
    "Prompt": ("/prompt", _text),
    "Strength": ("/strength", _number),
    "Feedback": ("/feedback", _number),
    "Smoothing": ("/smoothing", _number),
    "Blend": ("/blend", _number),
    "Seed": ("/seed", _whole),
    "Bypass": ("/bypass", _switch),
}
"""Custom parameter -> the server's OSC address (``livediffusion osc``) and the OSC type."""

START_FLAGS = {name: "--" + name.lower() for name in CONTROL_PARS if name != "Bypass"}
"""The controls `serve` takes as flags too, so the server starts with the panel's look."""

STATUS_PARS = ("Infps", "Outfps", "Latency", "Dropped", "Model", "Backend")
"""Read-only parameters filled from ``/status in_fps out_fps latency_p50_ms dropped model
backend`` (types f f f i s s), in that order; fields the server adds after them are ignored."""

STOP_TIMEOUT = 5.0  # the server stops within 2 s of SIGTERM; then it is killed
POLL_FRAMES = 30  # how often (in frames) the Execute DAT checks whether the server exited


def _child(comp: COMP, name: str) -> OP:
    found = comp.op(name)
    if found is None:
        raise LookupError(f"{comp.path}/{name} is missing: build the component again")
    return found


def apply_settings(comp: COMP) -> None:
    """Point the operators inside ``comp`` at what its Server page says.

    Both transports exist side by side; the one not chosen is switched off (Syphon and Spout
    share one pair of TOPs: TouchDesigner picks Syphon on macOS and Spout on Windows).
    """
    p = comp.par
    ndi = p.Transport.eval() == "ndi"
    send_name = str(p.Sendername.eval())
    syphon_out, ndi_out = _child(comp, "syphonspout_out"), _child(comp, "ndi_out")
    _set(syphon_out.par.sendername, send_name)  # "Syphon Spout Out TOP": Sender Name
    if hasattr(syphon_out.par, "active"):  # Active: in public scripts, not on its doc page
        _set(syphon_out.par.active, not ndi)
    _set(ndi_out.par.name, send_name)  # "NDI Out TOP": Source Name `name`, Active `active`
    _set(ndi_out.par.active, ndi)
    _set(_child(comp, "ndi_in").par.active, ndi)  # "NDI In TOP": Active `active`
    pick_receivers(comp)
    _set(_child(comp, "picture").par.index, 1 if ndi else 0)
    osc_out = _child(comp, "osc_out")  # "OSC Out DAT": Network Address, Network Port
    _set(osc_out.par.address, str(p.Serverhost.eval()))
    _set(osc_out.par.port, int(p.Oscport.eval()))
    _set(_child(comp, "osc_in").par.port, int(p.Statusport.eval()))  # "OSC In DAT": Port


def _set(par: Par, value: ParValue) -> None:
    if par.eval() != value:  # an unchanged value is not written: no needless recooks
        par.val = value


def pick_receivers(comp: COMP) -> None:
    name = str(comp.par.Receivename.eval())
    _pick(_child(comp, "syphonspout_in").par.sendername, name)  # "Syphon Spout In TOP"
    _pick(_child(comp, "ndi_in").par.name, name)  # "NDI In TOP": Source Name `name`


def _pick(menu: Par, name: str) -> None:
    """Point a receiver at the entry of its source menu that is our server: NDI lists
    ``HOST (livediffusion)``, Syphon ``app:server`` or the server name (not checked); until
    the server is listed, the bare name."""
    entries = list(menu.menuNames)
    matches = [e for e in entries if e == name] + [
        e for e in entries if e != name and (e.endswith(f"({name})") or e.endswith(f":{name}"))
    ]
    if str(menu.eval()) not in matches:
        menu.val = matches[0] if matches else name


def _end(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Terminate (SIGTERM; TerminateProcess on Windows), kill after ``timeout`` s, reap."""
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LivediffusionExt:
    """Runs ``livediffusion serve`` for its COMP and speaks OSC with it.

    Promoted: ``Start()``, ``Stop()``, ``Command()``, ``Pid()``, ``Send(address, value)``.
    The server never outlives the COMP: deleting it, re-initialising the extension or quitting
    TouchDesigner stops it (``onDestroyTD``, and ``atexit`` for a quit).
    """

    def __init__(self, ownerComp: COMP) -> None:
        self.ownerComp = ownerComp
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = ""
        self._heard = False  # a /status arrived from the current process
        self._ended: list[int] = []  # exit codes the stop threads saw, for the status line

    # -- promoted ------------------------------------------------------------------------

    def Command(self) -> list[str]:
        """The ``livediffusion serve`` command line the Start pulse runs."""
        p = self.ownerComp.par
        executable = str(p.Executable.eval()).strip() or "livediffusion"
        send_name, receive_name = str(p.Sendername.eval()), str(p.Receivename.eval())
        if p.Transport.eval() == "ndi":
            scheme = "ndi"
        else:
            scheme = "syphon" if sys.platform == "darwin" else "spout"
        command = [
            executable, "serve",
            "--source", f"{scheme}://{send_name}", "--sink", f"{scheme}://{receive_name}",
            "--osc-host", "127.0.0.1", "--osc-port", str(int(p.Oscport.eval())),
            "--osc-reply", f"127.0.0.1:{int(p.Statusport.eval())}",
        ]  # fmt: skip
        prefix = self._prefix()
        if prefix:
            command += ["--osc-prefix", prefix]
        weights = str(p.Weights.eval()).strip()
        if weights:
            command += ["--weights", weights]
        for name, flag in START_FLAGS.items():
            command += [flag, str(CONTROL_PARS[name][1](getattr(p, name).eval()))]
        # last, so that its flags win over the ones above (argparse keeps the last value)
        command += shlex.split(str(p.Extraargs.eval()), posix=sys.platform != "win32")
        return command

    def Start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._status(f"running (pid {self._process.pid})")
            return
        command = self.Command()
        name = self.ownerComp.path.strip("/").replace("/", "_") or "livediffusion"
        self._log_path = os.path.join(tempfile.gettempdir(), f"livediffusion-td-{name}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for variable in ("PYTHONHOME", "PYTHONPATH"):  # TouchDesigner's, not the server's
            env.pop(variable, None)
        try:
            with open(self._log_path, "wb") as log:
                if sys.platform == "win32":
                    self._process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                        creationflags=subprocess.CREATE_NO_WINDOW,
                    )  # fmt: skip
                else:
                    self._process = subprocess.Popen(
                        command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
                    )
        except OSError as exc:
            self._process = None
            self._status(f"could not start {command[0]!r}: {exc}; set Executable")
            return
        atexit.register(self._stop_now)
        self._heard = False
        apply_settings(self.ownerComp)
        self._status(f"starting (pid {self._process.pid}); log: {self._log_path}")

    def Stop(self) -> None:
        """Stop without holding up TouchDesigner's frame: a thread waits for the exit."""
        process, self._process = self._process, None
        atexit.unregister(self._stop_now)
        if process is None:
            self._status("stopped")
            return
        self._status(f"stopping (pid {process.pid})")
        threading.Thread(
            target=lambda: self._ended.append(_end(process, STOP_TIMEOUT)), daemon=True
        ).start()

    def Pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def Send(self, address: str, value: OscValue) -> None:
        """Send one control (``/strength``, ...) under the Osc Prefix."""
        osc_out = cast("OscOutDAT", _child(self.ownerComp, "osc_out"))
        osc_out.sendOSC(self._prefix() + address, [value])

    # -- callbacks (parameter execute, OSC in, execute DATs) ------------------------------

    def OnParValueChange(self, par: Par, prev: ParValue) -> None:
        if par.name in CONTROL_PARS:
            address, convert = CONTROL_PARS[par.name]
            self.Send(address, convert(par.eval()))
        elif par.name not in STATUS_PARS and par.name != "Status":
            apply_settings(self.ownerComp)

    def OnParPulse(self, par: Par) -> None:
        if par.name == "Start":
            self.Start()
        elif par.name == "Stop":
            self.Stop()
        elif par.name == "Reset":
            self.Send("/reset", 1)

    def OnOSC(self, address: str, args: Sequence[OscValue]) -> None:
        """A message on the Status Port: ``/status`` fills the read-only parameters."""
        if address != self._prefix() + "/status" or len(args) < len(STATUS_PARS):
            return
        p = self.ownerComp.par
        for index, name in enumerate(STATUS_PARS):
            value = args[index]
            setattr(p, name, round(value, 2) if isinstance(value, float) else value)
        if self._process is not None and not self._heard:
            self._heard = True
            for name, (control, convert) in CONTROL_PARS.items():
                # sent before its OSC port opened, or with no start flag (Bypass)
                self.Send(control, convert(getattr(p, name).eval()))
        pick_receivers(self.ownerComp)  # the server's source may be in the menus now
        if self._process is not None:
            self._status(f"running (pid {self._process.pid})")

    def OnFrame(self, frame: int) -> None:
        if frame % POLL_FRAMES:
            return
        while self._ended:
            self._status(f"stopped (exit code {self._ended.pop()})")
        if self._process is not None and self._process.poll() is not None:
            code = self._process.returncode
            self._process = None
            atexit.unregister(self._stop_now)
            self._status(
                f"exited with code {code}: {self._last_log_line()} (log: {self._log_path})"
            )

    def onDestroyTD(self) -> None:
        """The COMP is deleted, the extension re-initialised or TouchDesigner quits."""
        self._stop_now()

    # -- internal --------------------------------------------------------------------------

    def _stop_now(self) -> None:
        process, self._process = self._process, None
        atexit.unregister(self._stop_now)
        if process is not None:
            _end(process, STOP_TIMEOUT)

    def _prefix(self) -> str:
        prefix = str(self.ownerComp.par.Oscprefix.eval()).strip().rstrip("/")
        return "/" + prefix.lstrip("/") if prefix else ""

    def _status(self, text: str) -> None:
        self.ownerComp.par.Status = text

    def _last_log_line(self) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as log:
                lines = [line.strip() for line in log if line.strip()]
        except OSError:
            return "no log"
        return lines[-1][:200] if lines else "no output"


# <<< extension

# >>> parameter callbacks
# The Parameter Execute DAT's callbacks ("Parameter Execute DAT": onValueChange(par, prev),
# onPulse(par)); `par.owner` is the livediffusion COMP, whose extension does the work.


def onValueChange(par: Par, prev: ParValue) -> None:
    par.owner.ext.LivediffusionExt.OnParValueChange(par, prev)


def onPulse(par: Par) -> None:
    par.owner.ext.LivediffusionExt.OnParPulse(par)


# <<< parameter callbacks

# >>> osc callbacks
# The OSC In DAT's callback, with the signature of TouchDesigner's callback template (some
# builds name the fourth argument `bytes`; TouchDesigner passes them in this order).


def onReceiveOSC(
    dat: DAT,
    rowIndex: int,
    message: str,
    byteData: bytes,
    timeStamp: float,
    address: str,
    args: Sequence[OscValue],
    peer: object,
) -> None:
    dat.parent().ext.LivediffusionExt.OnOSC(address, args)


# <<< osc callbacks

# >>> frame callbacks
# The Execute DAT's callback ("Execute DAT": onFrameStart(frame)): notices a server that exited.


def onFrameStart(frame: int) -> None:
    me.parent().ext.LivediffusionExt.OnFrame(frame)


# <<< frame callbacks


# -- the builder -------------------------------------------------------------------------------

COMP_NAME = "livediffusion"
EXTENSION_OBJECT = "op('./LivediffusionExt').module.LivediffusionExt(me)"  # "Extensions"
DEFAULTS: dict[
    str, ParValue
] = {  # the server's own defaults (livediffusion.control.controls.Controls)
    "Prompt": "a vivid oil painting, swirling colours, dramatic light",
    "Strength": 1.0,
    "Feedback": 0.1,
    "Smoothing": 0.4,
    "Blend": 0.0,
    "Seed": 42,
    "Bypass": False,
}
MAX_SEED = 2**31 - 1  # an Int parameter is 32-bit signed; the server takes up to 2**32 - 1


def section(source: str, name: str) -> str:
    """The code between this file's ``# >>> name`` and ``# <<< name`` lines."""
    begin, end = f"# >>> {name}\n", f"# <<< {name}\n"
    if begin not in source or end not in source:
        raise ValueError(
            f"the builder's text has no {name!r} section: load or paste the whole file "
            "(`livediffusion hosts --path touchdesigner` prints where it is)"
        )
    start = source.index(begin) + len(begin)
    return source[start : source.index(end, start)]


def default_executable(builder_file: str) -> str:
    """``livediffusion`` of the environment this file was installed into (the Text DAT's
    File parameter points there), else the one on PATH, else the bare name."""
    names = ("livediffusion.exe",) if sys.platform == "win32" else ("livediffusion",)
    folder = os.path.dirname(os.path.abspath(builder_file)) if builder_file else ""
    while folder and os.path.dirname(folder) != folder:
        for scripts in (
            "bin",
            "Scripts",
            os.path.join(".venv", "bin"),
            os.path.join(".venv", "Scripts"),
        ):
            for name in names:
                candidate = os.path.join(folder, scripts, name)
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    return candidate
        folder = os.path.dirname(folder)
    return shutil.which("livediffusion") or "livediffusion"


def _float(page: Page, name: str, label: str, low: float, high: float) -> Par:
    par = page.appendFloat(name, label=label)[0]
    par.min, par.max, par.normMin, par.normMax = low, high, low, high
    par.clampMin = par.clampMax = True  # the server drops values outside, it never clamps
    return par


def _add_parameters(comp: COMP, executable: str) -> None:
    look = comp.appendCustomPage("Livediffusion")
    look.appendStr("Prompt", label="Prompt")
    for name in ("Strength", "Feedback", "Smoothing", "Blend"):
        _float(look, name, name, 0.0, 1.0)
    seed = look.appendInt("Seed", label="Seed")[0]
    seed.min, seed.normMin, seed.normMax, seed.max = 0, 0, 1000, MAX_SEED
    seed.clampMin = seed.clampMax = True
    look.appendToggle("Bypass", label="Bypass")
    look.appendPulse("Reset", label="Reset (forget feedback)")
    look.appendPulse("Start", label="Start server")
    look.appendPulse("Stop", label="Stop server")
    for name, label in (("Status", "Status"), ("Model", "Model"), ("Backend", "Backend")):
        look.appendStr(name, label=label)[0].readOnly = True
    for name, label in (("Infps", "In FPS"), ("Outfps", "Out FPS"), ("Latency", "Latency ms")):
        look.appendFloat(name, label=label)[0].readOnly = True
    look.appendInt("Dropped", label="Dropped")[0].readOnly = True
    for name, value in DEFAULTS.items():
        par = getattr(comp.par, name)
        par.default = value
        par.val = value

    server = comp.appendCustomPage("Server")
    transport = server.appendMenu("Transport", label="Transport")[0]
    transport.menuNames = ["syphonspout", "ndi"]
    transport.menuLabels = ["Syphon (macOS) / Spout (Windows)", "NDI"]
    picked = "syphonspout" if sys.platform in ("darwin", "win32") else "ndi"
    strings = {
        "Transport": picked,
        "Sendername": "td_livediffusion",  # TouchDesigner's picture, the server's --source
        "Receivename": "livediffusion",  # the server's --sink, TouchDesigner's source
        "Executable": executable,
        "Weights": "",  # empty: the model's hub weights; `random`, `tiny` or a folder
        "Serverhost": "127.0.0.1",
        "Oscprefix": "",
        "Extraargs": "",
    }
    labels = {
        "Sendername": "Send Name",
        "Receivename": "Receive Name",
        "Serverhost": "Server Host",
        "Oscprefix": "OSC Prefix",
        "Extraargs": "Extra Arguments",
    }
    for name, value in strings.items():
        if name != "Transport":
            server.appendStr(name, label=labels.get(name, name))
        par = getattr(comp.par, name)
        par.default = value
        par.val = value
    for name, label, port in (("Oscport", "OSC Port", 9000), ("Statusport", "Status Port", 9001)):
        par = server.appendInt(name, label=label)[0]
        par.min, par.max, par.normMin, par.normMax = 1, 65535, 1024, 65535
        par.clampMin = par.clampMax = True
        par.default = par.val = port


def _text_dat(comp: COMP, name: str, text: str, x: int, y: int) -> DAT:
    dat = comp.create(textDAT, name)
    dat.text = text
    dat.nodeX, dat.nodeY = x, y
    return dat


def _add_network(comp: COMP, source: str) -> None:
    def place(operator: _O, x: int, y: int) -> _O:
        operator.nodeX, operator.nodeY = x, y
        return operator

    future = "from __future__ import annotations\n"
    _text_dat(comp, "LivediffusionExt", section(source, "extension"), -400, 200)
    parexec = place(comp.create(parameterexecuteDAT, "parameter_callbacks"), -400, 50)
    parexec.text = future + section(source, "parameter callbacks")
    p = parexec.par  # "Parameter Execute DAT": OPs, Parameters, Custom, Built-In, callbacks
    p.op, p.pars, p.custom, p.builtin, p.valuechange, p.onpulse = "..", "*", True, False, True, True
    p.active = True
    frames = place(comp.create(executeDAT, "frame_callbacks"), -400, -100)
    frames.text = future + section(source, "frame callbacks")
    frames.par.framestart = True  # "Execute DAT": Frame Start -> onFrameStart(frame)
    frames.par.active = True

    picture_in = place(comp.create(inTOP, "in1"), 0, 0)  # the COMP's input connector
    for name, optype, y in (
        ("syphonspout_out", syphonspoutoutTOP, 100),
        ("ndi_out", ndioutTOP, -100),
    ):
        sender = place(comp.create(optype, name), 200, y)
        picture_in.outputConnectors[0].connect(sender.inputConnectors[0])
    picture = place(comp.create(switchTOP, "picture"), 600, 0)  # "Switch TOP": Index
    for index, (name, optype, y) in enumerate(
        (("syphonspout_in", syphonspoutinTOP, 100), ("ndi_in", ndiinTOP, -100))
    ):
        receiver = place(comp.create(optype, name), 400, y)
        receiver.outputConnectors[0].connect(picture.inputConnectors[index])
    picture_out = place(comp.create(outTOP, "out1"), 800, 0)  # the COMP's output connector
    picture.outputConnectors[0].connect(picture_out.inputConnectors[0])

    osc_out = place(comp.create(oscoutDAT, "osc_out"), 0, -300)
    osc_out.par.protocol = "msging"  # "OSC Out DAT": Protocol Messaging (UDP)
    osc_out.par.active = True
    callbacks = _text_dat(
        comp, "osc_callbacks", future + section(source, "osc callbacks"), 200, -450
    )
    osc_in = place(comp.create(oscinDAT, "osc_in"), 200, -300)
    osc_in.par.callbacks = callbacks.name  # "OSC In DAT": Callbacks DAT
    osc_in.par.active = True


def build(builder: DAT) -> COMP:
    """Create the ``livediffusion`` COMP next to ``builder`` (the Text DAT running this)."""
    network = builder.parent()
    if network.op(COMP_NAME) is not None:
        raise RuntimeError(
            f"{network.path}/{COMP_NAME} exists already: delete or rename it, then run again"
        )
    comp = network.create(baseCOMP, COMP_NAME)
    comp.nodeX, comp.nodeY = builder.nodeX + 250, builder.nodeY
    _add_parameters(comp, default_executable(str(builder.par.file.eval())))
    _add_network(comp, builder.text)
    apply_settings(comp)
    comp.par.ext0object = EXTENSION_OBJECT  # "COMP Extensions Page": Object, Promote, Re-Init
    comp.par.ext0promote = True
    comp.par.reinitextensions.pulse()
    return comp


_builder: DAT | None
try:
    _builder = me
except NameError:
    _builder = None  # imported or run outside TouchDesigner: nothing to build
if _builder is not None:
    build(_builder)
