"""``treesdk plugins`` reports whether each reward's weights are on disk and where it looked, from the
same lookup the rewards use when they load, without loading anything and without network access."""

from __future__ import annotations

import importlib.metadata as metadata
import json

import huggingface_hub.constants
import pytest
import torch
from typer.testing import CliRunner

import treesdk.registry as registry
from treesdk_cli.main import app
from treesdk_plugins import common
from treesdk_plugins.hpsv2 import HPSv2Reward


@pytest.fixture
def empty_weights(tmp_path, monkeypatch):
    """An empty ``$TREESDK_WEIGHTS`` and an empty Hugging Face cache; loading any checkpoint fails."""
    weights, hf_home = tmp_path / "weights", tmp_path / "hf"
    weights.mkdir()
    hf_home.mkdir()
    monkeypatch.setenv("TREESDK_WEIGHTS", str(weights))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    # huggingface_hub reads HF_HOME once at import: point its cache (read at call time) there too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))

    def no_loading(*args, **kwargs):
        raise AssertionError("a weights status check must not load a checkpoint")

    monkeypatch.setattr(torch, "load", no_loading)
    monkeypatch.setattr(common, "load_torch_checkpoint", no_loading)
    return weights, hf_home / "hub"


def rewards_json() -> dict[str, dict]:
    result = CliRunner().invoke(app, ["plugins", "--kind", "reward", "--json"])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_hpsv2_missing_then_found_after_the_file_appears(empty_weights):
    weights, hub = empty_weights
    row = rewards_json()["hpsv2"]
    assert row["ok"] and row["weights"]["status"] == "missing" and row["weights"]["found"] is False
    looked = row["weights"]["looked"]
    assert str(weights / "HPS_v2_compressed.pt") in looked
    assert any(str(hub / "models--xswu--HPSv2") in place for place in looked)

    (weights / "HPS_v2_compressed.pt").write_bytes(b"")  # presence is all the status checks
    rows = rewards_json()
    assert rows["hpsv2"]["weights"]["status"] == "found" and rows["hpsv2"]["weights"]["found"] is True
    assert str(weights / "HPS_v2_compressed.pt") in rows["hpsv2"]["weights"]["looked"]
    assert rows["hpsv2.1"]["weights"]["status"] == "missing"  # its own file name, still absent
    assert HPSv2Reward.weights_status().found is True


def test_every_builtin_reward_reports_and_json_has_the_fields(empty_weights):
    rows = rewards_json()
    expected = {
        "digit-classifier": "found", "digit-evaluator": "found",
        "jpeg-compressibility": "n/a", "jpeg-incompressibility": "n/a",
        "hpsv2": "missing", "hpsv2.1": "missing", "imagereward": "missing",
        "pickscore": "missing", "clipscore": "missing", "aesthetic": "missing", "group-diversity": "n/a",
    }
    for name, status in expected.items():
        weights = rows[name]["weights"]
        assert set(weights) == {"status", "found", "looked", "detail"}
        assert weights["status"] == status, (name, weights)
        assert isinstance(weights["looked"], list)
    assert rows["jpeg-compressibility"]["weights"]["found"] is None
    assert rows["digit-classifier"]["weights"]["looked"][0].endswith("digit_classifier.safetensors")
    assert rows["ocr"]["weights"]["status"] in {"found", "missing"}  # found iff rapidocr-onnxruntime is installed
    _, hub = empty_weights
    assert any(str(hub / "models--openai--clip-vit-base-patch32") in p for p in rows["clipscore"]["weights"]["looked"])


def test_imagereward_found_needs_all_three_parts(empty_weights, tmp_path, monkeypatch):
    weights, _ = empty_weights
    (weights / "ImageReward.pt").write_bytes(b"")
    (weights / "med_config.json").write_text("{}")
    assert rewards_json()["imagereward"]["weights"]["status"] == "missing"  # no bert-base-uncased tokenizer
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bert-base-uncased").mkdir()  # the default tokenizer as a local folder, as loading resolves it
    assert rewards_json()["imagereward"]["weights"]["status"] == "found"


@pytest.mark.parametrize("cached_as", ["bert-base-uncased", "google-bert/bert-base-uncased"])
def test_imagereward_tokenizer_is_found_in_the_hf_cache_under_either_hub_name(empty_weights, cached_as):
    """The hub renamed bert-base-uncased to google-bert/bert-base-uncased; a cache filled under either
    name serves the default ``tokenizer="bert-base-uncased"`` (the legacy one-segment id is a repo id too)."""
    weights, hub = empty_weights
    (weights / "ImageReward.pt").write_bytes(b"")
    (weights / "med_config.json").write_text("{}")
    repo = hub / f"models--{cached_as.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "vocab.txt").write_text("[PAD]\n")
    assert rewards_json()["imagereward"]["weights"]["status"] == "found"
    from treesdk_plugins.imagereward import resolve_pretrained_dir_or_vocab

    assert resolve_pretrained_dir_or_vocab("bert-base-uncased") == repo / "snapshots" / ("0" * 40)


def test_table_and_verbose_show_weights(empty_weights):
    weights, _ = empty_weights
    out = CliRunner().invoke(app, ["plugins", "--kind", "reward"]).output
    assert "weights" in out and "missing" in out and "found" in out and "n/a" in out
    out = CliRunner().invoke(app, ["plugins", "--kind", "reward", "--verbose"]).output
    assert "reward weights" in out and "HPS_v2_compressed.pt" in out
    assert str(weights).replace("\n", "")[:30] in out.replace("\n", "")


def test_reward_without_weights_status_is_unknown(monkeypatch, empty_weights):
    third_party = metadata.EntryPoint(name="no-status-reward", value="treesdk.interfaces:RewardModel", group="treesdk.rewards")
    real = metadata.entry_points

    def entry_points(**params):
        found = real(**params)
        return metadata.EntryPoints([*found, third_party]) if params.get("group") == "treesdk.rewards" else found

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    weights = rewards_json()["no-status-reward"]["weights"]
    assert weights["status"] == "unknown" and weights["found"] is None and "weights_status" in weights["detail"]
