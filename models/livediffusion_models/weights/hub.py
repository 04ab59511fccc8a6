"""The Hugging Face hub: cache roots, offline detection, cached snapshots, downloads, progress.

Caches are read directly (the layout is documented and stable), so a model downloaded once
works offline; the network is touched only for a cache miss, after one quick check that the
hub answers at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from livediffusion_models.cache import repo_folder_name
from livediffusion_models.errors import ModelError, WeightsNotFoundError
from livediffusion_models.weights.context import _cache_roots
from livediffusion_models.weights.files import (
    _find_weights,
    _format_of,
    _names_in,
    _pick_weight_names,
)

if TYPE_CHECKING:
    from livediffusion_models.weights.context import _Context

_PROBE_TIMEOUT_S = 3.0


def _offline() -> bool:
    """huggingface_hub reads HF_HUB_OFFLINE once at import; read it again so it can change."""
    from huggingface_hub import constants

    env = any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return env or bool(constants.HF_HUB_OFFLINE)


def _hub_url(repo_id: str = "") -> str:
    """The hub's address as huggingface_hub will use it (``HF_ENDPOINT`` moves it)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}" if repo_id else constants.ENDPOINT


def _hub_unreachable() -> str | None:
    """Say why the hub cannot be reached right now, or None when it answers.

    Without a network, huggingface_hub retries each request five times with backoff (about
    25 s, logging two warnings per try) before it gives up, and there is no setting to turn
    that off for listing or downloading. One HEAD request with a short timeout answers the
    same question in at most ``_PROBE_TIMEOUT_S``. It goes through huggingface_hub's own
    shared HTTP client, so proxies, certificates and a custom client factory apply as they
    will for the download. Any HTTP answer counts as reachable: what the real request then
    gets (404, 401, 503) is reported with its own reason.
    """
    from huggingface_hub.utils import get_session

    url = _hub_url()
    try:
        get_session().head(url, timeout=_PROBE_TIMEOUT_S)
    except Exception as error:  # httpx/requests errors differ between versions; all mean "no"
        return f"cannot reach {url} ({type(error).__name__}: {error})"
    return None


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
    looked_in.append(_hub_url(repo_id))
    if not ctx.hub_answered:
        unreachable = _hub_unreachable()
        if unreachable is not None:
            raise WeightsNotFoundError(
                wanted_what, looked_in=looked_in, fix=fix, reason=unreachable
            )
        ctx.hub_answered = True

    from huggingface_hub import HfApi, snapshot_download

    target = roots[0]
    try:
        listing = HfApi().list_repo_files(repo_id)
        missing = [s for s in required if _pick_weight_names(_names_in(listing, s)) is None]
        if missing:
            raise WeightsNotFoundError(
                wanted_what,
                looked_in=looked_in,
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
            looked_in=looked_in,
            fix=fix,
            reason=f"download failed: {type(error).__name__}: {error}",
        ) from error
    return Path(path)


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
