"""``livediffusion doctor`` without sockets: the report's shape, SKIP vs FAIL, the comparison.

The two checks that open NDI (the runtime and the round trip) are replaced by stubs here;
tests/integration/test_doctor.py runs them for real.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from livediffusion.config import ServeConfig
from livediffusion.tools import doctor
from livediffusion.tools.doctor import (
    CHECKS,
    Context,
    Outcome,
    compare_pictures,
    quadrant_picture,
    run_checks,
    run_doctor,
)

SOCKET_CHECKS = ("ndi", "ndi round trip")
LINE = re.compile(r"^(PASS|FAIL|SKIP)  (\S.*?)\s+\d+\.\d\d s  (.*)$")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="checks what this Linux machine lacks"
)


def _stubbed(context: Context) -> Outcome:
    return "PASS", "stubbed (no sockets in unit tests)"


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = tuple((name, _stubbed if name in SOCKET_CHECKS else c) for name, c in CHECKS)
    monkeypatch.setattr(doctor, "CHECKS", checks)


def report(config: ServeConfig) -> tuple[int, list[tuple[str, str, str]], str]:
    """Run doctor --quick; returns the exit code, (status, name, detail) rows and the summary."""
    stream = io.StringIO()
    code = run_doctor(config, quick=True, stream=stream)
    lines = stream.getvalue().splitlines()
    rows = [match.groups() for line in lines if (match := LINE.match(line))]
    return code, [(s, n.rstrip(), d) for s, n, d in rows], lines[-1]


def row(rows: list[tuple[str, str, str]], name: str) -> tuple[str, str]:
    (found,) = [(status, detail) for status, row_name, detail in rows if row_name == name]
    return found


def test_quick_report_has_a_line_per_check_in_order_and_a_true_summary() -> None:
    code, rows, summary = report(ServeConfig(weights="random", size=(64, 64)))
    assert [name for _, name, _ in rows] == [name for name, _ in doctor.CHECKS]
    match = SUMMARY.match(summary)
    assert match is not None, summary
    statuses = [status for status, _, _ in rows]
    counted = tuple(int(n) for n in match.groups())
    assert counted == (statuses.count("PASS"), statuses.count("FAIL"), statuses.count("SKIP"))
    assert code == (1 if "FAIL" in statuses else 0)


def test_header_names_versions_and_asks_for_the_whole_report() -> None:
    stream = io.StringIO()
    run_doctor(ServeConfig(), quick=True, stream=stream)
    head = stream.getvalue().splitlines()[:3]
    assert head[0].startswith("livediffusion ") and f"Python {sys.version.split()[0]}" in head[0]
    assert "--backend auto" in head[1]
    assert head[2] == "paste this whole report into bug reports"


@linux_only
def test_syphon_and_spout_skip_here_with_their_reasons() -> None:
    _, rows, _ = report(ServeConfig())
    assert row(rows, "syphon") == ("SKIP", "needs macOS")
    assert row(rows, "syphon round trip") == ("SKIP", "needs macOS")
    assert row(rows, "spout") == ("SKIP", "needs Windows")


COREML_ROWS = ("coreml convert", "coreml compile", "coreml load", "coreml frame vs torch")


def test_quick_loads_no_model() -> None:
    _, rows, _ = report(ServeConfig())
    assert row(rows, "torch one frame") == ("SKIP", "--quick: no model loaded")
    for name in COREML_ROWS:
        assert row(rows, name) == ("SKIP", "--quick: no model loaded")


def test_the_core_ml_path_is_one_row_per_step_in_order() -> None:
    names = [name for name, _ in CHECKS]
    start = names.index("coreml convert")
    assert tuple(names[start : start + 4]) == COREML_ROWS


@linux_only
def test_core_ml_steps_skip_here_with_the_reason_and_convert_named() -> None:
    rows = list(run_checks(Context(ServeConfig()), tuple(c for c in CHECKS if c[0] in COREML_ROWS)))
    assert [r.status for r in rows] == ["SKIP"] * 4
    assert all("needs macOS 14+" in r.detail and "livediffusion convert" in r.detail for r in rows)


@linux_only
def test_coreml_skips_when_not_asked_for() -> None:
    code, rows, summary = report(ServeConfig())
    status, detail = row(rows, "backend coreml")
    assert status == "SKIP" and "macOS" in detail
    assert row(rows, "backend choice") == ("PASS", "--backend auto picks torch here")
    assert row(rows, "backend torch")[0] == "PASS"
    assert code == 0 and " 0 failed" in summary


@linux_only
def test_coreml_fails_when_asked_for_on_linux() -> None:
    code, rows, summary = report(ServeConfig(backend="coreml"))
    status, detail = row(rows, "backend coreml")
    assert status == "FAIL" and "macOS" in detail
    assert row(rows, "backend torch")[0] == "PASS"  # still works, just not what was asked for
    assert code == 1 and " 1 failed" in summary


def test_a_check_that_raises_becomes_a_fail_and_the_report_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(context: Context) -> Outcome:
        raise RuntimeError("the library fell over\nwith a second line nobody needs")

    def fine(context: Context) -> Outcome:
        return "PASS", "fine"

    monkeypatch.setattr(doctor, "CHECKS", (("first", fine), ("broken", broken), ("after", fine)))
    code, rows, summary = report(ServeConfig())
    assert rows == [
        ("PASS", "first", "fine"),
        ("FAIL", "broken", "RuntimeError: the library fell over"),
        ("PASS", "after", "fine"),
    ]
    assert summary == "2 passed, 1 failed, 0 skipped"
    assert code == 1


def test_ctrl_c_is_not_swallowed_by_a_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(context: Context) -> Outcome:
        raise KeyboardInterrupt

    monkeypatch.setattr(doctor, "CHECKS", (("interrupted", interrupted),))
    with pytest.raises(KeyboardInterrupt):
        list(run_checks(Context(ServeConfig())))


def test_results_carry_their_time() -> None:
    (result,) = run_checks(Context(ServeConfig()), (("python", doctor.CHECKS[0][1]),))
    assert result.status == "PASS" and result.name == "python"
    assert result.detail.startswith(("CPython", "PyPy")) and result.seconds >= 0


# -- the round-trip comparison ----------------------------------------------------------------


def test_quadrant_picture_is_oriented() -> None:
    pixels = quadrant_picture(64, 96)
    assert pixels.shape == (64, 96, 4) and (pixels[..., 3] == 255).all()
    assert tuple(pixels[0, 0, :3]) == (220, 40, 40)  # red top-left
    assert tuple(pixels[0, -1, :3]) == (40, 220, 40)  # green top-right
    assert tuple(pixels[-1, 0, :3]) == (40, 40, 220)  # blue bottom-left
    assert tuple(pixels[-1, -1, :3]) == (220, 220, 220)


def test_comparison_accepts_the_picture_with_codec_noise() -> None:
    sent = quadrant_picture()
    noise = np.random.default_rng(0).integers(-12, 13, size=sent.shape)
    got = np.clip(sent.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    assert compare_pictures(sent, sent.copy()) is None
    assert compare_pictures(sent, got) is None


@pytest.mark.parametrize(
    ("transform", "words"),
    [
        (lambda p: p[::-1], "upside down"),
        (lambda p: p[:, ::-1], "mirrored left-right"),
        (lambda p: p[::-1, ::-1], "rotated 180 degrees"),
        (lambda p: p[..., (2, 1, 0, 3)], "red and blue swapped"),
        (lambda p: np.full_like(p, 128), "colours off by up to"),
    ],
)
def test_comparison_names_what_went_wrong(
    transform: Callable[[np.ndarray], np.ndarray], words: str
) -> None:
    sent = quadrant_picture()
    got = np.ascontiguousarray(transform(sent))
    problem = compare_pictures(sent, got)
    assert problem is not None and words in problem


def test_comparison_reports_a_wrong_size() -> None:
    sent = quadrant_picture(64, 64)
    assert compare_pictures(sent, quadrant_picture(32, 64)) == "sent 64x64, got 64x32"


def test_importing_doctor_loads_no_runtime() -> None:
    code = (
        "import sys, livediffusion.tools.doctor\n"
        "heavy = ('NDIlib', 'av', 'pythonosc', 'torch', 'coremltools', 'syphon', 'mido')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the Spout round trip (publish and capture on their own threads) --------------------------


@linux_only
def test_spout_round_trip_skips_here_with_its_reason() -> None:
    _, rows, _ = report(ServeConfig())
    assert row(rows, "spout round trip") == ("SKIP", "needs Windows")


def test_spout_round_trip_passes_on_the_spoutgl_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    import spoutgl_fake

    fake = spoutgl_fake.install(monkeypatch)
    monkeypatch.setattr(doctor, "_spout_unavailable", lambda: None)
    status, detail = doctor._check_spout_round_trip(Context(ServeConfig()))
    assert status == "PASS", detail
    assert "96x64" in detail and "own threads" in detail
    world = fake.world
    assert world.problems() == []  # every call had its thread's context; all were closed
    assert world.threads_of("receiveImage", "releaseReceiver") == {"doctor capture"}
    assert world.threads_of("sendImage", "releaseSender") == {"doctor publish"}


# -- the Syphon rows on a stubbed Mac (syphon-python's real Python, tests/syphon_native.py) ----


@pytest.fixture
def stubbed_mac(syphon_mac: Callable[..., object], monkeypatch: pytest.MonkeyPatch) -> None:
    import syphon_native
    from livediffusion_bridge import transports

    syphon_mac()
    syphon_native.pretend_macos(monkeypatch, doctor, transports)


def test_syphon_rows_pass_on_a_stubbed_mac(stubbed_mac: None) -> None:
    context = Context(ServeConfig())
    assert doctor._check_syphon(context) == ("PASS", "syphon-python 0.2.0; Metal: Stub GPU")
    status, detail = doctor._check_syphon_round_trip(context)
    assert status == "PASS", detail
    assert re.fullmatch(
        r"64x64 via syphon://livediffusion-doctor-\d+ in \d\.\d\d s: "
        r"size, orientation and colours kept",
        detail,
    ), detail
