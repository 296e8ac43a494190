"""``treesdk plugins``: lists every entry point with distribution, version and load status, and a
broken plugin is reported with its error without hiding the others."""

from __future__ import annotations

import importlib.metadata as metadata
import json

import pytest
from typer.testing import CliRunner

import treesdk.registry as registry
from treesdk_cli.main import app

BUILTIN_REWARDS = {
    "jpeg-compressibility", "jpeg-incompressibility", "hpsv2", "hpsv2.1", "imagereward",
    "pickscore", "clipscore", "aesthetic", "ocr",
}


def run(*args: str):
    result = CliRunner().invoke(app, ["plugins", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_json_lists_all_kinds_with_distribution_and_version():
    rows = json.loads(run("--json"))
    kinds = {row["kind"] for row in rows}
    assert kinds == {"backend", "reward", "algorithm", "recipe_form", "diffusers_family"}  # the groups with built-in entries
    rewards = {row["name"]: row for row in rows if row["kind"] == "reward"}
    assert BUILTIN_REWARDS <= set(rewards)
    for name in BUILTIN_REWARDS:
        assert rewards[name]["distribution"] == "treesdk" and rewards[name]["version"] == metadata.version("treesdk")
        assert rewards[name]["ok"], rewards[name]["error"]
    assert {row["name"] for row in rows if row["kind"] == "algorithm"} >= {"grpo", "mixgrpo", "treegrpo", "dynamic-treerpo"}


def test_kind_filter_and_bad_kind():
    rows = json.loads(run("--json", "--kind", "algorithm"))
    assert rows and {row["kind"] for row in rows} == {"algorithm"}
    result = CliRunner().invoke(app, ["plugins", "--kind", "widget"])
    assert result.exit_code != 0 and "widget" in result.output


def test_table_shows_names_and_status():
    out = run("--kind", "reward")
    for name in ("hpsv2.1", "pickscore", "jpeg-compressibility"):
        assert name in out
    assert "treesdk" in out and "ok" in out


@pytest.fixture
def broken_plugin(monkeypatch):
    """A fake distribution registering a reward whose module does not import."""
    broken = metadata.EntryPoint(name="broken-reward", value="no_such_module_xyz:Reward", group="treesdk.rewards")
    real = metadata.entry_points

    def entry_points(**params):
        found = real(**params)
        if params.get("group") == "treesdk.rewards":
            return metadata.EntryPoints([*found, broken])
        return found

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    return "broken-reward"


def test_broken_plugin_is_listed_with_its_error(broken_plugin):
    rows = {row["name"]: row for row in json.loads(run("--json", "--kind", "reward"))}
    assert not rows[broken_plugin]["ok"]
    assert "no_such_module_xyz" in rows[broken_plugin]["error"]
    assert rows["jpeg-compressibility"]["ok"]
    out = run("--kind", "reward")
    assert "failed to import" in out and "jpeg-compressibility" in out


def test_verbose_table_shows_entry_points():
    out = run("--kind", "reward", "--verbose")
    assert "treesdk_plugins.jpeg:JpegCompressibilityReward" in out
