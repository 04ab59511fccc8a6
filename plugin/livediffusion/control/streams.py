"""OSC and MIDI for several streams: each stream's addresses under its name, and the plain
addresses for all of them at once.

With ``--stream cam ... --stream clip ...`` every stream has its own
:class:`~livediffusion.control.surface.ControlSurface` whose addresses carry the stream's name
(``/cam/strength``, ``/clip/prompt``; TouchDesigner's ``cam_strength`` too). The addresses a
single-stream server takes keep working and act on every stream: ``/strength 0.5`` sets both,
``/reset`` resets both, ``/preset/recall 3`` recalls preset 3 into both. ``/status`` answers
for all streams together (input and output rates summed, the worst latency), and
``/cam/status`` for one. ``/preset/save`` needs a stream's name: two streams have two looks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from livediffusion.control.controls import ControlError, canonical_address, parse_message
from livediffusion.control.surface import ControlSurface, Replier, StatusValues

__all__ = ["StreamRouter", "combine_status"]

log = logging.getLogger(__name__)


def combine_status(values: Sequence[StatusValues]) -> StatusValues:
    """Every stream's ``/status`` as one: rates and drops summed, the worst latency; the
    rest as the first stream has it (model, backend, OSC count and LoRA weights are shared;
    the ControlNet scale is the first stream's)."""
    first = values[0]
    return (
        sum(value[0] for value in values),
        sum(value[1] for value in values),
        max(value[2] for value in values),
        sum(value[3] for value in values),
        *first[4:],
    )


class StreamRouter:
    """The OSC server's handler (and MIDI's ``submit``) when ``serve`` runs named streams."""

    def __init__(
        self,
        surfaces: Sequence[ControlSurface],
        *,
        prefix: str = "",
        reply_to: tuple[str, int] | None = None,
    ) -> None:
        """``surfaces``: one per stream, each with ``prefix`` + ``/`` + its name as its own
        prefix. ``prefix``: ``--osc-prefix``, under which the plain addresses live."""
        if not surfaces:
            raise ValueError("a router needs at least one stream")
        self.surfaces = tuple(surfaces)
        self.prefix = prefix
        self.reply_to = reply_to
        self._replier: Replier | None = None

    def attach(self, replier: Replier) -> None:
        self._replier = replier
        for surface in self.surfaces:
            surface.attach(replier)

    def handle_osc(self, message: Any) -> None:
        """An ``OscServer`` handler (``message``: an ``OscMessage``)."""
        self.submit(message.address, message.args, sender=message.sender)

    def surface_for(self, address: str) -> tuple[ControlSurface, str] | None:
        """The stream whose name the address carries, and the table address it names."""
        for surface in self.surfaces:
            canonical = canonical_address(address, prefix=surface.prefix)
            if canonical is not None:
                return surface, canonical
        return None

    def submit(
        self,
        address: str,
        args: tuple[Any, ...],
        *,
        sender: tuple[str, int] | None = None,
    ) -> None:
        """Validate and apply one message; raises :class:`ControlError` if it is bad."""
        if self.surfaces[0].styles.submit(address, args, prefix=self.prefix):
            return  # /lora/N/...: the model's, shared by every stream
        found = self.surface_for(address)
        if found is not None:
            surface, named = found
            surface.submit_canonical(named, parse_message(named, args), sender=sender)
            return
        canonical = canonical_address(address, prefix=self.prefix)
        if canonical is None:
            names = ", ".join(surface.prefix + "/..." for surface in self.surfaces)
            raise ControlError(
                f"unknown address {address[:80]!r}; streams: {names}; see `livediffusion osc`"
            )
        command = parse_message(canonical, args)  # checked once, for every stream
        if canonical == "/status":
            self._answer("/status", self.status_values(), sender)
        elif canonical == "/ping":
            self._answer("/pong", command.value, sender)
        elif canonical == "/preset/save":
            example = self.surfaces[0].prefix
            raise ControlError(
                f"/preset/save with several streams needs the stream's name: "
                f"{example}/preset/save {command.value}"
            )
        else:
            for surface in self.surfaces:
                surface.submit_canonical(canonical, command, sender=sender)

    def status_values(self) -> StatusValues:
        return combine_status([surface.status_values() for surface in self.surfaces])

    def send_status(self) -> None:
        """The ``--osc-reply`` tick: ``/status`` for all, then each stream's own."""
        if self.reply_to is None:
            return
        self._answer("/status", self.status_values(), self.reply_to)
        for surface in self.surfaces:
            surface.send_status()

    def _answer(self, address: str, args: Any, to: tuple[str, int] | None) -> None:
        if to is None:  # asked over MIDI: nobody to answer, so say it in the log
            log.info("%s %s", address, " ".join(str(arg) for arg in args))
            return
        if self._replier is not None:
            self._replier.send(self.prefix + address, args, to)
