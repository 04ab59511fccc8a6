"""What one weights lookup knows (the model, the ``--weights`` value, the cache, whether it may
download) and the commands its messages name; shared by resolution (``plan``) and the hub
(``hub``), which otherwise would import each other."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from livediffusion_models.cache import hub_cache_dir
from livediffusion_models.registry import ModelSpec
from livediffusion_models.weights.files import _is_hub_id

__all__ = ["RANDOM", "TINY", "download_command"]

RANDOM = "random"
TINY = "tiny"
"""The model's architecture scaled down, random (see ``weights.tiny``): soak, CI, demos."""
_BUILT = (RANDOM, TINY)
"""``--weights`` values that are built, not loaded: no files, nothing to download."""


def _cache_roots(cache_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Our hub cache first, then huggingface_hub's default one (read-only use)."""
    from huggingface_hub import constants

    ours = hub_cache_dir(cache_dir)
    roots = [ours]
    default = Path(constants.HF_HUB_CACHE).expanduser().absolute()
    if default != ours:
        roots.append(default)
    return roots


def download_command(
    spec: ModelSpec,
    *,
    weights: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The CLI command that fetches what ``load_model(spec, weights)`` needs."""
    command = f"livediffusion download --model {shlex.quote(spec.name)}"
    if weights is not None and weights not in (spec.hub_id, *_BUILT):
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
    # the hub answered once in this call: no need to ask again for the next repo
    hub_answered: bool = False

    def command_for(self, repo_id: str | None = None) -> str:
        """The download command for this call; for a folder it fetches only missing parts."""
        weights = self.weights
        if repo_id is not None and repo_id not in self.own_repos:
            weights = repo_id
        elif weights not in _BUILT and not _is_hub_id(weights):
            weights = str(Path(weights).expanduser().absolute())
        return download_command(self.spec, weights=weights, cache_dir=self.cache_dir)

    def model_command(self) -> str:
        """The download command for the model's own repos, whatever --weights said."""
        return download_command(self.spec, cache_dir=self.cache_dir)

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
