"""Where a LoRA is: a file, a folder holding one, or a hub repository (cached, else fetched).

Model sites hand out single ``.safetensors`` files; diffusers saves a folder with
``pytorch_lora_weights.safetensors``, PEFT one with ``adapter_model.safetensors`` and
``adapter_config.json``; the hub has repositories with one or several LoRA files.
All three end here as one local file, found offline first (the livediffusion cache, then
huggingface_hub's), so a show runs without a network once a LoRA was fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

from livediffusion_models.errors import LoraNotFoundError
from livediffusion_models.weights.context import _cache_roots
from livediffusion_models.weights.files import _is_hub_id
from livediffusion_models.weights.hub import (
    _cached_snapshot,
    _hub_unreachable,
    _offline,
)

__all__ = ["LORA_SUFFIXES", "download_lora", "resolve_lora"]

LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
"""Files a LoRA may come in; safetensors first (it cannot run code when read)."""
_DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"
_PEFT_CONFIG = "adapter_config.json"


def _pick_file(names: list[str], where: str) -> str:
    """The one LoRA file among ``names``: diffusers' own name, else the only candidate."""
    candidates = sorted(n for n in names if n.endswith(LORA_SUFFIXES))
    if _DIFFUSERS_NAME in candidates:
        return _DIFFUSERS_NAME
    safe = [n for n in candidates if n.endswith(".safetensors")]
    if len(safe) == 1:
        return safe[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise LoraNotFoundError(f"no LoRA file (.safetensors, .bin, .pt) in {where}")
    shown = ", ".join(candidates[:6]) + (", ..." if len(candidates) > 6 else "")
    raise LoraNotFoundError(
        f"{where} holds several LoRA files ({shown}): name one, e.g. {where}/{candidates[0]}"
    )


def _split_hub(source: str) -> tuple[str, str | None]:
    """``owner/name`` or ``owner/name/path/in/repo.safetensors`` -> (repo id, file or None)."""
    parts = source.split("/")
    repo = "/".join(parts[:2])
    inside = "/".join(parts[2:]) or None
    return repo, inside


def _looks_like_hub(source: str) -> bool:
    repo, inside = _split_hub(source)
    return _is_hub_id(repo) and (inside is None or inside.endswith(LORA_SUFFIXES))


def resolve_lora(
    source: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = True,
) -> Path:
    """The local file ``source`` names; :class:`LoraNotFoundError` (one line) if there is none.

    A path that exists wins over a hub id of the same spelling. A hub repository is looked
    up in the caches first and fetched only when missing (never with ``allow_download``
    False, ``HF_HUB_OFFLINE`` set, or the hub unreachable).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return path / _pick_file([p.name for p in path.iterdir() if p.is_file()], str(path))
    if not _looks_like_hub(source):
        raise LoraNotFoundError(f"LoRA {source!r}: no such file or folder (nor a hub id)")
    repo, inside = _split_hub(source)
    for root in _cache_roots(cache_dir):
        snapshot = _cached_snapshot(root, repo)
        if snapshot is None:
            continue
        if inside is not None:
            if (snapshot / inside).is_file():
                return snapshot / inside
            continue
        names = [p.name for p in snapshot.iterdir() if p.is_file()]
        if any(n.endswith(LORA_SUFFIXES) for n in names):
            return snapshot / _pick_file(names, f"{repo} (cached in {snapshot})")
    return download_lora(source, cache_dir=cache_dir, allow_download=allow_download)


def download_lora(
    source: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = True,
) -> Path:
    """Fetch a hub LoRA into the livediffusion cache (for ``download --lora`` before a show)."""
    repo, inside = _split_hub(source)
    if not allow_download:
        raise LoraNotFoundError(
            f"LoRA {source!r} is not in the cache and downloads are off: fetch it once online"
        )
    if _offline():
        raise LoraNotFoundError(
            f"LoRA {source!r} is not in the cache and HF_HUB_OFFLINE is set: fetch it once online"
        )
    unreachable = _hub_unreachable()
    if unreachable is not None:
        raise LoraNotFoundError(f"LoRA {source!r} is not in the cache and {unreachable}")
    from huggingface_hub import HfApi, hf_hub_download

    target = _cache_roots(cache_dir)[0]
    try:
        name = inside
        listing = [f for f in HfApi().list_repo_files(repo) if "/" not in f]
        if name is None:
            name = _pick_file(listing, f"hub repo {repo}")
        if name.startswith("adapter_model.") and _PEFT_CONFIG in listing:
            hf_hub_download(repo, _PEFT_CONFIG, cache_dir=target)  # PEFT's own format
        return Path(hf_hub_download(repo, name, cache_dir=target))
    except LoraNotFoundError:
        raise
    except Exception as error:  # network, auth, missing repo or file: all "not available"
        first = str(error).splitlines()[0] if str(error) else ""
        raise LoraNotFoundError(
            f"LoRA {source!r} could not be fetched ({type(error).__name__}: {first})"
        ) from error
