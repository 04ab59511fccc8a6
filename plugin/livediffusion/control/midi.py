"""MIDI controllers in, the same control messages as OSC out.

A MIDI map (TOML, see ``docs/midi.md``) binds a controller's CCs and notes to control addresses.
Nothing here decides what a valid value is: :class:`MidiMapper` only turns a MIDI message into
``(address, args)`` tuples and :class:`MidiInput` hands them to the server's ``submit``,
which validates them with :func:`livediffusion.control.controls.parse_message` exactly as it
does OSC. Maps are checked against :data:`~livediffusion.control.controls.CONTROLS` when
they load, so a typo is a start-up error that names the file, the entry and the key, not a
silent dead fader mid-show.

mido and python-rtmidi are optional (``livediffusion[midi]``) and are imported only when a
port is opened or listed: loading, checking and describing maps needs neither.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport
    pass

from livediffusion.control.midi_map import MidiMapper, Source, Submit, _mappable, _num

__all__ = [
    "INSTALL_HINT",
    "Learner",
    "MidiError",
    "MidiInput",
    "MidiUnavailable",
    "find_port",
    "learn",
    "list_ports",
    "midi_command",
]

log = logging.getLogger(__name__)

INSTALL_HINT = 'MIDI needs mido and python-rtmidi: pip install "livediffusion[midi]"'

_LOG_FIRST = 10
_LOG_EVERY = 100


class MidiError(RuntimeError):
    """A MIDI port that cannot be found, listed or opened; the message says what there is."""


class MidiUnavailable(MidiError):
    """mido or python-rtmidi is not installed: MIDI is an optional extra."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


def _mido() -> Any:
    """mido with its backend loaded, or :class:`MidiUnavailable`.

    mido itself imports without rtmidi and fails only at the first port, with a bare
    ``No module named 'rtmidi'``; loading the backend here turns both into the install hint.
    """
    try:
        import mido

        mido.backend.load()  # rtmidi, unless MIDO_BACKEND names another
    except ImportError as exc:
        raise MidiUnavailable from exc
    return mido


ALSA_SEQUENCER = Path("/dev/snd/seq")


@contextmanager
def _native_stderr_caught() -> Iterator[list[str]]:
    """Catch what C libraries write straight to file descriptor 2 meanwhile.

    Without a sequencer ALSA prints ``ALSA lib seq_hw.c:466:(snd_seq_hw_open) open
    /dev/snd/seq failed ...`` itself before rtmidi raises, so the user saw a raw C line above
    our one-line error. Its lines are handed back (and logged at debug level); anything else
    written meanwhile (another thread's log line) is passed on to stderr afterwards.
    """
    lines: list[str] = []
    if not sys.platform.startswith("linux"):
        yield lines
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield lines
        return
    with tempfile.TemporaryFile() as caught:
        with suppress(Exception):
            sys.stderr.flush()
        os.dup2(caught.fileno(), 2)
        try:
            yield lines
        finally:
            with suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("ALSA lib "):
                    lines.append(line)
                    log.debug("%s", line)
                else:
                    with suppress(Exception):
                        sys.stderr.write(line + "\n")
            with suppress(Exception):
                sys.stderr.flush()


def _port_problem(exc: BaseException) -> str:
    """rtmidi's reason, and what it means where it means one thing."""
    if sys.platform.startswith("linux") and not ALSA_SEQUENCER.exists():
        return (
            f"{exc} (there is no ALSA sequencer here: {ALSA_SEQUENCER} is missing, so no "
            "MIDI device can be reached; load the snd-seq kernel module, or run where the "
            "controller is plugged in)"
        )
    return str(exc)


def _input_names(backend: Any) -> list[str]:
    try:
        with _native_stderr_caught():
            return [str(name) for name in backend.get_input_names()]
    except (OSError, RuntimeError) as exc:  # rtmidi: no ALSA sequencer, no CoreMIDI server ...
        raise MidiError(f"cannot list MIDI ports: {_port_problem(exc)}") from exc


def list_ports(*, backend: Any = None) -> list[str]:
    """The MIDI input ports there are now, as ``--midi`` takes them."""
    return _input_names(backend if backend is not None else _mido())


def _is_through(name: str) -> bool:
    # Linux always has "Midi Through Port-0": never the controller someone means by default
    return "midi through" in name.lower()


