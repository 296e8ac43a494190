"""The local Hugging Face hub cache, read without a download: the one resolver of repo ids to
snapshot folders and files for treesdk, its backends and its reward plugins.

The cache root follows the environment variables ``huggingface_hub`` reads, looked up at each
call (so the answer does not depend on what was imported before): ``HF_HUB_CACHE`` (or the older
``HUGGINGFACE_HUB_CACHE``), else ``HF_HOME/hub``; with neither set, ``huggingface_hub``'s
``constants.HF_HUB_CACHE`` when that module is loaded (a program may set it), else
``XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``. A repo ``org/name`` (or a
legacy one-segment id such as ``bert-base-uncased``) lives in ``models--org--name``;
``refs/<revision>`` names the commit whose files are in ``snapshots/<commit>``. This module needs
no ``huggingface_hub`` installed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

__all__ = ["hub_cache_root", "hub_file", "hub_repo_folder", "hub_repo_id_of", "hub_snapshot", "is_repo_id"]

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_CACHED = re.compile(r"models--([^/\\]+?)--([^/\\]+)")


def hub_cache_root() -> Path:
    """The hub cache folder (it need not exist)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and getattr(constants, "HF_HUB_CACHE", None):
        return Path(constants.HF_HUB_CACHE).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def is_repo_id(name: str) -> bool:
    """``owner/name`` or a legacy one-segment id (``bert-base-uncased``), not a path."""
    return bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~")) and not name.endswith("/")


def hub_repo_folder(repo_id: str) -> Path:
    """Where the cache keeps ``repo_id``, whether or not it is there."""
    return hub_cache_root() / f"models--{repo_id.replace('/', '--')}"


def hub_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """The local snapshot folder of ``repo_id`` at ``revision`` (a branch or tag through
    ``refs/<revision>``, or a 40-hex commit), or None when it is not cached; never downloads.

    A cache without the ``refs`` file (copied by hand) falls back to its newest snapshot folder.
    """
    if not is_repo_id(repo_id):
        return None
    snapshots = hub_repo_folder(repo_id) / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = hub_repo_folder(repo_id) / "refs" / revision
    commit = revision if _COMMIT.match(revision) else (ref.read_text().strip() if ref.is_file() else None)
    if commit is not None:
        folder = snapshots / commit
        return folder if folder.is_dir() else None
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def hub_file(repo_id: str, filename: str, revision: str = "main") -> Path | None:
    """``filename`` (a path inside the repo) of the cached snapshot of ``repo_id``, or None."""
    snapshot = hub_snapshot(repo_id, revision)
    if snapshot is None or not (snapshot / filename).is_file():
        return None
    return snapshot / filename


def hub_repo_id_of(path: str | os.PathLike[str]) -> str | None:
    """``org/name`` when ``path`` lies inside a hub cache entry (``.../models--org--name/...``), else None."""
    match = _CACHED.search(os.fspath(path))
    return f"{match.group(1)}/{match.group(2)}" if match else None
