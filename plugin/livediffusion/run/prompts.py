"""Prompt text -> embedding, on its own thread, so a new prompt never stalls a frame.

The thread watches the :class:`ControlStore`; when ``prompt`` or ``prompt_b`` changes it
encodes the text (or takes it from a small LRU cache, so flipping between a set's prompts is
instant) and leaves the embedding in that prompt's latest-wins slot. The inference thread picks
it up between frames and starts a glide. A prompt that was superseded while it was being
encoded is never shown.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from livediffusion.control.controls import ControlStore
from livediffusion.run.slots import LatestSlot
from livediffusion_models.backends.base import PromptSlot

__all__ = ["PromptEncoder"]

log = logging.getLogger(__name__)


class PromptEncoder:
    def __init__(
        self, encode: Callable[[str], Any], store: ControlStore, *, cache_size: int = 32
    ) -> None:
        self._encode = encode
        self._store = store
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._generation = 0  # bumped by forget(): an encode from before is not cached
        self._cache_size = cache_size
        self._ready: dict[PromptSlot, LatestSlot[tuple[str, Any]]] = {
            "a": LatestSlot(),
            "b": LatestSlot(),
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prompt-encoder", daemon=True)
        first = store.snapshot()
        self._current: dict[PromptSlot, str] = {"a": first.prompt, "b": first.prompt_b}

    def encode(self, text: str) -> Any:
        """Encode (or recall) ``text`` on the calling thread."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        generation = self._generation
        embedding = self._encode(text)
        if generation != self._generation:
            return embedding  # the text encoder changed meanwhile: good once, not to keep
        self._cache[text] = embedding
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return embedding

    def forget(self) -> None:
        """Drop every cached embedding: the text encoder's weights changed (a LoRA on it)."""
        self._generation += 1
        self._cache.clear()

    def start(self) -> PromptEncoder:
        self._thread.start()
        return self

    def take_ready(self, slot: PromptSlot = "a") -> tuple[str, Any] | None:
        """The newest finished ``(text, embedding)`` for a slot not yet taken; never blocks."""
        return self._ready[slot].take(timeout=0.0)

    def _run(self) -> None:
        version = self._store.version
        while not self._stop.is_set():
            # short waits: a stop is seen within 50 ms (a change wakes it at once anyway)
            version = self._store.wait_for_change(version, timeout=0.05)
            for slot in ("a", "b"):
                self._refresh(slot)

    def _refresh(self, slot: PromptSlot) -> None:
        text = _text(self._store, slot)
        if text == self._current[slot]:
            return
        self._current[slot] = text
        if not text and slot == "b":
            return  # no B prompt: the engine holds the morph at A
        try:
            embedding = self.encode(text)
        except Exception:
            log.exception("could not encode prompt %r; keeping the previous one", text[:80])
            return
        if _text(self._store, slot) == text:
            self._ready[slot].put((text, embedding))

    def close(self, timeout: float = 1.5) -> None:
        """Stop watching; an encode in flight is not waited for beyond ``timeout``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)


def _text(store: ControlStore, slot: PromptSlot) -> str:
    controls = store.snapshot()
    return controls.prompt if slot == "a" else controls.prompt_b