def find_port(wanted: str | None, available: Sequence[str]) -> str:
    """The one port ``wanted`` names: exact, else the only case-insensitive substring match.

    Port names carry numbers that change when a controller is replugged (ALSA's ``20:0``,
    Windows' ``1``), so ``--midi nano`` is how people will name them. None means the only
    port there is, leaving out Linux's MIDI Through.
    """
    listing = ", ".join(repr(name) for name in available) or "none (is the controller plugged in?)"
    if wanted is None:
        candidates = [name for name in available if not _is_through(name)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise MidiError(f"no MIDI input ports; available: {listing}")
        raise MidiError(f"several MIDI input ports; name one: {listing}")
    if wanted in available:
        return wanted
    matches = [name for name in available if wanted.lower() in name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MidiError(f"no MIDI input port matches {wanted!r}; available: {listing}")
    found = ", ".join(repr(name) for name in matches)
    raise MidiError(f"MIDI port {wanted!r} is ambiguous: it matches {found}; say more of it")


class _Complaints:
    """Logs the first few, then one in a hundred: a knob stuck on a bad mapping sends
    dozens of messages a second and must not bury the rest of the log."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0

    def __call__(self, detail: str, *, exc_info: bool = False) -> None:
        self.count += 1
        count = self.count
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            level = logging.ERROR if exc_info else logging.WARNING
            log.log(level, "MIDI %s (%d so far): %s", self.what, count, detail, exc_info=exc_info)


class MidiInput:
    """An open MIDI input whose messages are translated and submitted on rtmidi's thread.

    Nothing a message or the map can do stops it: ``submit`` rejecting a value
    (``ValueError``, ``ControlError`` among them) is counted in :attr:`rejected` and logged,
    any other exception in :attr:`failed`, and the next message is handled as usual.
    ``backend`` is anything with mido's ``get_input_names`` and ``open_input`` (tests).
    """

    def __init__(
        self,
        port: str | None,
        mapper: MidiMapper,
        submit: Submit,
        *,
        virtual: bool = False,
        backend: Any = None,
    ) -> None:
        self._mapper = mapper
        self._submit = submit
        self._rejected = _Complaints("message rejected")
        self._failed = _Complaints("message failed")
        self._close_lock = threading.Lock()
        self._closed = False
        self.received = 0
        backend = backend if backend is not None else _mido()
        if virtual:
            self.name = port or "livediffusion"
        else:
            self.name = find_port(port, _input_names(backend))
        try:
            # the callback may run at once, on rtmidi's thread: everything it uses is set above
            with _native_stderr_caught():
                self._port = backend.open_input(
                    self.name, virtual=virtual, callback=self._on_message
                )
        except (OSError, RuntimeError) as exc:
            kind = "create virtual MIDI port" if virtual else "open MIDI port"
            raise MidiError(f"cannot {kind} {self.name!r}: {_port_problem(exc)}") from exc
        log.info(
            "MIDI: %s %r with map %s",
            "virtual port" if virtual else "listening on",
            self.name,
            mapper.midi_map.name or mapper.midi_map.where,
        )

    @property
    def rejected(self) -> int:
        return self._rejected.count

    @property
    def failed(self) -> int:
        return self._failed.count

    @property
    def closed(self) -> bool:
        return self._closed

    def _on_message(self, message: Any) -> None:
        if self._closed:
            return
        self.received += 1
        try:
            sent = self._mapper.translate(message)
        except Exception as exc:
            self._failed(f"translating {message!r}: {exc}", exc_info=True)
            return
        for address, args in sent:
            try:
                self._submit(address, args)
            except ValueError as exc:
                self._rejected(f"{address} {args!r}: {exc}")
            except Exception as exc:
                self._failed(f"{address} {args!r}: {exc}", exc_info=True)

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._port.close()  # mido drops the callback before it closes the port

    def __enter__(self) -> MidiInput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- learning ---------------------------------------------------------------------------------


class Learner:
    """Turns the first message from each CC or note into a ``[[control]]`` stanza to paste."""

    def __init__(self) -> None:
        self._seen: set[tuple[Source, int, int]] = set()

    def feed(self, message: Any) -> str | None:
        kind = getattr(message, "type", None)
        source: Source
        if kind == "control_change":
            source, number, level = "cc", int(message.control), int(message.value)
        elif kind == "note_on" and message.velocity > 0:
            source, number, level = "note", int(message.note), int(message.velocity)
        else:
            return None  # releases, clock, sysex: nothing to bind
        channel = int(message.channel) + 1
        key = (source, number, channel)
        if key in self._seen:
            return None
        self._seen.add(key)
        hint = (
            ""
            if source == "cc"
            else '# a button: "/bypass" toggles; "/preset/recall" with value = N recalls N\n'
        )
        return (
            "[[control]]\n"
            f"{source} = {number}\n"
            f"channel = {channel}\n"
            'address = "/strength"  # placeholder: the control this should drive\n'
            f'label = "{source} {number}"\n'
            f"# value {level}\n"
            f"{hint}"
            "\n"
        )


def learn(
    port: str | None,
    *,
    seconds: float | None,
    out: TextIO,
    backend: Any = None,
    stop: threading.Event | None = None,
) -> int:
    """Print a stanza for every new CC/note on ``port`` until ``seconds`` (None: Ctrl-C).

    Returns how many distinct controls were seen. Polls rather than using a callback so that
    Ctrl-C lands in this thread and the port is closed on the way out.
    """
    backend = backend if backend is not None else _mido()
    name = find_port(port, _input_names(backend))
    try:
        with _native_stderr_caught():
            opened = backend.open_input(name)
    except (OSError, RuntimeError) as exc:
        raise MidiError(f"cannot open MIDI port {name!r}: {_port_problem(exc)}") from exc
    learner = Learner()
    found = 0
    deadline = None if seconds is None else time.monotonic() + seconds
    until = "Ctrl-C" if seconds is None else f"{_num(seconds)} s"
    out.write(
        f"# listening on {name!r} until {until}: move each knob, fader and button\n"
        f"# addresses: {', '.join(_mappable())}\n\n"
    )
    out.flush()
    try:
        while deadline is None or time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            message = opened.poll()
            if message is None:
                time.sleep(0.005)
                continue
            stanza = learner.feed(message)
            if stanza is not None:
                found += 1
                out.write(stanza)
                out.flush()
    finally:
        opened.close()
    return found


# --- the command line and the docs -----------------------------------------------------------


def midi_command(*, list_ports: bool, learn: bool, port: str | None, seconds: float | None) -> int:
    """``livediffusion midi --list | --learn [--port P] [--seconds S]``; no flag lists."""
    try:
        if list_ports or not learn:
            names = _input_names(_mido())
            for name in names:
                print(name)
            if not names:
                print("no MIDI input ports found", file=sys.stderr)
        if learn:
            _learn(port, seconds=seconds, out=sys.stdout)
    except MidiError as exc:
        print(f"livediffusion: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --learn without --seconds ends
    return 0


_learn = learn  # midi_command's flags shadow the function's name
