"""Run folders and run ends, one class per test: exit codes after a signal, unique and sanitised run
folders, folders owned by one run, resume of the same configuration only, metrics rewritten
atomically, and nothing lost when a run fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hardening_plugins import fake_distribution
from typer.testing import CliRunner

from treesdk.training.checkpoint import list_checkpoints
from treesdk.run_folders import claim_run_dir, sanitize_run_name
from treesdk_cli.main import app

TESTS = Path(__file__).parent
runner = CliRunner()
MIXTURE = ["--backend", "mixture", "--steps", "6", "--d", "3", "--batch", "2"]


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The analytic backend and rewards registered for this process (and PYTHONPATH for children)."""
    site = fake_distribution(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    (tmp_path / "prompts.txt").write_text("a\nb\nc\n")
    return tmp_path


def train(tmp_path, *args):
    return runner.invoke(app, ["train", *MIXTURE, "--prompts", str(tmp_path / "prompts.txt"), *args])


def failed(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output


def test_a_signal_stopped_run_checkpoints_and_exits_non_zero(plugins):
    """Class 3: SIGINT/SIGTERM finish the iteration, write its checkpoint, and exit 130/143, so
    ``treesdk train && treesdk export`` does not export an unfinished run. The signal lands inside
    iteration 1 by construction: the reward waits for the test between two files."""
    from treesdk.training.trainer import Run

    assert Run(None, 1, interrupted=True, stop_signal=signal.SIGTERM).exit_code == 143
    assert Run(None, 1, interrupted=True, stop_signal=None).exit_code == 143  # stopped on another rank's signal
    assert Run(None, 5, interrupted=False).exit_code == 0
    sig, code = signal.SIGINT, 130
    tmp = plugins
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(tmp / "site"), os.environ.get("PYTHONPATH", "")]),
               TREESDK_TEST_READY=str(tmp / "ready"), TREESDK_TEST_GO=str(tmp / "go"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "treesdk", "train", *MIXTURE, "--reward", "gated-brightness", "--prompts",
         str(tmp / "prompts.txt"), "--iters", "5", "--out", str(tmp / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp / "ready").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached iteration 1's reward"
            time.sleep(0.02)
        proc.send_signal(sig)
        (tmp / "go").write_text("go")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, out[-2000:] + err[-3000:]
    assert "Traceback" not in err and "interrupted" in out
    assert [p.name for p in list_checkpoints(tmp / "run")] == ["iter_000001"]


def test_default_run_folders_are_sanitised_and_never_shared(plugins, monkeypatch):
    """Class 1: a recipe named ``../../x`` or ``/abs`` stays inside ``runs/``; two runs started in
    the same second get two folders."""
    assert sanitize_run_name("../../x") == "x" and sanitize_run_name("/etc/cron.d") == "etc-cron.d"
    assert sanitize_run_name("..") == "run"
    root = plugins / "runs"
    first, second = claim_run_dir("same", root, "20260101-000000"), claim_run_dir("same", root, "20260101-000000")
    assert first != second and first.is_dir() and second.is_dir()

    monkeypatch.chdir(plugins)
    (plugins / "evil.yaml").write_text("name: ../../escaped\n")
    train(plugins, "--config", str(plugins / "evil.yaml"), "--reward", "brightness", "--iters", "1")
    made = list((plugins / "runs").glob("escaped-*"))
    assert len(made) == 1 and (made[0] / "config.json").is_file()
    assert not (plugins.parent / "escaped").exists() and not list(plugins.parent.glob("escaped-*"))
