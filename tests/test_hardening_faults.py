"""The faults of issue 26, each reproduced: a bogus device, unknown backend options in a run
folder, a torn metrics line on resume, rewards that raise or return the wrong thing, signals at
start-up and between an iteration and its checkpoint, a full disk, and inputs a tiny model cannot
take. Each ends with one line (exit 1, 130 on SIGINT), no traceback, and no finished work lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hardening_plugins import fake_distribution
from typer.testing import CliRunner

from treesdk_cli.main import app

TESTS = Path(__file__).parent
runner = CliRunner()
MIXTURE = ["--backend", "mixture", "--steps", "6", "--d", "3", "--batch", "2"]


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    site = fake_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a\nb\nc\n")
    return tmp_path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def train(tmp_path, *args):
    return invoke("train", *MIXTURE, "--reward", "brightness", "--prompts", tmp_path / "prompts.txt", *args)


def failed(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return " ".join(result.output.split())


@pytest.fixture
def finished(plugins):
    result = train(plugins, "--iters", "2", "--out", plugins / "run")
    assert result.exit_code == 0, result.output
    return plugins / "run"


def test_a_bogus_device_is_one_line_before_anything_is_written(plugins):
    """``--device bogus`` was a torch traceback (train) or a RuntimeError (sample, eval)."""
    out = failed(invoke("train", "--iters", "1", "--device", "bogus", "--out", plugins / "r"))
    assert "--device" in out and "'bogus' is not a torch device" in out and "cuda:N" in out
    assert not (plugins / "r").exists() and not (plugins / "runs").exists()
    for command in (["sample", "--out", plugins / "s.png"], ["eval"]):
        out = failed(invoke(*command, "--device", "bogus", "--seeds", "1"))
        assert "--device: 'bogus' is not a torch device" in out
    assert not (plugins / "s.png").exists()


def test_an_unknown_backend_option_in_a_run_folder_is_one_line_everywhere(finished):
    """``"options": {"nosuch": 1}`` in config.json: sample, eval, export and resume name the key and
    list the accepted ones, as ``--backend-opt`` does (was a TypeError traceback)."""
    config = json.loads((finished / "config.json").read_text())
    config["backend"]["options"] = {"nosuch": 1}
    (finished / "config.json").write_text(json.dumps(config))
    from treesdk.training.runs import load_trained_backend

    with pytest.raises(ValueError, match="config.json backend.options.*'nosuch'.*its options are"):
        load_trained_backend(finished)  # what export, sample and eval call
    for command in (["sample", "--run", finished, "--seeds", "1", "--out", finished.parent / "s.png"],
                    ["eval", finished, "--seeds", "1"]):
        out = failed(invoke(*command))
        assert "'nosuch'" in out and "its options are" in out and "logits" in out, out
    out = failed(invoke("train", "--resume", "--out", finished, "--iters", "3"))
    assert "'nosuch'" in out and "its options are" in out
