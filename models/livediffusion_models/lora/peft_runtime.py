"""The alternative to in-place weights, kept for measuring: diffusers/PEFT adapters left unfused.

Here each LoRA stays a PEFT adapter on the live modules (``load_lora_into_unet`` /
``load_lora_into_text_encoder``, as ``pipeline.load_lora_weights`` does), and every frame runs
the extra low-rank branch of every adapted layer: ``y = W0 x + w * B (A x)``. diffusers'
``set_adapters`` would change ``w`` by writing Python floats into PEFT's ``scaling`` dicts,
which a captured CUDA graph has already baked in (and a compiled model guards on, recompiling);
so, as PEFT's own hot-swap preparation does, the scale becomes a tensor: each adapter's
``alpha / r`` is folded into its ``B`` once, and its ``scaling`` entry becomes a view of one
element of a small weight vector on the device. A weight change is then one copy of that
vector, and the graph reads it on the next replay.

The trade against :class:`~livediffusion_models.lora.stack.LoraStack`: a change costs one tiny
copy instead of rewriting every touched weight, and memory holds only the low-rank factors;
but every frame pays the LoRA branches (two more matrix products per adapted layer per LoRA),
even at weight 0. ``livediffusion bench --lora`` measures both; the in-place stack is the
default because a show spends far more frames holding a look than changing it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from livediffusion_models.errors import LoraError
from livediffusion_models.lora import WeightChange
from livediffusion_models.lora.read import Component, LoraFile, _quiet

__all__ = ["PeftLoraStack"]


class PeftLoraStack:
    """LoRAs as live PEFT adapters with tensor scales; the interface of ``LoraStack``."""

    def __init__(
        self,
        *,
        unet: Any,
        text_encoder: Any = None,
        text_lock: threading.Lock | None = None,
    ) -> None:
        self._modules: dict[Component, Any] = {"unet": unet}
        if text_encoder is not None:
            self._modules["text_encoder"] = text_encoder
        self._text_lock = text_lock
        self._loras: list[LoraFile] = []
        self._weights: list[float] = []
        self._vectors: dict[Component, torch.Tensor] = {}
        self._host: dict[Component, torch.Tensor] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(lora.name for lora in self._loras)

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(self._weights)

    def __len__(self) -> int:
        return len(self._loras)

    def memory_bytes(self) -> int:
        """Device memory the adapters' factors take (what ``bench --lora`` reports)."""
        return sum(
            p.numel() * p.element_size()
            for module in self._modules.values()
            for name, p in module.named_parameters()
            if ".lora_" in name
        )

    def add(self, lora: LoraFile, *, weight: float = 1.0) -> int:
        """Load ``lora`` as adapter ``lora<N>`` on the live modules (already checked by
        ``read_lora``, so diffusers' loaders do not fail half-way here)."""
        from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

        index = len(self._loras)
        name = f"lora{index}"
        with _quiet():
            state_dict, alphas, metadata = Loader.lora_state_dict(
                str(lora.path.parent),
                weight_name=lora.path.name,
                local_files_only=True,
                return_lora_metadata=True,
            )
            Loader.load_lora_into_unet(
                state_dict, alphas, self._modules["unet"], adapter_name=name, metadata=metadata
            )
            if lora.touches_text_encoder:
                Loader.load_lora_into_text_encoder(
                    state_dict,
                    alphas,
                    self._modules["text_encoder"],
                    adapter_name=name,
                    metadata=metadata,
                )
        self._loras.append(lora)
        self._weights.append(float(weight))
        names = [f"lora{i}" for i in range(len(self._loras))]
        for component, module in self._modules.items():
            self._rebind(component, module, names)
        self._upload(set(self._modules))
        return index

    def _rebind(self, component: Component, module: Any, names: list[str]) -> None:
        """Activate every adapter and point each layer's scale at the weight vector."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        device = next(module.parameters()).device
        vector = torch.zeros(len(names), dtype=torch.float32, device=device)
        self._vectors[component] = vector
        self._host[component] = torch.zeros(len(names), dtype=torch.float32)
        with torch.no_grad():
            for found in module.modules():
                if not isinstance(found, BaseTunerLayer):
                    continue
                layer: Any = found  # PEFT's LoRA layer: scaling, lora_B, set_adapter
                mine = [n for n in names if n in getattr(layer, "scaling", {})]
                if not mine:
                    continue
                layer.set_adapter(mine)
                for n in mine:
                    scale = layer.scaling[n]
                    if not isinstance(scale, torch.Tensor):  # fold alpha / r into B, once
                        layer.lora_B[n].weight.mul_(scale)
                    layer.scaling[n] = vector[int(n.removeprefix("lora"))]
                layer.requires_grad_(False)

    def set_weight(self, index: int, weight: float) -> WeightChange:
        weights = list(self._weights)
        weights[index] = weight
        return self.set_weights(weights)

    def set_weights(self, weights: Sequence[float]) -> WeightChange:
        if len(weights) != len(self._loras):
            raise ValueError(f"{len(weights)} weights for {len(self._loras)} LoRAs")
        touched: set[Component] = set()
        for index, weight in enumerate(weights):
            if float(weight) != self._weights[index]:
                self._weights[index] = float(weight)
                touched |= self._loras[index].components()
        if not touched:
            return WeightChange(applied=False, reencode_prompts=False)
        self._upload(touched)
        return WeightChange(applied=True, reencode_prompts="text_encoder" in touched)

    def _lock_for(self, component: Component) -> AbstractContextManager[Any]:
        if component == "text_encoder" and self._text_lock is not None:
            return self._text_lock
        return nullcontext()

    def _upload(self, components: set[Component]) -> None:
        for component in components:
            vector = self._vectors.get(component)
            if vector is None:
                raise LoraError(f"no adapters on the {component}")
            host = self._host[component]
            for index, weight in enumerate(self._weights):
                host[index] = weight
            # blocking: the next change rewrites ``host``, which a pending copy may still read
            with self._lock_for(component), torch.no_grad():
                vector.copy_(host)
