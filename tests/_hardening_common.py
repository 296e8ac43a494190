"""What the hardening tests share: the CLI runner and its one-line-error check, the analytic
plugins (``mixture`` backend, ``brightness`` reward, ...) registered for a test, a finished run of
them, and a digits run folder with checkpoints and an export.

Fixtures are imported by name into the test modules that use them
(``from _hardening_common import plugins, finished``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _hardening_plugins import fake_distribution
from typer.testing import CliRunner

from treesdk_cli.main import app

TESTS = Path(__file__).parent
runner = CliRunner()
MIXTURE = ["--backend", "mixture", "--steps", "6", "--d", "3", "--batch", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def failed(result, code: int = 1) -> str:
    """The output of a command that ended with ``code`` and no traceback, on one line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return " ".join(result.output.split())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli_script(script: str, *, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -c script`` in ``cwd`` with the tests folder and the analytic plugins importable."""
    site = cwd / "site"
    path = os.pathsep.join(p for p in (str(TESTS), str(site), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, TREESDK_DEBUG=""))


def train(tmp_path, *args):
    return invoke("train", *MIXTURE, "--reward", "brightness", "--prompts", tmp_path / "prompts.txt", *args)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The analytic plugins registered for this process (``site/`` on sys.path), the working
    folder ``tmp_path`` and three prompts in ``prompts.txt``."""
    site = fake_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a\nb\nc\n")
    return tmp_path


@pytest.fixture
def finished(plugins):
    """A finished two-iteration run of the analytic pair in ``plugins / "run"``."""
    result = train(plugins, "--iters", "2", "--out", plugins / "run")
    assert result.exit_code == 0, result.output
    return plugins / "run"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A digits run folder (one iteration, 4 steps, a checkpoint and its ``digits`` export), made
    once per test module; copy it before changing it."""
    import treesdk

    run = tmp_path_factory.mktemp("digits") / "run"
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm("treegrpo", **{**backend.recipe_defaults(), "steps": 4, "tree.d": 2})
    treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")}, ["the digit seven"],
                  iters=1, batch=1, seed=3, checkpoint_every=1, export_format="digits", out_dir=run)
    assert (run / "export" / "digits.safetensors").is_file()
    return run
