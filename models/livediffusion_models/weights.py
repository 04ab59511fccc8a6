"""Turn a ``--weights`` value into ready-to-run modules.

``weights`` is one of:

* ``"random"``: the exact architecture from the shipped configs, seeded; no files, no network.
  For tests, benchmarks and trying the pipeline before a 1 GB download.
* a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``): its own config.json files win over the shipped ones.
* a hub id (``owner/name``): looked up in the livediffusion cache (and the default
  huggingface_hub cache) first, so it works offline once downloaded; downloaded otherwise.

Parts a source lacks are filled in explicitly, and the result says where each came from: the
VAE must be an AutoencoderTiny (the engine math assumes TAESD), so a full AutoencoderKL is
replaced by the spec's TAESD repo; a missing tokenizer is built offline; a missing scheduler
config is the shipped one.

This module imports torch, diffusers and transformers; import it only when loading.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livediffusion_models.cache import hub_cache_dir, repo_folder_name
from livediffusion_models.errors import ModelError, WeightsCorruptError, WeightsNotFoundError
from livediffusion_models.registry import ModelSpec

if TYPE_CHECKING:
    import torch

RANDOM = "random"

_WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
_HUB_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_CONFIG_NAME = "config.json"
_SCHEDULER_CONFIG_NAME = "scheduler/scheduler_config.json"
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FP16 = "fp16"
_WEIGHT_STEMS = tuple(
    f"{stem}{sep}" for stem in ("diffusion_pytorch_model", "model", "pytorch_model") for sep in ".-"
)


# --------------------------------------------------------------------------------------------
# Result


@dataclass(frozen=True)
class LoadedModel:
    """The modules of one model, in eval mode with gradients off, plus where they came from."""

    spec: ModelSpec
    unet: Any
    """diffusers ``UNet2DConditionModel``."""
    vae: Any
    """diffusers ``AutoencoderTiny`` (always: the engine math assumes TAESD)."""
    text_encoder: Any
    """transformers ``CLIPTextModel``."""
    tokenizer: Any
    """transformers ``CLIPTokenizer``."""
    scheduler_config: dict[str, Any]
    """For ``<SchedulerClass>.from_config``; the engine reads only the noise schedule from it."""
    source: str
    """Human-readable provenance of every part, for logs and ``--verbose``."""


# --------------------------------------------------------------------------------------------
# Finding files


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


# --------------------------------------------------------------------------------------------
# Messages


def download_command(
    spec: ModelSpec,
    *,
    weights: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The CLI command that fetches what ``load_model(spec, weights)`` needs."""
    command = f"livediffusion download --model {shlex.quote(spec.name)}"
    if weights is not None and weights not in (spec.hub_id, RANDOM):
        command += f" --weights {shlex.quote(weights)}"
    if cache_dir is not None:
        command += f" --cache-dir {shlex.quote(str(cache_dir))}"
    return command


@dataclass
class _Context:
    """Per-call settings threaded through resolution, so messages can name the right command."""

    spec: ModelSpec
    weights: str
    cache_dir: str | os.PathLike[str] | None
    allow_download: bool
    # the repos the spec itself names; a download command for the model fetches these
    own_repos: frozenset[str] = field(default_factory=frozenset)

    def command_for(self, repo_id: str | None = None) -> str:
        """The download command for this call; for a folder it fetches only missing parts."""
        weights = self.weights
        if repo_id is not None and repo_id not in self.own_repos:
            weights = repo_id
        elif weights != RANDOM and not _is_hub_id(weights):
            weights = str(Path(weights).expanduser().absolute())
        return download_command(self.spec, weights=weights, cache_dir=self.cache_dir)

    def corrupt_fix(self, path: Path) -> str:
        for root in _cache_roots(self.cache_dir):
            try:
                relative = path.absolute().relative_to(root)
            except ValueError:
                continue
            repo_dir = root / relative.parts[0]
            repo_id = relative.parts[0].removeprefix("models--").replace("--", "/")
            return f"delete the cache folder {repo_dir} and re-run `{self.command_for(repo_id)}`"
        return (
            f"the file is incomplete or damaged: copy or export {path.parent} again, "
            f"or pass --weights {self.spec.hub_id} to download the model"
        )


