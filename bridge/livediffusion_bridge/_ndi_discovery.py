"""Finding NDI senders: names and addresses, this process's own senders, finders that work
with several NDI programs on one machine, and ``livediffusion sources``' listing (see
:mod:`livediffusion_bridge._ndi` for why discovery works the way it does)."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._listing import SourceInfo
from ._ndi_runtime import _acquire, _ms, _release
from .errors import TransportError
from .uri import SourceURI

__all__ = ["Sender", "list_sources", "pick"]

LOOPBACK = "127.0.0.1"
EXTRA_IPS_ENV = "LIVEDIFFUSION_NDI_EXTRA_IPS"

LOOPBACK_ALIASES: tuple[str, ...] = (
    ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
    if sys.platform.startswith("linux")
    else ("127.0.0.1",)
)
"""Where a probe finder asks for this machine's senders. On Linux all of 127.0.0.0/8 is
this machine, and each address is a separate connection, so a separate draw of which NDI
process answers (elsewhere only 127.0.0.1 is sure to exist; there mDNS normally works)."""

_CHUNK = 0.1
"""Longest single wait inside NDI, so ``close()`` from another thread is never held up long."""
_ANSWER_WAIT = 1.0
"""How long a sender that discovery listed may take to accept the connection."""
_ANSWER_POLL = 0.05
"""How long ``_connect`` waits for that inside one attempt (a local sender takes ~5 ms)."""
_FORGET_AFTER = 3.0
"""How long a listed sender that did not answer is passed over (discovery may lag)."""
_LOST_AFTER = 0.5
"""How long a connection may show no sender before the source counts it lost."""
_PROBE_ROUND = 0.25
"""Lifetime of one probe finder while listing: its answer arrives in milliseconds."""
_PROBE_MIN_AGE = 0.2
"""A probe younger than this is kept rather than replaced: it may not have answered yet."""
_FINDER_MIN_LIFE = 0.1
"""NDI 6.3.2 aborts the whole process ("terminate called after throwing an instance of
'std::system_error'", from a discovery thread) when a finder asking more than one extra IP
is destroyed within about a millisecond of being created (measured: within a few hundred
create/destroy cycles; never with 1 ms between). So no finder is destroyed younger than
this; the rule costs at most this long at ``close()``."""
_SETTLE = 0.75
"""``list_sources`` stops early once the list has not changed for this long."""
_MESSAGING_PORT = 5960
"""NDI's shared per-machine discovery port: never a sender's own port."""

_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):(\d{1,5})$")
# -- names and addresses -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sender:
    """One sender as discovery (or this process) knows it. The field names are NDIlib's."""

    ndi_name: str
    url_address: str


def short_name(full: str) -> str:
    """``"HOST (NAME)"`` -> ``"NAME"``; other strings unchanged."""
    head, sep, tail = full.partition(" (")
    if sep and head and tail.endswith(")"):
        return tail[:-1]
    return full


def parse_address(target: str) -> str | None:
    """``"HOST:PORT"`` when ``target`` is a direct address rather than a sender name."""
    match = _ADDRESS.match(target)
    if match is None or not 0 < int(match.group(1)) < 65536:
        return None
    return target


def describe_target(target: str) -> str:
    """What a source waits for, in words: the status line shows it."""
    address = parse_address(target)
    if address is not None:
        return f"NDI sender at {address}"
    if target:
        return f"NDI sender {target!r}"
    return "any NDI sender (not our own)"


def pick(sources: list[Any], target: str) -> Any | None:
    """The source ``target`` names: exact full name, then the part in parentheses, then
    the same ignoring case; earlier entries win a tie. An empty target takes the first."""
    if not sources:
        return None
    if not target:
        return sources[0]
    folded = target.casefold()
    tests = (
        lambda full: full == target,
        lambda full: short_name(full) == target,
        lambda full: full.casefold() == folded,
        lambda full: short_name(full).casefold() == folded,
    )
    for test in tests:
        for source in sources:
            if test(str(source.ndi_name or "")):
                return source
    return None


def merge_ips(*lists: str) -> str:
    """Comma-separated IP lists joined in order, without blanks or repeats."""
    seen: list[str] = []
    for ip in (part.strip() for text in lists for part in text.split(",")):
        if ip and ip not in seen:
            seen.append(ip)
    return ",".join(seen)


def _extra_ips(option: str) -> str:
    return merge_ips(LOOPBACK, os.environ.get(EXTRA_IPS_ENV, ""), option)


def normal_address(url: str) -> str:
    """A sender address found through a loopback alias, as ``127.0.0.1:PORT``."""
    host, sep, port = url.rpartition(":")
    if sep and host in LOOPBACK_ALIASES:
        return f"{LOOPBACK}:{port}"
    return url


def unique_senders(senders: list[Sender]) -> list[Sender]:
    """Each (name, address) once, addresses normalised, first occurrence first."""
    seen: set[Sender] = set()
    out: list[Sender] = []
    for listed in senders:
        sender = Sender(listed.ndi_name, normal_address(listed.url_address))
        if sender not in seen:
            seen.add(sender)
            out.append(sender)
    return out


# -- discovery -----------------------------------------------------------------------------


class _OwnSenders:
    """This process's senders, by full NDI name: found without asking discovery."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._senders: dict[str, str] = {}

    def add(self, name: str, address: str) -> None:
        with self._lock:
            self._senders[name] = address

    def remove(self, name: str, address: str) -> None:
        """Forget ``name`` if it still means ``address`` (not a newer sender of that name)."""
        with self._lock:
            if self._senders.get(name) == address:
                del self._senders[name]

    def senders(self) -> list[Sender]:
        with self._lock:
            return [Sender(name, address) for name, address in self._senders.items()]


_OWN = _OwnSenders()


def _create_finder(ndi: Any, extra_ips: str) -> Any:
    # show_local_sources=True, no groups (NDI's default group "public" is what senders join).
    finder = ndi.find_create_v2(ndi.FindCreate(True, None, extra_ips or None))
    if finder is None:
        raise TransportError("NDI could not create a finder")
    return finder


class _Discovery:
    """A long-lived finder plus a probe finder that :meth:`reprobe` replaces.

    The long-lived one accumulates what mDNS and the configured IPs report (mDNS answers
    take a while on a real network, so it is never restarted). The probe asks the loopback
    aliases and the configured IPs anew each time it is replaced: a new connection to a
    shared port 5960 may reach another NDI process there (see the module notes).
    """

    def __init__(self, ndi: Any, extra_ips: str) -> None:
        self._ndi = ndi
        self._main_ips = extra_ips
        self._probe_ips = merge_ips(",".join(LOOPBACK_ALIASES), extra_ips)
        self._main: Any = None
        self._main_born = 0.0
        self._probe: Any = None
        self._probe_born = 0.0

    def _ensure(self) -> None:
        now = time.monotonic()
        if self._main is None:
            self._main, self._main_born = _create_finder(self._ndi, self._main_ips), now
        if self._probe is None:
            self._probe, self._probe_born = _create_finder(self._ndi, self._probe_ips), now

    def _destroy(self, finder: Any, born: float) -> None:
        young = born + _FINDER_MIN_LIFE - time.monotonic()
        if young > 0:
            time.sleep(young)  # see _FINDER_MIN_LIFE: destroying it now could abort
        self._ndi.find_destroy(finder)

    def senders(self) -> list[Sender]:
        """What the probe and the long-lived finder list now (probe first: it is fresh)."""
        self._ensure()
        found = [
            Sender(str(source.ndi_name or ""), str(source.url_address or ""))
            for finder in (self._probe, self._main)
            for source in self._ndi.find_get_current_sources(finder)
        ]
        return unique_senders(found)

    def reprobe(self) -> None:
        """Replace the probe, unless it is too young to have answered: the new one starts
        asking at once, and its answers arrive within milliseconds."""
        if self._probe is not None:
            if time.monotonic() - self._probe_born < _PROBE_MIN_AGE:
                return
            probe, self._probe = self._probe, None
            self._destroy(probe, self._probe_born)
        self._ensure()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when the long-lived finder's list changes."""
        self._ensure()
        # find_wait_for_sources returns True as soon as the list changed since the last
        # call and False at the timeout (measured); either way the caller looks again.
        self._ndi.find_wait_for_sources(self._main, _ms(seconds))

    def close(self) -> None:
        probe, main = self._probe, self._main
        self._probe = self._main = None
        if probe is not None:
            self._destroy(probe, self._probe_born)
        if main is not None:
            self._destroy(main, self._main_born)


# -- listing -------------------------------------------------------------------------------


def list_sources(timeout: float) -> list[SourceInfo]:
    """NDI senders visible within ``timeout`` s (this process's own included); returns
    early once the list has not changed for a while."""
    ndi = _acquire()
    try:
        discovery = _Discovery(ndi, _extra_ips(""))
        try:
            senders = _survey(discovery, timeout)
        finally:
            discovery.close()
    finally:
        _release()
    return [
        SourceInfo(
            uri=str(SourceURI("ndi", sender.ndi_name)),
            kind="ndi",
            name=sender.ndi_name,
            address=sender.url_address or None,
        )
        for sender in senders
    ]


def _survey(discovery: _Discovery, timeout: float) -> list[Sender]:
    """Everything seen over several probes, one entry per name (loopback address first)."""
    deadline = time.monotonic() + max(timeout, 0.0)
    found: dict[str, str] = {}
    changed_at = time.monotonic()
    while True:
        for sender in [*_OWN.senders(), *discovery.senders()]:
            known = found.get(sender.ndi_name)
            if known is None or (
                not known.startswith(f"{LOOPBACK}:") and sender.url_address.startswith(LOOPBACK)
            ):
                found[sender.ndi_name] = sender.url_address
                changed_at = time.monotonic()
        now = time.monotonic()
        if now >= deadline or (found and now - changed_at >= _SETTLE):
            return [Sender(name, address) for name, address in found.items()]
        discovery.reprobe()  # then give the new probe a round to collect its answers
        discovery.wait(min(deadline - now, _PROBE_ROUND))
