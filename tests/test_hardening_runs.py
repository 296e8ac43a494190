"""Run folders and run ends, one class per test: exit codes after a signal, unique and sanitised run
folders, folders owned by one run, resume of the same configuration only, metrics rewritten
atomically, and nothing lost when a run fails."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hardening_plugins import fake_distribution
from typer.testing import CliRunner

from treesdk.training.run_folder.checkpoint import list_checkpoints
from treesdk.training.run_folder.run_folders import claim_run_dir, sanitize_run_name
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
    from treesdk.training.loop.trainer import Run

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


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(plugins):
    """A finished 2-iteration run of the analytic model (checkpoint 2, metrics of both iterations)."""
    result = train(plugins, "--reward", "brightness", "--iters", "2", "--seed", "5", "--out", str(plugins / "run"))
    assert result.exit_code == 0, result.output
    return plugins / "run"


def test_a_run_folder_belongs_to_one_run(plugins, finished):
    """Class 1: ``--out`` of an existing run without ``--resume`` is refused before anything is
    loaded or written; so is a second live run on the folder (its lock), while a lock left by a
    dead process is taken over."""
    from treesdk.training.run_folder.run_folders import LOCK_NAME

    before = snapshot(finished)
    out = failed(train(plugins, "--reward", "brightness", "--iters", "2", "--out", str(finished)))
    assert "--out" in out and "is not empty" in out and "--resume" in out
    assert snapshot(finished) == before
    (finished / LOCK_NAME).write_text(f"{os.getpid()} {os.uname().nodename}\n")  # this live process "runs" it
    out = failed(train(plugins, "--resume", "--iters", "3", "--out", str(finished)))
    assert "another treesdk run" in out and str(os.getpid()) in out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (finished / LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
    result = train(plugins, "--resume", "--iters", "3", "--out", str(finished))
    assert result.exit_code == 0, result.output
    assert not (finished / LOCK_NAME).exists()
    nothing_saved = plugins / "failed-early"
    nothing_saved.mkdir()
    (nothing_saved / "config.json").write_text((finished / "config.json").read_text())
    out = failed(train(plugins, "--resume", "--out", str(nothing_saved)))
    assert "has no checkpoint" in out and "new folder" in out
    out = failed(train(plugins, "--resume", "--out", str(plugins / "absent")))
    assert "holds no run" in out


def test_resume_continues_the_same_configuration_only(plugins, finished):
    """Class 1: ``--resume`` reads the run's config.json (flags on top); a flag that changes how it
    trains is refused naming the field, old and new value, nothing written; ``--iters`` may grow;
    ``--allow-config-change`` accepts the change and keeps the old config.json beside the new."""
    before = snapshot(finished)
    for flags, field in ((["--seed", "6"], "seed: 5 -> 6"), (["--batch", "4"], "batch: 2 -> 4"),
                         (["--algo", "grpo"], "recipe.name"), (["--lr", "0.5"], "recipe.optim.lr")):
        out = failed(train(plugins, "--resume", "--out", str(finished), "--iters", "3", *flags))
        assert field in out and "--allow-config-change" in out, out
        assert snapshot(finished) == before
    result = runner.invoke(app, ["train", "--resume", "--out", str(finished), "--iters", "3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if not r.get("eval")] == [1, 2, 3]
    result = runner.invoke(app, ["train", "--resume", "--out", str(finished), "--iters", "4", "--seed", "6",
                                 "--allow-config-change"])
    assert result.exit_code == 0, result.output
    assert json.loads((finished / "config.json").read_text())["seed"] == 6
    kept = list(finished.glob("config.before-*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["seed"] == 5


def test_a_failing_run_keeps_its_completed_iterations(plugins):
    """Class 2: with the default ``--checkpoint-every 0`` a run that fails (here a reward turning
    NaN in iteration 3) writes a checkpoint of the last completed iteration on its way out, says
    so, and resumes from it."""
    run = plugins / "run"
    out = failed(train(plugins, "--reward", "nan-later", "--reward-opt", "nan-later:from_call=4", "--iters", "5",
                       "--out", str(run)))
    assert "nan-later" in out and "before any update" in out and "checkpoint of iteration 2" in out
    assert [p.name for p in list_checkpoints(run)] == ["iter_000002"]
    result = train(plugins, "--resume", "--out", str(run), "--reward-opt", "nan-later:from_call=99")
    assert "nan-later" in result.output  # the reward options are part of the configuration: refused...
    result = train(plugins, "--resume", "--out", str(run), "--reward-opt", "nan-later:from_call=99", "--allow-config-change")
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_checkpoints(run)][-1] == "iter_000005"


def test_metrics_are_strict_json_and_rewritten_atomically(plugins, finished, monkeypatch):
    """Class 2/3: a resume that fails while dropping the lines past its checkpoint leaves
    metrics.jsonl whole; a torn last line (a kill mid-append) is dropped; NaN/inf are written as null."""
    import treesdk.io
    from treesdk.training.run_folder.loggers import JsonlLogger  # metrics.jsonl (treesdk.training.run_folder.loggers)

    metrics = finished / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"iteration": 3, "loss": 1.0}\n{"iteration": 4, "lo')
    before = metrics.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(treesdk.io.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        JsonlLogger(finished, resume_from=2)
    assert metrics.read_bytes() == before
    monkeypatch.undo()
    log = JsonlLogger(finished, resume_from=2)
    log.log_metrics({"iteration": 3, "reward_mean": float("inf"), "loss": float("nan")}, 3)
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines if '"eval"' not in line] == [1, 2, 3]
    strict = json.loads(lines[-1], parse_constant=lambda token: pytest.fail(f"non-JSON token {token}"))
    assert strict["reward_mean"] is None and strict["loss"] is None


@pytest.mark.parametrize("flags, words", [
    (["--prompts", "{d}/absent.txt"], ["absent.txt"]),
    (["--prompts", "{d}/empty.txt"], ["empty.txt", "holds no prompts"]),
    (["--reward", "brightness=nan"], ["--reward", "not finite"]),
    (["--reward-opt", "brightness:gain=2"], ["brightness", "'gain'"]),
    (["--backend-opt", "mu=[1"], ["--backend-opt mu"]),
    (["--backend-opt", "sigma=1"], ["'sigma'", "its options are"]),
    (["--set", "tree.k.x=1"], ["--set tree.k.x"]),
    (["--algo", "no-such-preset"], ["no-such-preset"]),
    (["--seed", "-1"], ["--seed"]),
    (["--iters", "0"], ["--iters"]),
    (["--checkpoint-every", "-1"], ["--checkpoint-every"]),
    (["--keep-checkpoints", "0"], ["--keep-checkpoints"]),
    (["--nproc-per-node", "0"], ["--nproc-per-node 0"]),
    (["--max-restarts", "-1"], ["--max-restarts -1"]),
])
def test_bad_input_fails_before_the_model_loads_and_writes_nothing(plugins, monkeypatch, flags, words):
    """Class 4 (and 3, numeric flags): every input that can be checked without the model is
    checked first: the model constructor is never reached and no run folder appears."""
    import functools

    import analytic

    @functools.wraps(analytic.MixtureFlow.__init__)  # keeps the signature the option check reads
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(analytic.MixtureFlow, "__init__", never)
    (plugins / "empty.txt").write_text("# only a comment\n")
    monkeypatch.chdir(plugins)
    result = train(plugins, "--reward", "brightness", *[f.format(d=plugins) for f in flags])
    out = failed(result, code=result.exit_code if result.exit_code in (1, 2) else 1)
    for word in words:
        assert word in out, (word, out)
    assert not (plugins / "runs").exists()
