"""Where downloaded weights live.

One folder per user, outside the package (site-packages may be read-only and is wiped on
upgrade). Precedence, most explicit first: an argument (``--cache-dir``), the environment
variable ``LIVEDIFFUSION_CACHE``, the platform's user cache folder. Hub downloads go under
``<cache>/hub`` in huggingface_hub's own layout, so its tools (``hf cache ls``) understand it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LIVEDIFFUSION_CACHE"
APP_NAME = "livediffusion"


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the livediffusion cache folder (not created: reading must not write)."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit).expanduser().absolute()
    from_env = os.environ.get(CACHE_ENV, "")
    if from_env:
        return Path(from_env).expanduser().absolute()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME, appauthor=False))


def hub_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder handed to huggingface_hub as ``cache_dir``."""
    return cache_dir(explicit) / "hub"


def hub_repo_dir(repo_id: str, explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the cache folder of one hub repository: the folder to delete to re-download it."""
    return hub_cache_dir(explicit) / repo_folder_name(repo_id)


def repo_folder_name(repo_id: str) -> str:
    """huggingface_hub's folder name for a model repo (``models--owner--name``)."""
    return "models--" + repo_id.replace("/", "--")
