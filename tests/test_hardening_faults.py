"""The faults of issue 26, each reproduced: a bogus device, unknown backend options in a run
folder, a torn metrics line on resume, rewards that raise or return the wrong thing, signals at
start-up and between an iteration and its checkpoint, a full disk, and inputs a tiny model cannot
take. Each ends with one line (exit 1, 130 on SIGINT), no traceback, and no finished work lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _hardening_common import MIXTURE, TESTS, failed, finished, invoke, plugins, runner, train  # noqa: F401 - fixtures

from treesdk_cli.main import app


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
    from treesdk.training.exporting.trained_policy import load_trained_backend

    with pytest.raises(ValueError, match="config.json backend.options.*'nosuch'.*its options are"):
        load_trained_backend(finished)  # what export, sample and eval call
    for command in (["sample", "--run", finished, "--seeds", "1", "--out", finished.parent / "s.png"],
                    ["eval", finished, "--seeds", "1"]):
        out = failed(invoke(*command))
        assert "'nosuch'" in out and "its options are" in out and "logits" in out, out
    out = failed(invoke("train", "--resume", "--out", finished, "--iters", "3"))
    assert "'nosuch'" in out and "its options are" in out


def test_a_torn_last_metrics_line_is_said_and_kept_aside_on_resume(finished, caplog):
    """A partial last line in metrics.jsonl (cut inside a UTF-8 character, too) resumed without a
    word: now a warning names the file and line, and its bytes go to metrics.jsonl.torn."""
    metrics = finished / "metrics.jsonl"
    torn = '{"iteration": 3, "note": "é'.encode()[:-1]  # cut inside the two bytes of 'é'
    metrics.write_bytes(metrics.read_bytes() + torn)
    with caplog.at_level("WARNING", logger="treesdk"):
        result = train(finished.parent, "--resume", "--out", finished, "--iters", "3")
    assert result.exit_code == 0, result.output
    assert "metrics.jsonl" in caplog.text and "incomplete" in caplog.text and "metrics.jsonl.torn" in caplog.text
    assert (finished / "metrics.jsonl.torn").read_bytes() == torn + b"\n"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows if "eval" not in json.dumps(r)][-3:] == [1, 2, 3]


def test_a_third_party_reward_that_raises_is_one_line_naming_it_and_its_distribution(plugins, monkeypatch):
    """ZeroDivisionError inside a plugin's score(): was a raw traceback."""
    monkeypatch.setenv("TREESDK_DEBUG", "")  # --debug below sets it: restored to unset afterwards
    out = failed(train(plugins, "--reward", "divides-by-zero", "--iters", "1", "--out", plugins / "r"))
    assert "reward 'divides-by-zero'" in out and "distribution treesdk-hardening-test 0.0" in out
    assert "ZeroDivisionError" in out and "--debug" in out
    result = runner.invoke(app, ["--debug", "train", *MIXTURE, "--prompts", str(plugins / "prompts.txt"),
                                 "--reward", "divides-by-zero", "--iters", "1", "--out", str(plugins / "r2")])
    assert isinstance(result.exception.__cause__, ZeroDivisionError)  # --debug: the reward's own stack


@pytest.mark.parametrize("returned, words", [
    (None, ["returned NoneType", "2 numbers"]),
    ("0.5", ["returned str"]),
    ([0.5], ["returned 1 scores for 2 images"]),
    ([[0.1, "x"]], ["not numbers"]),
])
def test_a_python_reward_returning_the_wrong_thing_is_named(returned, words):
    """A Python-API reward returning None was "Could not infer dtype of NoneType"."""
    import torch

    from treesdk.errors import UserError
    from treesdk.rewards import score_images

    class Wrong:
        name = "wrong"

        def score(self, images, prompts):  # noqa: ANN001, ANN201
            return returned

    with pytest.raises(UserError) as info:
        score_images({"my-reward": Wrong()}, torch.zeros(2, 3, 4, 4), ["a", "b"])
    message = str(info.value)
    assert "reward 'my-reward'" in message and __name__ in message, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("family, flags, words", [
    ("wan", ["--backend-opt", "num_frames=81"], ["num_frames 81", "41 latent frames", "rope_max_seq_len", "at most 63 frames"]),
    ("wan", ["--resolution", "512"], ["--resolution 512", "rope_max_seq_len", "at most 256 px"]),
    ("sd3", ["--resolution", "128"], ["--resolution 128", "pos_embed_max_size", "at most 64 px"]),
    ("z-image", ["--max-sequence-length", "1024"], ["--max-sequence-length 1024", "axes_lens"]),
    ("z-image", ["--resolution", "30"], ["resolution must be a positive multiple of 4", "got 30"]),
])
def test_an_input_beyond_a_tiny_models_tables_is_one_line_before_any_folder(family, flags, words, tmp_path):
    """The issue's tiny Wan at 81 frames crashed in diffusers' RoPE after the run folder was
    written; now the limit is named when the backend is built."""
    pytest.importorskip("diffusers")
    from treesdk_backends.tiny import build_tiny

    build_tiny(family, tmp_path / "tiny")
    out = failed(invoke("train", "--backend", "diffusers", "--model", tmp_path / "tiny", "--steps", "2", "--k", "2",
                        "--d", "2", "--iters", "1", "--batch", "1", "--reward", "jpeg-compressibility", *flags,
                        "--out", tmp_path / "run"))
    for word in words:
        assert word in out, (word, out)
    assert not (tmp_path / "run").exists()


