"""The local Hugging Face hub cache, read without a download: the snapshot folder of a repo id.

The cache root is ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub`` (the
rules of ``huggingface_hub.constants``); a repo ``org/name`` lives in ``models--org--name``, its
revisions in ``snapshots/<commit>``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hub_cache_root", "hub_repo_folder", "hub_snapshot"]


def hub_cache_root() -> Path:
    """The hub cache folder (it need not exist)."""
    hub = os.environ.get("HF_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser() / "hub"


def hub_repo_folder(repo_id: str) -> Path:
    """Where the cache keeps ``repo_id`` (``org/name``), whether or not it is there."""
    return hub_cache_root() / f"models--{repo_id.replace('/', '--')}"


def hub_snapshot(repo_id: str) -> Path | None:
    """The newest local snapshot of ``repo_id`` (``org/name``) in the cache, or None (no download)."""
    if "/" not in repo_id:
        return None
    snapshots = hub_repo_folder(repo_id) / "snapshots"
    if not snapshots.is_dir():
        return None
    found = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
