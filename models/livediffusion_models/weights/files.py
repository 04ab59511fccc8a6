"""Finding and picking weight files in one folder, and reading them without loading them.

Pure file work (no torch, no network): which files in a component folder are its weights,
which variant and format to take, and whether a JSON config or a safetensors header can be
read at all, so a damaged file is reported by name before anything else happens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livediffusion_models.errors import WeightsCorruptError

_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
_CONFIG_NAME = "config.json"
_SCHEDULER_CONFIG_NAME = "scheduler/scheduler_config.json"
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FP16 = "fp16"
_WEIGHT_STEMS = tuple(
    f"{stem}{sep}" for stem in ("diffusion_pytorch_model", "model", "pytorch_model") for sep in ".-"
)
# the safetensors library refuses larger headers; a bigger length means a damaged file
_MAX_SAFETENSORS_HEADER = 100_000_000


@dataclass(frozen=True)
class _WeightFiles:
    """One loadable set of weight files in a component folder (one variant, one format)."""

    files: tuple[Path, ...]
    variant: str | None
    safetensors: bool

    def describe(self) -> str:
        kind = "safetensors" if self.safetensors else "PyTorch .bin"
        return f"{self.variant} {kind}" if self.variant else kind


def _variant_of(name: str) -> str | None:
    """diffusers/transformers put the variant before the extension or the shard/index suffix."""
    return _FP16 if (f".{_FP16}." in name or f".{_FP16}-" in name) else None


def _format_of(name: str) -> str | None:
    """Say "safetensors" or "bin" for diffusers/transformers weight files, None otherwise.

    Only the library stems count, so side files in a repo (taesd_encoder.pth, ONNX exports,
    other tools' checkpoints) are neither downloaded nor mistaken for weights.
    """
    if not name.startswith(_WEIGHT_STEMS):
        return None
    if name.endswith(".safetensors") or ".safetensors.index" in name:
        return "safetensors"
    if name.endswith(".bin") or ".bin.index" in name:
        return "bin"
    return None


def _pick_weight_names(names: Iterable[str]) -> tuple[list[str], str | None, bool] | None:
    """Choose fp16 safetensors, else safetensors, else fp16 .bin, else .bin.

    fp16 halves the download and the engine runs in fp16 anyway; safetensors cannot run code
    on load and can be checked for truncation before loading.
    """
    groups: dict[tuple[str, str | None], list[str]] = {}
    for name in names:
        fmt = _format_of(name)
        if fmt is not None:
            groups.setdefault((fmt, _variant_of(name)), []).append(name)
    for key in (("safetensors", _FP16), ("safetensors", None), ("bin", _FP16), ("bin", None)):
        if key in groups:
            return sorted(groups[key]), key[1], key[0] == "safetensors"
    return None


def _find_weights(folder: Path) -> _WeightFiles | None:
    if not folder.is_dir():
        return None
    # exists() follows symlinks: a hub snapshot whose blob never finished counts as missing
    names = [p.name for p in folder.iterdir() if p.is_file()]
    picked = _pick_weight_names(names)
    if picked is None:
        return None
    chosen, variant, safetensors = picked
    return _WeightFiles(tuple(folder / n for n in chosen), variant, safetensors)


def _names_in(listing: Sequence[str], subfolder: str) -> list[str]:
    """The file names directly inside ``subfolder`` of a repo listing ("" = the root)."""
    prefix = f"{subfolder}/" if subfolder else ""
    return [
        f[len(prefix) :] for f in listing if f.startswith(prefix) and "/" not in f[len(prefix) :]
    ]


def _has_tokenizer(folder: Path) -> bool:
    return any(all((folder / name).is_file() for name in group) for group in _TOKENIZER_FILES)


def _read_json(path: Path, *, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsCorruptError(path, fix=fix, reason=f"not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise WeightsCorruptError(path, fix=fix, reason="expected a JSON object")
    return data


def _is_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith(".")


class _SafetensorsDamaged(ValueError):
    """A safetensors file whose header cannot be read or does not match the file's size."""


def _read_safetensors_header(path: Path) -> bytes:
    """Return the raw JSON header of a safetensors file, checked against the file's size.

    The format is: 8 bytes little-endian header length, the JSON header (tensor names,
    dtypes, shapes and ``data_offsets`` into the data that follows), then the data. The data
    must end exactly where the last tensor does, which is what the safetensors library checks
    on open; doing it here reads only the header, so a truncated download is caught in
    milliseconds, without torch, before anything else is resolved.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _SafetensorsDamaged(f"{size} bytes is too short for a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise _SafetensorsDamaged(
                f"the header claims {length} bytes but the file has {size} (truncated?)"
            )
        header = f.read(length)
    try:
        meta = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _SafetensorsDamaged(f"the header is not valid JSON ({error})") from error
    if not isinstance(meta, dict):
        raise _SafetensorsDamaged("the header is not a JSON object")
    end = 0
    for name, info in meta.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise _SafetensorsDamaged(f"tensor {name!r} has no valid data_offsets")
        end = max(end, offsets[1])
    data = size - 8 - length
    if end > data:
        raise _SafetensorsDamaged(
            f"incomplete: the tensors need {end} bytes of data, the file holds {data}"
        )
    if end < data:
        raise _SafetensorsDamaged(f"{data - end} unexpected bytes after the last tensor")
    return header


def _check_safetensors(weights: _WeightFiles, *, fix_for: Callable[[Path], str]) -> None:
    """Raise WeightsCorruptError naming the first safetensors file whose header is damaged."""
    if not weights.safetensors:
        return  # .bin (pickle/zip) cannot be checked without loading it
    for path in weights.files:
        if not path.name.endswith(".safetensors"):
            continue  # a shard index (JSON)
        try:
            _read_safetensors_header(path)
        except (OSError, _SafetensorsDamaged) as error:
            raise WeightsCorruptError(path, fix=fix_for(path), reason=str(error)) from error
