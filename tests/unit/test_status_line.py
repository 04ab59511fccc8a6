"""The status line and the log share a terminal without running into each other."""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Iterator

import pytest

from livediffusion.run.terminal import StatusLine

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminal(io.StringIO):
    """A stream that says it is a terminal, and what a terminal would show for its bytes."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        """The lines a terminal shows: \\r goes back, ESC[2K erases the line."""
        lines = [""]
        column = 0
        for token in re.split(r"(\r|\n|\x1b\[2K)", self.getvalue()):
            if token == "\r":
                column = 0
            elif token == "\n":
                lines.append("")
                column = 0
            elif token == "\x1b[2K":
                lines[-1] = ""
            elif token:
                line = lines[-1]
                lines[-1] = line[:column] + token + line[column + len(token) :]
                column += len(token)
        return lines


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    stream = Terminal()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_log_lines_go_above_the_status_line(terminal: Terminal) -> None:
    """It showed `... torch-cpu float3207:55:25 INFO ...`: the log line started where the
    status line ended."""
    log = logging.getLogger("livediffusion.test")
    line = StatusLine(terminal)
    line.show("in 30.0 fps | out 0.1 fps | torch-cpu float32")
    log.warning("first")
    line.show("in 30.0 fps | out 0.2 fps | torch-cpu float32")
    log.warning("second")
    log.warning("third")
    line.finish()
    log.warning("after")  # the handler writes to the terminal itself again
    screen = terminal.screen()
    messages = [re.sub(r"^\d\d:\d\d:\d\d ", "", text) for text in screen]
    assert messages == [
        "WARNING livediffusion.test: first",
        "WARNING livediffusion.test: second",
        "WARNING livediffusion.test: third",
        "in 30.0 fps | out 0.2 fps | torch-cpu float32",
        "WARNING livediffusion.test: after",
        "",
    ]


def test_logging_from_other_threads_never_splits_a_line(terminal: Terminal) -> None:
    log = logging.getLogger("livediffusion.test")
    line = StatusLine(terminal)

    def chatter(name: str) -> None:
        for index in range(200):
            log.warning("%s %d", name, index)

    threads = [threading.Thread(target=chatter, args=(f"t{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for index in range(300):
        line.show(f"status {index}")
    for thread in threads:
        thread.join()
    line.finish()
    screen = [text for text in terminal.screen() if text]
    logged = [text for text in screen if "WARNING" in text]
    assert len(logged) == 600
    assert all(
        re.fullmatch(r"\d\d:\d\d:\d\d WARNING livediffusion\.test: t\d \d+", t) for t in logged
    )
    assert screen[-1] == "status 299"
    assert len(screen) == 601


def test_a_pipe_or_file_gets_plain_lines_and_no_escapes() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger().addHandler(handler)
    try:
        line = StatusLine(stream)
        line.show("status 1")
        logging.getLogger("livediffusion.test").warning("between")
        line.show("status 2")
        line.finish()
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue() == "status 1\nbetween\nstatus 2\n"
