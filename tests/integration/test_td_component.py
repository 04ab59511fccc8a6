"""The built component's Start and Stop run a real ``livediffusion serve`` (tiny weights on the
CPU, test pattern in, memory out): its /status reaches the COMP, a parameter change reaches the
server (it echoes what it accepted), Stop ends the process, deleting the COMP ends it too."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import td_fake as td
from loopback import free_udp_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "plugin/livediffusion/hosts/touchdesigner/livediffusion_td_builder.py"
TEST_ARGS = (
    "--source test://pattern?size=64x64&fps=10 --sink memory://td --weights tiny "
    "--size 64 --device cpu --osc-echo"
)  # Extra Arguments come last, so these win over the transport's --source/--sink


def _executable() -> str:
    here = Path(sys.executable).with_name("livediffusion")
    found = str(here) if here.exists() else shutil.which("livediffusion")
    if found is None:
        pytest.skip("no livediffusion executable next to this Python or on PATH")
    return found


@pytest.fixture
def comp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[td.COMP]:
    # the server's log is <temp>/livediffusion-td-<COMP path>.log, one name for every test
    # (and every other run on this machine): two servers writing it at once leave NUL bytes
    # where the status expects serve's last line, so each test gets a temp folder of its own
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    project = td.new_project()
    builder = project.create(td.textDAT, "builder")
    assert isinstance(builder, td.DAT)
    builder.par.file = str(BUILDER)
    builder.text = BUILDER.read_text("utf-8")
    td.run_script(builder)
    built = project.op("livediffusion")
    assert isinstance(built, td.COMP)
    built.par.Executable = _executable()
    built.par.Oscport = free_udp_port()
    built.par.Statusport = free_udp_port()
    built.par.Extraargs = TEST_ARGS
    td.frame(built)
    yield built
    if built.valid:
        built.destroy()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _log(comp: td.COMP) -> str:
    ext = comp.extensions[0]
    path = Path(ext._log_path)
    return path.read_text("utf-8", "replace")[-3000:] if path.exists() else "(no log)"


def _start(comp: td.COMP) -> int:
    comp.par.Start.pulse()
    pid = comp.extensions[0].Pid()
    assert pid is not None and _alive(pid), comp.par.Status.eval()
    # /status arrives once a second from the moment the OSC server is up
    heard = td.frames_until(comp, lambda: comp.par.Status.eval().startswith("running"), 120)
    assert heard, f"{comp.par.Status.eval()}\n{_log(comp)}"
    return pid


def test_start_runs_the_server_and_stop_ends_it(comp: td.COMP) -> None:
    pid = _start(comp)
    assert comp.par.Backend.eval(), _log(comp)  # "starting" while loading, then the backend
    osc_in = comp.op("osc_in")
    assert isinstance(osc_in, td.oscinDAT)

    comp.par.Strength = 0.5
    comp.par.Bypass = True
    echoed = td.frames_until(
        comp,
        lambda: ("/strength", [0.5]) in osc_in.received and ("/bypass", [1]) in osc_in.received,
        10,
    )
    assert echoed, f"{osc_in.received[-10:]}\n{_log(comp)}"  # the server accepted both

    comp.par.Stop.pulse()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the stop thread terminates, waits and reaps
    assert not _alive(pid), _log(comp)
    stopped = td.frames_until(comp, lambda: comp.par.Status.eval().startswith("stopped"), 5)
    assert stopped, comp.par.Status.eval()
    assert comp.par.Status.eval() == "stopped (exit code 0)", _log(comp)
    assert comp.extensions[0].Pid() is None


def test_deleting_the_component_ends_the_server(comp: td.COMP) -> None:
    pid = _start(comp)
    comp.destroy()  # onDestroyTD: no orphan left behind
    assert not _alive(pid)


def test_a_server_that_cannot_start_is_reported(comp: td.COMP) -> None:
    comp.par.Extraargs = TEST_ARGS + " --size 65"  # not a multiple of 64: serve refuses
    comp.par.Start.pulse()
    ended = td.frames_until(comp, lambda: comp.par.Status.eval().startswith("exited"), 60)
    status = comp.par.Status.eval()
    assert ended, status
    assert "exited with code 2" in status and "--size" in status, status
    assert comp.extensions[0].Pid() is None
