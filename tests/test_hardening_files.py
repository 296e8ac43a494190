"""Damaged files and weights, one class per test: checkpoints verified when read, non-finite weights
refused, stale temporary files cleaned, exports readable by others and checkable from anywhere.
Data-loss cases compare the files' bytes before and after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from treesdk.training.run_folder.checkpoint import list_checkpoints, load_checkpoint
from treesdk_cli.main import app

runner = CliRunner()


def ok(result):
    assert result.exit_code == 0, result.output
    return result.output


def failed(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.output


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run folder with checkpoints after iterations 1 and 2 and a ``digits`` export (tiny
    tree, 4 steps, no evaluation set: the files are what these tests are about)."""
    import treesdk

    run = tmp_path_factory.mktemp("hardening") / "run"
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm("treegrpo", **{**backend.recipe_defaults(), "steps": 4, "tree.d": 2})
    treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")}, ["the digit seven"],
                  iters=2, batch=1, seed=3, checkpoint_every=1, export_format="digits", out_dir=run)
    assert [p.name for p in list_checkpoints(run)] == ["iter_000001", "iter_000002"]
    assert (run / "export" / "digits.safetensors").is_file()
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def newest(run):
    return run / "checkpoints" / "iter_000002"


@pytest.mark.parametrize("damage", ["truncate", "flip", "truncate-old-format", "state"])
def test_a_damaged_newest_checkpoint_is_named_and_the_intact_one_used(run, tmp_path, damage):
    """Class 2: a truncated or altered checkpoint (or one written before checksums, or with a
    broken state.json) never reaches safetensors' raw error: export falls back to the newest
    intact checkpoint with a warning naming the file; naming the damaged one directly fails with
    its name; the damaged files are left as they were."""
    trainable = newest(run) / "trainable.safetensors"
    data = trainable.read_bytes()
    if damage == "flip":
        trainable.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "state":
        (newest(run) / "state.json").write_text('{"iteration": 2, "files": ')
    else:
        trainable.write_bytes(data[: len(data) // 2])
    if damage == "truncate-old-format":  # a checkpoint from before sizes and checksums were recorded
        state = json.loads((newest(run) / "state.json").read_text())
        del state["files"]
        (newest(run) / "state.json").write_text(json.dumps(state))
    before = snapshot(run / "checkpoints")
    culprit = "state.json" if damage == "state" else "trainable.safetensors"

    out = ok(runner.invoke(app, ["export", str(run), "--format", "digits", "--out", str(tmp_path / "e.safetensors")]))
    assert "iter_000002" in out and culprit in out and "iter_000001 instead" in out
    from safetensors import safe_open

    with safe_open(str(tmp_path / "e.safetensors"), framework="pt") as handle:
        assert handle.metadata()["treesdk.iterations"] == "1"
    out = failed(runner.invoke(app, ["export", str(newest(run)), "--format", "digits", "--out", str(tmp_path / "f.safetensors")]))
    assert culprit in out and "damaged" in out
    assert not (tmp_path / "f.safetensors").exists()
    assert load_checkpoint(run)[2]["iteration"] == 1  # resume reads the intact one too
    assert snapshot(run / "checkpoints") == before


def test_no_intact_checkpoint_is_one_error_naming_each(run):
    for folder in list_checkpoints(run):
        file = folder / "trainable.safetensors"
        file.write_bytes(file.read_bytes()[:100])
    out = failed(runner.invoke(app, ["sample", "--run", str(run), "--out", str(run / "s.png")]))
    assert "no intact checkpoint" in out and "iter_000001" in out and "iter_000002" in out


def _poison(run):
    """Make the newest checkpoint hold NaN weights with a consistent checksum: a diverged run."""
    from treesdk.training.run_folder.checkpoint import file_record

    folder = newest(run)
    state = load_file(str(folder / "trainable.safetensors"))
    first = next(iter(state))
    state[first] = torch.full_like(state[first], float("nan"))
    save_file(state, str(folder / "trainable.safetensors"), {"iteration": "2"})
    meta = json.loads((folder / "state.json").read_text())
    meta["files"]["trainable.safetensors"] = file_record(folder / "trainable.safetensors")
    (folder / "state.json").write_text(json.dumps(meta))
    return first


def test_non_finite_weights_are_refused_by_export_check_and_sample(run, tmp_path):
    """Class 7: NaN weights are not exported, not sampled (no black images), and ``--check``
    reports them; an existing export is left untouched."""
    exported = run / "export" / "digits.safetensors"
    before = exported.read_bytes()
    first = _poison(run)
    out = failed(runner.invoke(app, ["export", str(run), "--format", "digits"]))
    assert "non-finite" in out and first in out and "trainable.safetensors" in out
    assert exported.read_bytes() == before
    out = failed(runner.invoke(app, ["sample", "--run", str(run), "--out", str(tmp_path / "s.png")]))
    assert "non-finite" in out and not (tmp_path / "s.png").exists()

    bad = tmp_path / "nan.safetensors"
    tensors = load_file(str(exported))
    tensors[first] = torch.full_like(tensors[first], float("inf"))
    from safetensors import safe_open

    with safe_open(str(exported), framework="pt") as handle:
        save_file(tensors, str(bad), handle.metadata())
    out = failed(runner.invoke(app, ["export", "--check", str(bad)]))
    assert first in out and "NaN or inf" in out
    ok(runner.invoke(app, ["export", "--check", str(exported)]))


def test_stale_export_temp_files_of_dead_writers_are_removed(run):
    """Class 8: SIGKILL during an export leaves ``.NAME.PID.*.tmp``; the next export of that name
    removes it once its writer is gone (a live writer's temp file is left alone)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # an exited process: its pid is free
    folder = run / "export"
    stale = folder / f".digits.safetensors.{dead.pid}.abc123.tmp"
    live = folder / f".digits.safetensors.{os.getpid()}.def456.tmp"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    ok(runner.invoke(app, ["export", str(run), "--format", "digits"]))
    assert not stale.exists() and live.exists()


def test_a_folder_export_follows_the_umask_and_keeps_the_old_folder_on_failure(tmp_path):
    """Class 8: the ``diffusers`` export folder is created like a file, by the umask (not 0700)."""
    from treesdk_backends.diffusers_export import _write_folder_atomically

    target = tmp_path / "transformer"
    old = os.umask(0o022)
    try:
        _write_folder_atomically(target, lambda tmp: (tmp / "w.bin").write_bytes(b"1"))
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o755

    def crash(tmp):
        (tmp / "w.bin").write_bytes(b"2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_folder_atomically(target, crash)
    assert (target / "w.bin").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["transformer"]


def test_base_model_metadata_is_resolved_so_check_works_from_any_folder(run, tmp_path, monkeypatch):
    """Class 8: a base model given as a relative path is stored absolute in the export metadata."""
    from safetensors import safe_open

    import treesdk

    base = treesdk.load_backend("digits").describe()["model"]
    (tmp_path / "models").mkdir()
    shutil.copy(base, tmp_path / "models" / "base.safetensors")
    config = json.loads((run / "config.json").read_text())
    config["backend"]["options"]["model"] = "models/base.safetensors"  # as `--model models/base.safetensors` stores it
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "e.safetensors"
    ok(runner.invoke(app, ["export", str(run), "--format", "digits", "--out", str(out)]))
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["treesdk.base_model"] == str(tmp_path / "models" / "base.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "OK" in ok(runner.invoke(app, ["export", "--check", str(out)]))


class _Payload:
    """Pickles into a call of ``os.system``: what a malicious reward checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    """Kept from before: torch checkpoints of rewards are read with ``weights_only=True``."""
    from treesdk_plugins.common import load_torch_checkpoint

    marker = tmp_path / "ran"
    torch.save({"state_dict": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_torch_checkpoint(tmp_path / "evil.pt", "a reward checkpoint")
    assert not marker.exists()
