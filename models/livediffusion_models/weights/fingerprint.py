"""A short, stable fingerprint of the weights one ``load_model`` call loads.

Caches of work derived from the weights (the Core ML conversion) key on it: it must change
whenever the loaded weights could have changed, stay the same when nothing did, and cost
milliseconds even for gigabytes of weights. It is 16 hex digits of a SHA-256 over:

* a scheme version, so changing what goes in here invalidates old keys;
* the model name, because it picks the shipped configs and the offline tokenizer's padding;
* per part (unet, vae, text_encoder, tokenizer, scheduler), each file actually used, by its
  name relative to its component folder (not the absolute path: a moved folder or a hub
  snapshot in another cache holds the same weights) and its size;
* small files (config.json, shard indexes, tokenizer files, scheduler config): their bytes,
  which are cheap to read and decide the architecture and the noise schedule;
* weight files in a huggingface_hub cache: the name of the blob the snapshot links to, which
  is the file's own content hash (SHA-256 for LFS files, the git hash for others). It is the
  same on every machine that downloaded the same revision, so programs converted on one
  machine are found on another (the README's "prepare on Linux, serve on a Mac");
* other weight files: ``st_mtime_ns``, which changes whenever a file is rewritten or replaced;
  the safetensors header (names, dtypes, shapes and offsets of every tensor: a different
  architecture or precision with the same size), read without the data; and the first and
  last 64 KiB of the file, which catch a same-size rewrite within one timestamp tick
  (coarse filesystem clocks) or a copy that kept an older mtime;
* a shipped config (or the offline tokenizer's BPE data and padding token) where the weights
  had none, so an edited shipped config changes it too.

``"random"`` weights have no files: seed, shipped configs and the torch, diffusers and
transformers versions (their initialisers decide the values a seed gives) stand in for them.
``"tiny"`` weights the same, with the scaled-down configs they are built from added.

Not in it: dtype, device and size, which callers key on themselves.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path

from livediffusion_models.registry import Component, ModelSpec
from livediffusion_models.tokenizer import BPE_FILE
from livediffusion_models.weights.files import (
    _CONFIG_NAME,
    _find_weights,
    _read_safetensors_header,
    _SafetensorsDamaged,
)
from livediffusion_models.weights.plan import _Part, _Plan

_SCHEME = "livediffusion-weights-1"
_SAMPLE_BYTES = 64 * 1024
_LENGTH = 16
_SHIPPED_COMPONENTS: tuple[Component, ...] = ("unet", "vae", "text_encoder", "scheduler")


class _Digest:
    """SHA-256 over length-prefixed fields, so no two field lists feed it the same bytes."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.add(_SCHEME)

    def add(self, *fields: str | int | bytes) -> None:
        for value in fields:
            data = value if isinstance(value, bytes) else str(value).encode("utf-8")
            self._hash.update(len(data).to_bytes(8, "little"))
            self._hash.update(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:_LENGTH]


def random_fingerprint(spec: ModelSpec, *, seed: int) -> str:
    """The fingerprint of ``load_model(spec, "random", seed=seed)``."""
    digest = _Digest()
    digest.add("random", spec.name, seed)
    for package in ("torch", "diffusers", "transformers"):
        try:
            digest.add(package, version(package))
        except PackageNotFoundError:
            digest.add(package, "unknown")
    for component in _SHIPPED_COMPONENTS:
        _add_shipped_config(digest, spec, component)
    _add_offline_tokenizer(digest, spec)
    return digest.hexdigest()


def tiny_fingerprint(spec: ModelSpec, *, seed: int) -> str:
    """The fingerprint of ``load_model(spec, "tiny", seed=seed)``."""
    from livediffusion_models.weights.tiny import tiny_configs

    digest = _Digest()
    digest.add("tiny", random_fingerprint(spec, seed=seed))
    for component, config in sorted(tiny_configs(spec).items()):
        digest.add("tiny config", component, json.dumps(config, sort_keys=True))
    return digest.hexdigest()


def plan_fingerprint(plan: _Plan, spec: ModelSpec) -> str:
    """The fingerprint of the files a resolved plan loads (the same picks the loader makes)."""
    digest = _Digest()
    digest.add("files", spec.name)
    parts: tuple[tuple[Component, _Part], ...] = (
        ("unet", plan.unet),
        ("vae", plan.vae),
        ("text_encoder", plan.text_encoder),
    )
    for component, part in parts:
        digest.add("part", component)
        config = part.folder / _CONFIG_NAME
        if config.is_file():
            _add_small_file(digest, config, part.folder)
        else:
            _add_shipped_config(digest, spec, component)
        weights = _find_weights(part.folder)
        for path in weights.files if weights is not None else ():
            if path.name.endswith(".json"):
                _add_small_file(digest, path, part.folder)
            else:
                _add_weight_file(digest, path, part.folder)

    digest.add("part", "tokenizer")
    if plan.tokenizer is None:
        _add_offline_tokenizer(digest, spec)
    else:
        folder = plan.tokenizer.folder
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            _add_small_file(digest, path, folder)

    digest.add("part", "scheduler")
    if plan.scheduler_config is None:
        _add_shipped_config(digest, spec, "scheduler")
    else:
        _add_small_file(digest, plan.scheduler_config, plan.scheduler_config.parent)
    return digest.hexdigest()


def _add_small_file(digest: _Digest, path: Path, component: Path) -> None:
    data = path.read_bytes()
    digest.add("file", path.relative_to(component).as_posix(), len(data), data)


_CONTENT_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _add_weight_file(digest: _Digest, path: Path, component: Path) -> None:
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and _CONTENT_HASH.fullmatch(resolved.name):
        name = path.relative_to(component).as_posix()
        digest.add("blob", name, resolved.stat().st_size, resolved.name)
        return
    stat = path.stat()
    digest.add("weights", path.relative_to(component).as_posix(), stat.st_size, stat.st_mtime_ns)
    if path.name.endswith(".safetensors"):
        try:
            digest.add("header", _read_safetensors_header(path))
        except _SafetensorsDamaged as error:  # loading would have failed; keep it distinct
            digest.add("damaged", str(error))
    with path.open("rb") as f:
        digest.add("head", f.read(_SAMPLE_BYTES))
        f.seek(max(0, stat.st_size - _SAMPLE_BYTES))
        digest.add("tail", f.read(_SAMPLE_BYTES))


def _add_shipped_config(digest: _Digest, spec: ModelSpec, component: Component) -> None:
    # what the loader builds from (read_config), canonicalised so formatting does not count
    config = json.dumps(spec.read_config(component), sort_keys=True, separators=(",", ":"))
    digest.add("shipped", component, config)


def _add_offline_tokenizer(digest: _Digest, spec: ModelSpec) -> None:
    bpe = (files("livediffusion_models") / "data" / BPE_FILE).read_bytes()
    digest.add("offline tokenizer", spec.pad_token, bpe)