def _cache_roots(cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Our hub cache first, then huggingface_hub's default one (read-only use)."""
    from huggingface_hub import constants

    ours = hub_cache_dir(cache_dir)
    roots = [ours]
    default = Path(constants.HF_HUB_CACHE).expanduser().absolute()
    if default != ours:
        roots.append(default)
    return roots


def _offline() -> bool:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so it can change."""
    from huggingface_hub import constants

    env = any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return env or bool(constants.HF_HUB_OFFLINE)


# --------------------------------------------------------------------------------------------
# Hub


def _cached_snapshot(root: Path, repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot folder ``revision`` points at in a huggingface_hub cache, if any.

    Read directly (the layout is documented and stable) rather than through
    ``snapshot_download(local_files_only=True)``, whose completeness rules differ between
    huggingface_hub versions and count files we deliberately skipped (fp32 copies).
    """
    repo_dir = root / repo_folder_name(repo_id)
    ref = repo_dir / "refs" / revision
    try:
        commit = ref.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    snapshot = repo_dir / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _component_dir(root: Path, subfolder: str) -> Path:
    return root / subfolder if subfolder else root


def _select_hub_files(listing: Sequence[str], subfolders: Iterable[str]) -> list[str]:
    """Exact file names to fetch: configs, tokenizer files, one weights variant per folder."""
    chosen: list[str] = []
    for sub in subfolders:
        prefix = f"{sub}/" if sub else ""
        names = _names_in(listing, sub)
        if sub in ("tokenizer", "scheduler"):
            chosen.extend(prefix + n for n in names)
            continue
        chosen.extend(prefix + n for n in names if n.endswith(".json") and _format_of(n) is None)
        picked = _pick_weight_names(names)
        if picked is not None:
            chosen.extend(prefix + n for n in picked[0])
    if "model_index.json" in listing:
        chosen.append("model_index.json")
    return sorted(set(chosen))


def _hub_snapshot(
    repo_id: str, *, required: Sequence[str], wanted: Sequence[str], ctx: _Context
) -> Path:
    """A snapshot of ``repo_id`` holding weights for every ``required`` subfolder.

    The caches come first so a downloaded model works offline; then one download of
    everything ``wanted`` (one round trip instead of one per missing part).
    """
    roots = _cache_roots(ctx.cache_dir)
    looked_in: list[str] = []
    for root in roots:
        looked_in.append(str(root / repo_folder_name(repo_id)))
        snapshot = _cached_snapshot(root, repo_id)
        if snapshot is not None and all(
            _find_weights(_component_dir(snapshot, s)) is not None for s in required
        ):
            return snapshot

    parts = ", ".join(f"{s}/" if s else "root" for s in required)
    wanted_what = f"hub repo {repo_id} ({parts} weights)"
    fix = (
        f"run `{ctx.command_for(repo_id)}` while online, "
        "or pass --weights /path/to/folder or --weights random"
    )
    if not ctx.allow_download:
        raise WeightsNotFoundError(wanted_what, looked_in=looked_in, fix=fix)
    if _offline():
        raise WeightsNotFoundError(
            wanted_what, looked_in=looked_in, fix=fix, reason="offline (HF_HUB_OFFLINE is set)"
        )

    from huggingface_hub import HfApi, snapshot_download

    target = roots[0]
    try:
        listing = HfApi().list_repo_files(repo_id)
        missing = [s for s in required if _pick_weight_names(_names_in(listing, s)) is None]
        if missing:
            raise WeightsNotFoundError(
                wanted_what,
                looked_in=[*looked_in, f"https://huggingface.co/{repo_id}"],
                fix="pass a repo or folder with diffusers-format weights, or --weights random",
                reason=f"the repo has no weights in {', '.join(missing)}",
            )
        allow = _select_hub_files(listing, dict.fromkeys([*required, *wanted]))
        path = snapshot_download(repo_id, cache_dir=target, allow_patterns=allow)
    except ModelError:
        raise
    except Exception as error:  # network, auth, missing repo: all mean "not available now"
        raise WeightsNotFoundError(
            wanted_what,
            looked_in=[*looked_in, f"https://huggingface.co/{repo_id}"],
            fix=fix,
            reason=f"download failed: {type(error).__name__}: {error}",
        ) from error
    return Path(path)


def _names_in(listing: Sequence[str], subfolder: str) -> list[str]:
    prefix = f"{subfolder}/" if subfolder else ""
    return [
        f[len(prefix) :] for f in listing if f.startswith(prefix) and "/" not in f[len(prefix) :]
    ]


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn the download and loading bars off for ``progress=False``, then restore them.

    huggingface_hub, transformers and diffusers each have their own global switch (older
    huggingface_hub opens one bar per file, outside ``tqdm_class``), so flip all three.
    """
    if enabled:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    switches: list[tuple[Callable[[], object], Callable[[], object]]] = []
    if not hub_utils.are_progress_bars_disabled():
        switches.append((hub_utils.disable_progress_bars, hub_utils.enable_progress_bars))
    for library in (diffusers_logging, transformers_logging):
        if library.is_progress_bar_enabled():
            switches.append((library.disable_progress_bar, library.enable_progress_bar))
    for disable, _ in switches:
        disable()
    try:
        yield
    finally:
        for _, enable in switches:
            enable()


# --------------------------------------------------------------------------------------------
# Resolution: where each part comes from


@dataclass(frozen=True)
class _Part:
    folder: Path
    """The component folder (``.../unet`` or a TAESD repo root)."""
    origin: str


@dataclass(frozen=True)
class _Plan:
    main: Path
    unet: _Part
    vae: _Part
    text_encoder: _Part
    tokenizer: _Part | None
    """None: build the offline tokenizer."""
    scheduler_config: Path | None
    """None: the shipped config."""


def _origin(root: Path, hub_id: str | None) -> str:
    return f"hub {hub_id} ({root})" if hub_id else str(root)


def _is_tiny_vae(folder: Path, ctx: _Context) -> bool:
    config = folder / _CONFIG_NAME
    if not config.is_file() or _find_weights(folder) is None:
        return False
    return _read_json(config, fix=ctx.corrupt_fix(config)).get("_class_name") == "AutoencoderTiny"


def _plan(ctx: _Context) -> _Plan:
    spec = ctx.spec
    weights = ctx.weights
    main_hub: str | None = None
    local = Path(weights).expanduser()
    if local.is_dir():
        main = local.absolute()
        if _find_weights(main / "unet") is None:
            raise WeightsNotFoundError(
                f"UNet weights for {spec.name} in {main}",
                looked_in=[main / "unet"],
                fix=(
                    "point --weights at a diffusers folder (unet/, vae/, text_encoder/, "
                    f"tokenizer/, scheduler/), or run `{ctx.command_for()}`, "
                    "or pass --weights random"
                ),
                reason="no unet/ folder with diffusion_pytorch_model weights",
            )
    elif local.exists():
        raise ModelError(
            f"{local} is a file; pass a diffusers folder (unet/, vae/, text_encoder/, ...) "
            "as --weights: single-file checkpoints are not supported"
        )
    elif _is_hub_id(weights):
        main_hub = weights
        wanted = [s for s in _HUB_SUBFOLDERS if not (s == "vae" and spec.vae_hub_id)]
        # the spec's own repo is known to be complete; any other repo need only have a UNet
        required = ["unet"]
        if weights == spec.hub_id:
            required += [s for s in ("text_encoder", "vae") if s in wanted]
        main = _hub_snapshot(weights, required=required, wanted=wanted, ctx=ctx)
    else:
        raise WeightsNotFoundError(
            f"weights folder {weights}",
            looked_in=[local.absolute()],
            fix=(
                "check the path, or pass a hub id (owner/name), --weights random, or run "
                f"`{ctx.command_for()}` and leave --weights out"
            ),
            reason="no such folder, and not a hub id",
        )

    unet = _Part(main / "unet", _origin(main, main_hub))

    # text encoder, and its tokenizer next to it when there is one
    if _find_weights(main / "text_encoder") is not None:
        te_root, te_hub = main, main_hub
    else:
        te_root = _hub_snapshot(
            spec.text_encoder_hub_id,
            required=("text_encoder",),
            wanted=("tokenizer",),
            ctx=ctx,
        )
        te_hub = spec.text_encoder_hub_id
    text_encoder = _Part(te_root / "text_encoder", _origin(te_root, te_hub))
    tokenizer: _Part | None = None
    for root, hub in ((main, main_hub), (te_root, te_hub)):
        if _has_tokenizer(root / "tokenizer"):
            tokenizer = _Part(root / "tokenizer", _origin(root, hub))
            break

    # VAE: must be an AutoencoderTiny; a full AutoencoderKL in vae/ is passed over
    if _is_tiny_vae(main / "vae", ctx):
        vae = _Part(main / "vae", _origin(main, main_hub))
    else:
        taesd = spec.taesd_hub_id
        vae_root = _hub_snapshot(taesd, required=("",), wanted=(), ctx=ctx)
        if not _is_tiny_vae(vae_root, ctx):
            raise ModelError(f"{taesd} ({vae_root}) does not hold an AutoencoderTiny")
        vae = _Part(vae_root, _origin(vae_root, taesd))

    scheduler = main / _SCHEDULER_CONFIG_NAME
    return _Plan(
        main=main,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler_config=scheduler if scheduler.is_file() else None,
    )


# --------------------------------------------------------------------------------------------
# Building modules


def _check_files(weights: _WeightFiles, ctx: _Context) -> None:
    """Catch truncated safetensors up front, with the file name (loaders report it vaguely)."""
    if not weights.safetensors:
        return
    from safetensors import safe_open

    for path in weights.files:
        if not path.name.endswith(".safetensors"):
            continue  # a shard index (JSON)
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError has no stable import path
            raise WeightsCorruptError(
                path, fix=ctx.corrupt_fix(path), reason=str(error) or type(error).__name__
            ) from error


def _load_state_dict(weights: _WeightFiles, ctx: _Context) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {}
    for path in weights.files:
        try:
            if path.name.endswith(".json"):
                continue
            if weights.safetensors:
                from safetensors.torch import load_file

                state.update(load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:
            raise WeightsCorruptError(path, fix=ctx.corrupt_fix(path), reason=str(error)) from error
    return state


def _finish(module: Any, dtype: torch.dtype) -> Any:
    """Inference only: eval mode, no autograd bookkeeping, one dtype for the whole model."""
    import torch

    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        if getattr(module, "_keep_in_fp32_modules", None):
            module.to(dtype=dtype)
        else:
            # diffusers 0.42's ModelMixin.to warns about fp32-only modules on every dtype cast,
            # even when the list is empty (as for these models); nothing to keep, so skip it
            torch.nn.Module.to(module, dtype=dtype)
    module.eval()
    module.requires_grad_(False)
    return module


def _from_folder(
    part: _Part,
    *,
    load: Callable[[Path, _WeightFiles], Any],
    build: Callable[[], Any],
    drop_keys: Sequence[str] = (),
    ctx: _Context,
) -> Any:
    """Load one module: the folder's own config when present, else the shipped one + strict load."""
    weights = _find_weights(part.folder)
    if weights is None:  # resolution checked this; a file vanished since
        raise WeightsNotFoundError(
            f"weights in {part.folder}", looked_in=[part.folder], fix=ctx.command_for()
        )
    _check_files(weights, ctx)
    config = part.folder / _CONFIG_NAME
    if config.is_file():
        _read_json(config, fix=ctx.corrupt_fix(config))
        try:
            return load(part.folder, weights)
        except OSError as error:
            if "Unable to load weights" not in str(error):
                raise
            raise WeightsCorruptError(
                weights.files[0], fix=ctx.corrupt_fix(weights.files[0]), reason=str(error)
            ) from error
    module = build()
    state = _load_state_dict(weights, ctx)
    for key in drop_keys:
        state.pop(key, None)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(
            f"the weights in {part.folder} do not fit the shipped {ctx.spec.name} config "
            f"and the folder has no {_CONFIG_NAME} of its own: {error}"
        ) from error
    return module


def _accelerate_available() -> bool:
    """diffusers warns loudly without accelerate unless told not to try low-memory loading."""
    from importlib.util import find_spec

    return find_spec("accelerate") is not None


def _transformers_dtype_kwarg() -> str:
    """transformers 5 renamed ``torch_dtype`` to ``dtype`` (and warns about the old name)."""
    import transformers

    major = int(transformers.__version__.split(".", 1)[0])
    return "dtype" if major >= 5 else "torch_dtype"


def _build_random(spec: ModelSpec, *, seed: int) -> tuple[Any, Any, Any]:
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    # fork_rng: seeding must not disturb the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(spec.read_config("unet"))
        vae = AutoencoderTiny.from_config(spec.read_config("vae"))
        text_encoder = _build_text_encoder(spec.read_config("text_encoder"))
    return unet, vae, text_encoder


def _build_text_encoder(config: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    values = {k: v for k, v in config.items() if not k.startswith("_") and k != "architectures"}
    return CLIPTextModel(CLIPTextConfig(**values))


def _load_from_plan(plan: _Plan, *, ctx: _Context, dtype: torch.dtype) -> tuple[Any, Any, Any]:
    from diffusers import AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel

    spec = ctx.spec
    low_mem = _accelerate_available()
    te_dtype_kwarg = _transformers_dtype_kwarg()

    def diffusers_loader(cls: Any) -> Callable[[Path, _WeightFiles], Any]:
        def load(folder: Path, weights: _WeightFiles) -> Any:
            return cls.from_pretrained(
                folder,
                variant=weights.variant,
                use_safetensors=weights.safetensors,
                torch_dtype=dtype,
                local_files_only=True,
                low_cpu_mem_usage=low_mem,
            )

        return load

    def text_encoder_loader(folder: Path, weights: _WeightFiles) -> Any:
        return CLIPTextModel.from_pretrained(
            folder,
            variant=weights.variant,
            use_safetensors=weights.safetensors,
            local_files_only=True,
            **{te_dtype_kwarg: dtype},
        )

    unet = _from_folder(
        plan.unet,
        load=diffusers_loader(UNet2DConditionModel),
        build=lambda: UNet2DConditionModel.from_config(spec.read_config("unet")),
        ctx=ctx,
    )
    vae = _from_folder(
        plan.vae,
        load=diffusers_loader(AutoencoderTiny),
        build=lambda: AutoencoderTiny.from_config(spec.read_config("vae")),
        ctx=ctx,
    )
    text_encoder = _from_folder(
        plan.text_encoder,
        load=text_encoder_loader,
        build=lambda: _build_text_encoder(spec.read_config("text_encoder")),
        # older transformers saved this buffer; newer ones recreate it and reject the key
        drop_keys=("text_model.embeddings.position_ids",),
        ctx=ctx,
    )
    return unet, vae, text_encoder


def _load_tokenizer(part: _Part | None, spec: ModelSpec, ctx: _Context) -> Any:
    from livediffusion_models.tokenizer import build_offline_tokenizer

    if part is None:
        return build_offline_tokenizer(pad_token=spec.pad_token)
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(part.folder, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        raise WeightsCorruptError(
            part.folder, fix=ctx.corrupt_fix(part.folder / "vocab.json"), reason=str(error)
        ) from error


# --------------------------------------------------------------------------------------------
# Public API


def load_model(
    spec: ModelSpec,
    weights: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    torch_dtype: torch.dtype | None = None,
    seed: int = 0,
    allow_download: bool = True,
) -> LoadedModel:
    """Load ``spec``'s modules from ``weights`` ("random", a folder or a hub id).

    ``weights=None`` means the spec's own hub repo. Modules come back on the CPU in
    ``torch_dtype`` (float32 by default: fp16 files are upcast so CPU runs work), in eval mode
    with gradients off. ``seed`` only matters for "random". ``allow_download=False`` never
    touches the network (a cache miss raises WeightsNotFoundError at once).
    """
    import torch

    dtype = torch_dtype if torch_dtype is not None else torch.float32
    weights = spec.hub_id if weights is None else weights
    ctx = _context(spec, weights, cache_dir, allow_download)

    if weights == RANDOM:
        from livediffusion_models.tokenizer import build_offline_tokenizer

        unet, vae, text_encoder = _build_random(spec, seed=seed)
        return LoadedModel(
            spec=spec,
            unet=_finish(unet, dtype),
            vae=_finish(vae, dtype),
            text_encoder=_finish(text_encoder, dtype),
            tokenizer=build_offline_tokenizer(pad_token=spec.pad_token),
            scheduler_config=spec.read_config("scheduler"),
            source=f"random weights (seed {seed}) with the shipped {spec.name} configs",
        )

    with _progress_bars(progress):
        plan = _plan(ctx)
        unet, vae, text_encoder = _load_from_plan(plan, ctx=ctx, dtype=dtype)
        tokenizer = _load_tokenizer(plan.tokenizer, spec, ctx)
    if plan.scheduler_config is not None:
        scheduler_config = _read_json(
            plan.scheduler_config, fix=ctx.corrupt_fix(plan.scheduler_config)
        )
        scheduler_origin = str(plan.scheduler_config.parent)
    else:
        scheduler_config = spec.read_config("scheduler")
        scheduler_origin = f"shipped {spec.name} config"
    source = "; ".join(
        (
            f"unet: {_describe(plan.unet)}",
            f"vae: {_describe(plan.vae)}",
            f"text_encoder: {_describe(plan.text_encoder)}",
            f"tokenizer: {plan.tokenizer.origin if plan.tokenizer else 'built offline'}",
            f"scheduler: {scheduler_origin}",
        )
    )
    return LoadedModel(
        spec=spec,
        unet=_finish(unet, dtype),
        vae=_finish(vae, dtype),
        text_encoder=_finish(text_encoder, dtype),
        tokenizer=tokenizer,
        scheduler_config=scheduler_config,
        source=source,
    )


def download(
    spec: ModelSpec,
    weights: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Fetch everything ``load_model(spec, weights)`` needs into the cache; return the main folder.

    ``weights=None`` means the spec's hub repo; a local folder gets only its missing parts
    (e.g. TAESD for a folder with a full AutoencoderKL). Nothing is loaded into memory.
    """
    weights = spec.hub_id if weights is None else weights
    if weights == RANDOM:
        raise ModelError("--weights random needs no download")
    ctx = _context(spec, weights, cache_dir, allow_download=True)
    with _progress_bars(progress):
        return _plan(ctx).main


def _describe(part: _Part) -> str:
    if (part.folder / _CONFIG_NAME).is_file():
        return part.origin
    return f"{part.origin} (shipped config)"


def _context(
    spec: ModelSpec,
    weights: str,
    cache_dir: str | os.PathLike[str] | None,
    allow_download: bool,
) -> _Context:
    own = {spec.hub_id, spec.text_encoder_hub_id, spec.taesd_hub_id}
    return _Context(
        spec=spec,
        weights=weights,
        cache_dir=cache_dir,
        allow_download=allow_download,
        own_repos=frozenset(own),
    )
