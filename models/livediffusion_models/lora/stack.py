"""Several LoRAs on a live model, their weights changed in place: ``W = W0 + sum_i w_i * delta_i``.

For every parameter any LoRA touches, the stack keeps on the parameter's device a copy of
its base value ``W0`` and, per LoRA, that LoRA's delta at weight 1, each laid out exactly like
the parameter (same dtype, same strides: a channels-last convolution stays channels-last). A
weight change rewrites the parameters' own storage: one multi-tensor copy of the bases, then
one multi-tensor ``add(delta, alpha=w)`` per LoRA with a non-zero weight, all queued on the
caller's CUDA stream (a handful of kernel launches, no allocation, no host sync). The module
objects, the parameter objects and their ``data_ptr`` never change, which is what lets a
captured CUDA graph or a compiled model run on unchanged, reading the new weights from the
very next frame. A frame with unchanged weights costs nothing at all.

Recomputing from ``W0`` (rather than adding the difference of weights) keeps a long
crossfade from drifting in half precision. Memory: one copy of each touched parameter for the
bases, plus one per LoRA (for SD-size UNets, roughly the size of the attention layers each).

Call :meth:`LoraStack.set_weights` from the thread that runs the frames (between frames), as
every other ``set_*`` of a backend: on CUDA the writes are then ordered before the next
frame's kernels on the same stream; off CUDA they would otherwise race a running frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from livediffusion_models.errors import LoraError
from livediffusion_models.lora import WeightChange
from livediffusion_models.lora.read import Component, LoraFile

__all__ = ["LoraStack"]


@dataclass
class _Applied:
    """One LoRA on the model: per component, the parameters it moves and its deltas."""

    lora: LoraFile
    weight: float
    params: dict[Component, list[torch.Tensor]] = field(default_factory=dict)
    deltas: dict[Component, list[torch.Tensor]] = field(default_factory=dict)


@dataclass
class _Group:
    """Every touched parameter of one component, with its base value, in one order."""

    owners: list[tuple[torch.nn.Module, str]] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    pointers: list[int] = field(default_factory=list)
    bases: list[torch.Tensor] = field(default_factory=list)
    index: dict[tuple[str, str], int] = field(default_factory=dict)


class LoraStack:
    """LoRAs applied to ``unet`` (and ``text_encoder``) with live weights.

    Attach after the modules reached their device, dtype and memory format (the stack binds
    to the parameter tensors as they are then): in the torch backend, after ``prepare_modules``
    and before compiling or capturing. ``text_lock`` (the text encoder's lock) is held while
    text-encoder weights change, so a prompt encoding on another thread never sees half of them.
    """

    def __init__(
        self,
        *,
        unet: Any = None,
        text_encoder: Any = None,
        text_lock: threading.Lock | None = None,
        only: Component | None = None,
    ) -> None:
        """``only``: apply just that component's layers of each LoRA (Core ML bakes the
        UNet's into the program and applies the text encoder's in torch)."""
        self._modules: dict[Component, Any] = {}
        if unet is not None:
            self._modules["unet"] = unet
        if text_encoder is not None:
            self._modules["text_encoder"] = text_encoder
        self._only = only
        self._text_lock = text_lock
        self._groups: dict[Component, _Group] = {}
        self._applied: list[_Applied] = []

    # -- what is loaded ------------------------------------------------------------------

    @property
    def loras(self) -> tuple[LoraFile, ...]:
        return tuple(applied.lora for applied in self._applied)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(applied.lora.name for applied in self._applied)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(applied.weight for applied in self._applied)

    def __len__(self) -> int:
        return len(self._applied)

    def memory_bytes(self) -> int:
        """Device memory the bases and deltas take (what ``bench --lora`` reports)."""
        total = sum(t.numel() * t.element_size() for g in self._groups.values() for t in g.bases)
        for applied in self._applied:
            for deltas in applied.deltas.values():
                total += sum(t.numel() * t.element_size() for t in deltas)
        return total

    # -- loading -------------------------------------------------------------------------

    def add(self, lora: LoraFile, *, weight: float = 1.0) -> int:
        """Put ``lora`` on the model at ``weight``; returns its index (``/lora/N``, from 0).

        Every delta and base copy is made first; only then are the weights rewritten, so a
        failure (out of device memory, a module that moved) leaves the model as it was.
        """
        wanted = lora.components() if self._only is None else {self._only}
        missing = (wanted & lora.components()) - set(self._modules)
        if missing:
            raise LoraError(f"LoRA {lora.name} changes the {min(missing)}; the stack has none")
        applied = _Applied(lora=lora, weight=float(weight))
        new_bases: dict[Component, list[tuple[tuple[str, str], torch.nn.Module, str]]] = {}
        try:
            with torch.no_grad():
                for layer in lora.layers:
                    if layer.component not in wanted:
                        continue
                    module = self._modules[layer.component].get_submodule(layer.module)
                    for param_name, delta in layer.deltas().items():
                        param: torch.Tensor = getattr(module, param_name)
                        if tuple(delta.shape) != tuple(param.shape):
                            raise LoraError(
                                f"LoRA {lora.name}: {layer.module}.{param_name} is "
                                f"{tuple(param.shape)} here, the LoRA's delta "
                                f"{tuple(delta.shape)}"
                            )
                        on_device = torch.empty_like(param)  # same dtype, device, strides
                        on_device.copy_(delta)
                        applied.params.setdefault(layer.component, []).append(param)
                        applied.deltas.setdefault(layer.component, []).append(on_device)
                        key = (layer.module, param_name)
                        group = self._groups.get(layer.component)
                        if group is None or key not in group.index:
                            new_bases.setdefault(layer.component, []).append(
                                (key, module, param_name)
                            )
                bases = {
                    component: [getattr(m, p).detach().clone() for _, m, p in entries]
                    for component, entries in new_bases.items()
                }
        except torch.OutOfMemoryError as error:
            raise LoraError(
                f"LoRA {lora.name}: not enough device memory for its weights ({error})"
            ) from error
        for component, entries in new_bases.items():
            group = self._groups.setdefault(component, _Group())
            for (key, module, param_name), base in zip(entries, bases[component], strict=True):
                group.index[key] = len(group.params)
                group.owners.append((module, param_name))
                param = getattr(module, param_name)
                group.params.append(param)
                group.pointers.append(param.data_ptr())
                group.bases.append(base)
        self._applied.append(applied)
        self._rewrite(set(applied.params))
        return len(self._applied) - 1

    def clear(self) -> None:
        """Take every LoRA off: the base weights back in place, the copies freed."""
        with torch.no_grad():
            for component, group in self._groups.items():
                with self._lock_for(component):
                    torch._foreach_copy_(group.params, group.bases)
        self._groups.clear()
        self._applied.clear()

    # -- live weights --------------------------------------------------------------------

    def set_weight(self, index: int, weight: float) -> WeightChange:
        """One LoRA's weight (``/lora/N/weight``; ``/lora/N/on 0`` is weight 0)."""
        if not 0 <= index < len(self._applied):
            raise IndexError(f"LoRA {index} does not exist ({len(self._applied)} loaded)")
        weights = list(self.weights)
        weights[index] = weight
        return self.set_weights(weights)

    def set_weights(self, weights: Sequence[float]) -> WeightChange:
        """Every LoRA's weight at once (one rewrite for a crossfade of two).

        Unchanged weights do nothing. ``reencode_prompts`` is True when a LoRA that
        changes the text encoder changed weight.
        """
        if len(weights) != len(self._applied):
            raise ValueError(f"{len(weights)} weights for {len(self._applied)} LoRAs")
        touched: set[Component] = set()
        for applied, weight in zip(self._applied, weights, strict=True):
            value = float(weight)
            if value != applied.weight:
                applied.weight = value
                touched |= set(applied.params)
        if not touched:
            return WeightChange(applied=False, reencode_prompts=False)
        self._rewrite(touched)
        return WeightChange(applied=True, reencode_prompts="text_encoder" in touched)

    def _lock_for(self, component: Component) -> AbstractContextManager[Any]:
        if component == "text_encoder" and self._text_lock is not None:
            return self._text_lock
        return nullcontext()

    def _rewrite(self, components: set[Component] | frozenset[Component]) -> None:
        with torch.no_grad():
            for component in sorted(components):
                group = self._groups.get(component)
                if group is None:
                    continue
                self._check_bound(component, group)
                with self._lock_for(component):
                    torch._foreach_copy_(group.params, group.bases)
                    for applied in self._applied:
                        params = applied.params.get(component)
                        if params and applied.weight != 0.0:
                            deltas = applied.deltas[component]
                            torch._foreach_add_(params, deltas, alpha=applied.weight)

    def _check_bound(self, component: Component, group: _Group) -> None:
        """The modules must still hold the tensors the stack writes, in the same storage: a
        ``.to()`` after attaching swaps the storage (or the parameter), and the writes would
        land where no graph and no compiled model reads."""
        for (module, name), param, pointer in zip(
            group.owners, group.params, group.pointers, strict=True
        ):
            if getattr(module, name) is not param or param.data_ptr() != pointer:
                raise LoraError(
                    f"the {component}'s weights were replaced after the LoRAs were attached "
                    "(moved to another device or dtype?): attach LoRAs after moving the model"
                )