def test_a_second_ctrl_c_keeps_the_finished_iteration(plugins):
    """Ctrl-C twice in iteration 2 (the second stops at once): iteration 1 had finished but had no
    checkpoint (``--checkpoint-every 0``) and was lost; now it is checkpointed on the way out."""
    from treesdk.training.run_folder.checkpoint import list_checkpoints

    result = train(plugins, "--reward", "interrupts-twice", "--iters", "5", "--out", plugins / "run")
    out = failed(result, code=130)
    assert "interrupted" in out
    assert [p.name for p in list_checkpoints(plugins / "run")] == ["iter_000001"]
    resumed = train(plugins, "--reward", "interrupts-twice", "--resume", "--iters", "2", "--reward-opt",
                    "interrupts-twice:at_call=99", "--allow-config-change", "--out", plugins / "run")
    assert resumed.exit_code == 0, resumed.output


def test_ctrl_c_twice_while_a_checkpoint_is_written_lets_it_finish(plugins, monkeypatch):
    """Both signals land inside the checkpoint write of iteration 1: it completes, then exit 130."""
    import os
    import signal

    from treesdk.training.run_folder.checkpoint import list_checkpoints, load_checkpoint
    from treesdk.training.loop.trainer import Trainer

    write = Trainer.checkpoint

    def pressed_twice(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return write(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "checkpoint", pressed_twice)
    out = failed(train(plugins, "--iters", "5", "--checkpoint-every", "1", "--out", plugins / "run"), code=130)
    assert "interrupted" in out
    assert [p.name for p in list_checkpoints(plugins / "run")] == ["iter_000001"]
    load_checkpoint(plugins / "run")  # complete: sizes and SHA-256 verified


def test_ctrl_c_while_the_cli_imports_is_exit_130_without_a_traceback(tmp_path):
    """The console script's entry imports the command line inside a guard; a KeyboardInterrupt
    there (simulated by an import hook raising it when ``treesdk_cli.main`` loads) is exit 130."""
    import os
    import subprocess
    import sys

    hook = (
        "import sys\n"
        "class Ctrl:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'treesdk_cli.main':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Ctrl())\n"
        "sys.argv = ['treesdk', '--help']\n"
        "from treesdk_cli.entry import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", hook], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr


@pytest.mark.parametrize("code", ["EFBIG", "ENOSPC"])
def test_a_full_disk_names_the_file_and_the_space_and_keeps_the_previous_checkpoint(plugins, monkeypatch, code):
    """The issue's run ended in "[Errno 27] File too large"; now the message names the file, the
    bytes it needed and those free, and the previous checkpoint stays whole and used by --resume."""
    import errno
    import os

    import treesdk.training.run_folder.checkpoint as checkpoint

    write, calls = checkpoint.atomic_save_safetensors, []

    def fills_up(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # checkpoint 1 (two files) fits, nothing after it does
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(path))
        return write(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "atomic_save_safetensors", fills_up)
    run = plugins / "run"
    out = failed(train(plugins, "--iters", "3", "--checkpoint-every", "1", "--out", run))
    assert "could not write" in out and "trainable.safetensors" in out and "it needs about" in out, out
    assert "free on the file system" in out and "iter_000001 is intact" in out, out
    assert "iter_000002/trainable.safetensors" in out, out
    assert [p.name for p in checkpoint.list_checkpoints(run)] == ["iter_000001"]
    assert not list((run / "checkpoints").glob(".tmp-*"))  # nothing half-written left
    checkpoint.load_checkpoint(run)  # sizes and SHA-256 verified
    monkeypatch.setattr(checkpoint, "atomic_save_safetensors", write)
    resumed = train(plugins, "--resume", "--iters", "3", "--out", run)
    assert resumed.exit_code == 0, resumed.output


@pytest.mark.parametrize("content, words", [
    (b"a red\x00apple\nb\n", ["prompt 1", "control character '\\x00'"]),
    (b"x" * 200_001 + b"\n", ["prompt 1 is 200001 characters", "at most 100000"]),
    (b"\xfa\xfb binary", ["not UTF-8"]),
])
def test_prompt_files_with_nul_bytes_huge_lines_or_binary_are_refused_before_training(plugins, content, words):
    """NUL bytes and a 5 MB line were taken as prompts without a word."""
    (plugins / "odd.txt").write_bytes(content)
    out = failed(invoke("train", *MIXTURE, "--reward", "brightness", "--prompts", plugins / "odd.txt", "--iters", "1",
                        "--out", plugins / "run"))
    for word in words:
        assert word in out, (word, out)
    assert not (plugins / "run").exists()


def test_odd_diffusers_folders_are_one_line_and_remote_code_never_runs(tmp_path):
    """No or broken model_index.json, an unknown pipeline class, a component naming a module of
    the folder (remote code): one line each, and the folder's code is never executed."""
    pytest.importorskip("diffusers")
    from treesdk_backends.tiny import build_tiny

    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text('{"_class_name": ')
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "model_index.json").write_text('{"_class_name": "MyPipeline", "transformer": ["my", "T"]}')
    remote = build_tiny("flux", tmp_path / "remote")
    index = json.loads((remote / "model_index.json").read_text())
    index["transformer"] = ["evil_module", "EvilTransformer"]
    (remote / "model_index.json").write_text(json.dumps(index))
    marker = tmp_path / "ran"
    (remote / "transformer" / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    for name, words in [("empty", ["odd", "empty"]), ("broken", ["model_index.json", "model_index.json", "Expecting value"]),
                        ("custom", ["'MyPipeline'", "registered"]), ("remote", ["custom code", "evil_module.py"])]:
        out = failed(invoke("train", "--backend", "diffusers", "--model", tmp_path / name, "--steps", "4", "--iters", "1",
                            "--batch", "1", "--reward", "jpeg-compressibility", "--out", tmp_path / f"run-{name}"))
        for word in words[1:]:
            assert word in out, (name, word, out)
        assert not (tmp_path / f"run-{name}").exists()
    assert not marker.exists()


def test_an_export_into_the_runs_checkpoints_is_refused_and_the_checkpoint_stays_whole(tmp_path):
    """``export RUN --out RUN/checkpoints/iter_000001/trainable.safetensors`` overwrote the weights
    it read, and the run had no intact checkpoint afterwards."""
    from treesdk.training.run_folder.checkpoint import load_checkpoint

    run = tmp_path / "run"
    ok = invoke("train", "--iters", "1", "--batch", "2", "--steps", "4", "--out", run)
    assert ok.exit_code == 0, ok.output
    for target in (run / "checkpoints" / "iter_000001" / "trainable.safetensors", run / "checkpoints", run):
        out = failed(invoke("export", run, "--format", "digits", "--out", target))
        assert "inside the run's checkpoints" in out and "overwrite the weights it reads" in out, out
    load_checkpoint(run)  # sizes and SHA-256 as recorded
    assert invoke("export", run, "--format", "digits", "--out", run / "export" / "ok.safetensors").exit_code == 0


def test_a_recipe_error_names_the_recipe_without_echoing_it(plugins):
    """``--steps 2`` with a preset of depth 4 printed the whole resolved recipe (over 1000 characters)."""
    out = failed(invoke("train", "--iters", "1", "--steps", "2", "--out", plugins / "run"))
    assert "tree.d = 3 exceeds steps = 2" in out and len(out) < 400, out  # the default tree-nft: d = 3
    assert not (plugins / "run").exists()
