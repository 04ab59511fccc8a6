"""The status line on a terminal, sharing it with the log.

On a terminal the status line is rewritten in place and has no newline; a log line written
meanwhile would start where the status ends (``... torch-cpu float3207:55:25 INFO ...``).
:class:`StatusLine` reroutes the logging handlers that write to its terminal through itself
while it is up, so log lines go above it and it is drawn again under them.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TextIO

__all__ = ["StatusLine"]

_CLEAR_LINE = "\r\x1b[2K"  # back to the start of the line, and erase it


class _AroundStatus:
    """What a log handler writes to instead of the terminal while the status line is up."""

    def __init__(self, line: StatusLine) -> None:
        self._line = line

    def write(self, text: str) -> int:
        self._line.write_log(text)
        return len(text)

    def flush(self) -> None:
        self._line.flush()


class StatusLine:
    """One line, rewritten in place on a terminal; plain lines when logging to a file/pipe.

    While the line is up, every logging handler that writes to this terminal goes through it
    instead: the status is erased, the log line written, and the status drawn again under it.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._lock = threading.Lock()
        self._text = ""  # what the terminal's status line shows now
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []
        if self._tty:
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                    self._handlers.append((handler, handler.setStream(_AroundStatus(self))))

    def show(self, text: str) -> None:
        with self._lock:
            if self._tty:
                self._stream.write(_CLEAR_LINE + text)
                self._text = text
            else:
                self._stream.write(text + "\n")
            self._stream.flush()

    def write_log(self, text: str) -> None:
        with self._lock:
            if self._text:
                self._stream.write(_CLEAR_LINE)
            self._stream.write(text)
            if self._text and text.endswith("\n"):
                self._stream.write(self._text)

    def flush(self) -> None:
        self._stream.flush()

    def finish(self) -> None:
        """Leave the last status on its own line and give the terminal back to the log."""
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []
        with self._lock:
            if self._tty and self._text:
                self._stream.write("\n")
                self._stream.flush()
            self._text = ""
