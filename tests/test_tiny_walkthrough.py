"""The README's CPU walkthrough, as written, for every family of ``treesdk tiny --list``: build
the tiny folder, train one iteration at the folder's defaults (``--backend diffusers --model DIR``
with the walkthrough's tree and reward flags, no size flags), sample from the run and export its
LoRA. Before the tiny folders carried their size (``treesdk_defaults.json``) a tiny Wan crashed in
its RoPE (81 default frames) and a tiny Z-Image trained at 1024 px."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("diffusers")
from treesdk_backends.tiny import FAMILIES  # noqa: E402

from treesdk_cli.main import app  # noqa: E402

runner = CliRunner()


def ok(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_readme_walkthrough_runs_at_the_tiny_defaults(family, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    assert family in ok("tiny", "--list").split()
    ok("tiny", "--family", family, "--out", tmp_path / "tiny")
    ok("train", "--backend", "diffusers", "--model", tmp_path / "tiny", "--algo", "treegrpo", "--k", "2", "--d", "2",
       "--steps", "4", "--iters", "1", "--batch", "1", "--reward", "jpeg-compressibility", "--lora-rank", "4",
       "--out", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    describe = config["backend"]["describe"]
    assert describe["resolution"] == FAMILIES[family].backend_defaults["resolution"], describe
    ok("sample", "--run", tmp_path / "run", "--prompt", "a red apple", "--seeds", "1", "--steps", "2",
       "--out", tmp_path / "apple.png")
    assert (tmp_path / "apple.png").stat().st_size > 0
    ok("export", tmp_path / "run", "--format", "lora", "--out", tmp_path / "lora")
    assert any((tmp_path / "lora").iterdir())
