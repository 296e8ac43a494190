"""The one hub-cache resolver (treesdk.hub_cache): the roots huggingface_hub reads, refs to snapshots, files."""

from __future__ import annotations

import sys
import types

import pytest

from treesdk import hub_cache

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture
def cache(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _snapshot(cache, repo_id, commit, ref=None, files=("config.json",)):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text("{}")
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit + "\n")
    return folder


def test_root_follows_the_environment_first_then_huggingface_hub_constants(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", types.SimpleNamespace(HF_HUB_CACHE=str(tmp_path / "c")))
    assert hub_cache_root_is(tmp_path / "c")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_root_is(tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_cache_root_is(tmp_path / "hub")
    monkeypatch.delitem(sys.modules, "huggingface_hub.constants")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_root_is(tmp_path / "xdg" / "huggingface" / "hub")


def hub_cache_root_is(path) -> bool:
    return hub_cache.hub_cache_root() == path


def test_snapshot_follows_refs_and_commits(cache):
    old = _snapshot(cache, "org/model", COMMIT_A)
    new = _snapshot(cache, "org/model", COMMIT_B, ref="main")
    assert hub_cache.hub_snapshot("org/model") == new
    assert hub_cache.hub_snapshot("org/model", revision=COMMIT_A) == old
    assert hub_cache.hub_snapshot("org/model", revision="v2") is not None  # no refs/v2: the newest folder
    (cache / "models--org--model" / "refs" / "main").write_text("c" * 40)
    assert hub_cache.hub_snapshot("org/model") is None  # refs name a commit that is not on disk


def test_snapshot_without_refs_is_the_newest_and_missing_repos_are_none(cache):
    folder = _snapshot(cache, "bert-base-uncased", COMMIT_A)  # a legacy one-segment id
    assert hub_cache.hub_snapshot("bert-base-uncased") == folder
    assert hub_cache.hub_snapshot("org/not-cached") is None
    assert hub_cache.hub_snapshot("./org/model") is None and hub_cache.hub_snapshot("a/b/c") is None


def test_file_and_repo_id_of_a_cached_path(cache):
    folder = _snapshot(cache, "org/model", COMMIT_A, ref="main", files=("weights.pt",))
    assert hub_cache.hub_file("org/model", "weights.pt") == folder / "weights.pt"
    assert hub_cache.hub_file("org/model", "other.pt") is None
    assert hub_cache.hub_repo_id_of(folder) == "org/model"
    assert hub_cache.hub_repo_id_of("/some/local/folder") is None
