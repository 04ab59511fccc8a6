"""The one way into the controls: OSC, MIDI and presets all arrive here.

A message is an address and its arguments, whoever sent it. :meth:`ControlSurface.submit`
maps the address (prefix, TouchDesigner channel names), validates it through
:func:`~livediffusion.control.controls.parse_message`, then either changes a value in the
:class:`ControlStore` or runs an action (presets, reset, status, ping). Answers go back over
the OSC server's socket: ``/status`` and ``/pong`` to whoever asked, and with ``--osc-echo``
every accepted change to the ``--osc-reply`` address, so other panels and motorised faders
follow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from livediffusion.control.controls import (
    FIELD_ADDRESS,
    Command,
    ControlError,
    ControlStore,
    canonical_address,
    parse_message,
)
from livediffusion.control.presets import PresetFile
from livediffusion.control.styles import LoraControl, StyleStore

__all__ = ["ControlSurface", "Replier", "StatusValues"]

log = logging.getLogger(__name__)

StatusValues = tuple[float, float, float, int, str, str, int, float, str]
"""What ``/status`` answers: input FPS, output FPS, latency p50 ms, dropped, model, backend,
OSC messages rejected, the ControlNet scale (0 without one), the LoRA weights the model runs
at ("0.8 0"; '' without LoRAs). New fields only ever go at the end, so a reader of the first
six keeps working."""

_INT32_MAX = 2**31 - 1


class Replier(Protocol):
    """What the surface needs of the OSC server to answer (``OscServer.send``)."""

    def send(self, address: str, args: Sequence[Any], to: tuple[str, int]) -> bool: ...


class ControlSurface:
    def __init__(
        self,
        store: ControlStore,
        *,
        presets: PresetFile,
        status: Callable[[], StatusValues],
        prefix: str = "",
        reply_to: tuple[str, int] | None = None,
        echo: bool = False,
        recall_glide: float = 1.0,
        stream: str = "",
        styles: StyleStore | None = None,
    ) -> None:
        """``status``: called for each ``/status`` (and each ``--osc-reply`` tick).
        ``recall_glide``: seconds a preset recall takes when ``/glide`` is 0.
        ``styles``: the LoRAs' values (``/lora/N/...``), global to the model."""
        if echo and reply_to is None:
            raise ValueError("--osc-echo sends to the --osc-reply address: give --osc-reply too")
        self.store = store
        self.presets = presets
        self.prefix = prefix
        self.reply_to = reply_to
        self.recall_glide = recall_glide
        self.stream = stream  # the stream's name (its addresses carry it in ``prefix``)
        self._status = status
        self._replier: Replier | None = None
        self.styles = styles if styles is not None else StyleStore()
        if echo:
            store.subscribe(self._echo)
            self.styles.subscribe(self._echo_lora)

    @property
    def label(self) -> str:
        """How the log names the stream this surface drives (nothing without --stream)."""
        return f"stream {self.stream}: " if self.stream else ""

    def attach(self, replier: Replier) -> None:
        """Answer through ``replier`` (the OSC server, once it is listening)."""
        self._replier = replier

    # -- in -------------------------------------------------------------------------------

    def handle_osc(self, message: Any) -> None:
        """An ``OscServer`` handler (``message``: an ``OscMessage``)."""
        self.submit(message.address, message.args, sender=message.sender)

    def submit(
        self,
        address: str,
        args: tuple[Any, ...],
        *,
        sender: tuple[str, int] | None = None,
    ) -> None:
        """Validate and apply one message; raises :class:`ControlError` if it is bad."""
        if self.styles.submit(address, args, prefix=self.prefix):
            return
        canonical = canonical_address(address, prefix=self.prefix)
        if canonical is None:
            under = f" under {self.prefix}" if self.prefix else ""
            raise ControlError(f"unknown address {address[:80]!r}{under}; see `livediffusion osc`")
        self.submit_canonical(canonical, parse_message(canonical, args), sender=sender)

    def submit_canonical(
        self, canonical: str, command: Command, *, sender: tuple[str, int] | None = None
    ) -> None:
        """Apply an already-validated message (a table address, no prefix): the stream
        router checks a message once and gives it to every stream."""
        if self.store.apply(command):
            if command.spec.kind == "text":  # encoding takes a while: say it arrived now
                log.info("%s%s received: %s", self.label, canonical, str(command.value)[:120])
            return
        self._act(canonical, command.value, sender)

    def _act(self, address: str, value: Any, sender: tuple[str, int] | None) -> None:
        if address == "/preset/save":
            self.presets.save(value, self.store.snapshot(), loras=self.styles.preset_entry())
        elif address == "/preset/recall":
            values = self.presets.load(value)
            loras = self.styles.from_preset(
                self.presets.load_loras(value), where=f"{self.presets.path} preset {value}"
            )
            glide = self.store.snapshot().glide or self.recall_glide
            self.store.update(ramp_seconds=glide, **values)
            if loras is not None:
                self.styles.replace_all(loras, ramp_seconds=glide)
            log.info("%spreset %d recalled (gliding %.1f s)", self.label, value, glide)
        elif address == "/reset":
            if value is not None:  # None: a button's release
                self.store.request_reset()
        elif address == "/status":
            self._answer("/status", self.status_values(), sender)
        elif address == "/ping":
            self._answer("/pong", value, sender)
        else:  # a table row without an action here is a bug, not bad input
            raise RuntimeError(f"no action for {address}")

    # -- out ------------------------------------------------------------------------------

    def status_values(self) -> StatusValues:
        in_fps, out_fps, latency, dropped, model, backend, rejected, scale, loras = self._status()
        return (
            round(in_fps, 2),
            round(out_fps, 2),
            round(latency, 2),
            min(dropped, _INT32_MAX),
            model,
            backend,
            min(rejected, _INT32_MAX),
            round(scale, 4),
            loras,
        )

    def send_status(self) -> None:
        """The ``--osc-reply`` tick: ``/status`` to the reply address."""
        if self.reply_to is not None:
            self._answer("/status", self.status_values(), self.reply_to)

    def _answer(self, address: str, args: Sequence[Any], to: tuple[str, int] | None) -> None:
        if to is None:  # asked over MIDI: nobody to answer, so say it in the log
            log.info("%s %s", address, " ".join(str(arg) for arg in args))
            return
        if self._replier is not None:
            self._replier.send(self.prefix + address, args, to)

    def _echo(self, changes: Mapping[str, Any]) -> None:
        if self._replier is None or self.reply_to is None:
            return
        for field, value in changes.items():
            address = FIELD_ADDRESS.get(field)
            if address is None:
                continue
            sent = int(value) if isinstance(value, bool) else value
            self._replier.send(self.prefix + address, (sent,), self.reply_to)

    def _echo_lora(self, index: int, value: LoraControl) -> None:
        if self._replier is None or self.reply_to is None:
            return
        base = f"{self.prefix}/lora/{index}"
        self._replier.send(f"{base}/weight", (value.weight,), self.reply_to)
        self._replier.send(f"{base}/on", (int(value.on),), self.reply_to)
