"""Run folders written by treesdk's first release (0.1) keep working after an upgrade: ``export``,
``sample``, ``eval`` and ``train --resume`` read them and give what 0.1 itself gave on the same
folder (the expected numbers below were computed by 0.1, commit 8b5b010, on the folder that
:func:`first_release.first_release_run` writes); the user's files are never rewritten; a damaged
0.1 checkpoint still fails clearly."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from first_release import DATA, first_release_run, first_release_trainable
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from treesdk.errors import CheckpointError
from treesdk.training.run_folder.checkpoint import load_checkpoint, verify_checkpoint
from treesdk.training.config import RunConfig, read_run_config
from treesdk.training.legacy import is_first_release_config, resume_harmless_fields, upgrade_run_data
from treesdk_cli.main import app

runner = CliRunner()

#: what 0.1 printed for ``treesdk eval RUN`` on this folder
EVAL_01 = {"digit-classifier_mean": 0.6361553072929382, "digit-evaluator_mean": 0.6730478405952454}
#: mean pixel value of 0.1's ``treesdk sample --run RUN --prompt 3 --prompt "the digit seven" --seeds 2`` grid
SAMPLE_MEAN_01 = 130.53185595567868
#: 0.1's ``treesdk train --resume --out RUN --iters 3 --batch 2``: iteration 3's metrics, the end
#: evaluation and the L1 distance the update moved the weights
RESUME_ROW_01 = {"reward_mean": 0.5178924798965454, "loss": 0.005970104597508907, "grad_norm": 0.043069902807474136}
RESUME_EVAL_01 = {"digit-classifier_mean": 0.6367146372795105, "digit-evaluator_mean": 0.6736862659454346}
RESUME_STEP_L1_01 = 4.204904378066544


def ok(result) -> str:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path) -> Path:
    return first_release_run(tmp_path / "run01")


def test_config_is_read_in_memory_as_a_run_config(run, caplog):
    raw = json.loads((run / "config.json").read_text())
    assert is_first_release_config(raw) and not is_first_release_config(RunConfig().model_dump(mode="json"))
    before = digests(run)
    with caplog.at_level(logging.WARNING, logger="treesdk"):
        config = read_run_config(run)
    assert "first release" in caplog.text and "left as it is" in caplog.text
    assert config.backend.name == "digits" and config.backend.describe["parameters"] == 411265
    assert (config.batch, config.iters, config.seed, config.dtype) == (2, 2, 0, "float32")
    assert {n: r.weight for n, r in config.rewards.items()} == {"digit-classifier": 1.0}
    assert list(config.eval_rewards) == ["digit-evaluator"]
    recipe = config.recipe
    assert recipe.name == "treegrpo" and (recipe.tree.k, recipe.tree.d, recipe.steps) == (2, 4, 10)
    # fields added after 0.1, pinned to what 0.1 computed
    assert recipe.sde.kind == "flow-sde" and recipe.advantage.backup == "softmax" and recipe.advantage.std == "population"
    assert (recipe.optim.optimizer, recipe.optim.lr_schedule, recipe.optim.lr_warmup) == ("adamw", "constant", 0)
    assert digests(run) == before  # nothing rewritten


def test_unknown_keys_are_dropped_and_named(caplog):
    raw = json.loads((DATA / "config.json").read_text())
    with caplog.at_level(logging.WARNING, logger="treesdk"):
        data = upgrade_run_data({**raw, "note": "from a script"}, "script-run/config.json")
    assert "note" not in data and "world_size" not in data and "cli" not in data
    assert "ignored keys: note" in caplog.text
    RunConfig.model_validate(data)
    assert {"prompts", "rewards.digit-classifier.options"} <= set(resume_harmless_fields(raw))
    assert "dtype" not in resume_harmless_fields(raw)  # recorded by describe, carried as dtype
    assert "dtype" in resume_harmless_fields({**raw, "backend": {**raw["backend"], "name": "someone-elses"}})
    assert resume_harmless_fields(RunConfig().model_dump(mode="json")) == ()


def test_a_01_flux_run_is_rebuilt_in_the_precision_and_lora_it_trained_with():
    """A real 0.1 FLUX run (tiny model, LoRA, bf16 by the backend's default even on CPU, where
    today's default is float32): the dtype is carried, so resume/sample/eval use bf16 as 0.1 did."""
    from treesdk import registry
    from treesdk.training.config import read_config_file
    from treesdk.training.exporting.trained_policy import backend_options

    config = RunConfig.model_validate(read_config_file(DATA.parent / "first_release_flux_config.json"))
    assert config.dtype == "bfloat16" and config.backend.options == {"model": "/tmp/tinyflux", "resolution": 32}
    options = backend_options(config, registry.load("backend", "flux"))
    assert (options["lora_rank"], options["lora_alpha"], options["dtype"]) == (16, 16.0, "bfloat16")
    assert "attn.to_q" in options["lora_targets"] and options["model"] == "/tmp/tinyflux"
    assert config.recipe.optim.lr == pytest.approx(1e-5) and list(config.eval_rewards) == ["jpeg-incompressibility"]


def test_checkpoint_without_checksums_is_used_with_a_warning(run, caplog):
    ckpt = run / "checkpoints" / "iter_000002"
    with caplog.at_level(logging.WARNING, logger="treesdk"):
        trainable, optim, state = load_checkpoint(run)
    assert "no checksums" in caplog.text and "could not be verified" in caplog.text
    expected = first_release_trainable()
    assert all(bool((trainable[k] == expected[k]).all()) for k in expected) and state["iteration"] == 2
    assert len(optim["state"]) == len(optim["param_groups"][0]["params"]) == 67
    with open(ckpt / "trainable.safetensors", "r+b") as handle:  # a bad copy: the file is cut short
        handle.truncate(ckpt.joinpath("trainable.safetensors").stat().st_size - 100)
    with pytest.raises(CheckpointError, match="trainable.safetensors.*truncated"):
        verify_checkpoint(ckpt)
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 1 and "trainable.safetensors" in result.output and "Traceback" not in result.output


def test_export_sample_and_eval_give_what_01_gave(run, tmp_path):
    before = digests(run)
    shown = ok(runner.invoke(app, ["export", str(run), "-f", "digits", "--out", str(tmp_path / "w.safetensors")]))
    assert "written by treesdk 0.1" in shown and "could not be verified" in shown  # the user is told
    exported, expected = load_file(str(tmp_path / "w.safetensors")), first_release_trainable()
    assert sorted(exported) == sorted(expected) and all(bool((exported[k] == expected[k]).all()) for k in expected)

    ok(runner.invoke(app, ["sample", "--run", str(run), "--prompt", "3", "--prompt", "the digit seven", "--seeds", "2",
                           "--out", str(tmp_path / "s.png")]))
    pixels = np.asarray(Image.open(tmp_path / "s.png")).astype(np.float64)
    assert pixels.shape == (152, 152, 3) and pixels.mean() == pytest.approx(SAMPLE_MEAN_01, abs=0.05)

    ok(runner.invoke(app, ["eval", str(run), "--json", str(tmp_path / "e.json")]))
    scores = json.loads((tmp_path / "e.json").read_text())
    for key, value in EVAL_01.items():
        assert scores[key] == pytest.approx(value, rel=1e-4), key
    assert digests(run) == before


def test_resume_continues_as_01_did_and_writes_new_checkpoints_only(run):
    old_files = digests(run)
    out = ok(runner.invoke(app, ["train", "--resume", "--out", str(run), "--iters", "3", "--export-format", "none"]))
    assert "(resuming)" in out
    after = digests(run)
    assert {k: after[k] for k in old_files if k != "metrics.jsonl"} == {k: v for k, v in old_files.items() if k != "metrics.jsonl"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r.get("iteration") == 3 and not r.get("eval"))
    end = next(r for r in rows if r.get("iteration") == 3 and r.get("tag") == "end")
    for key, value in RESUME_ROW_01.items():
        assert step[key] == pytest.approx(value, rel=1e-3), key
    for key, value in RESUME_EVAL_01.items():
        assert end[key] == pytest.approx(value, rel=1e-4), key
    new = run / "checkpoints" / "iter_000003"
    assert "files" in json.loads((new / "state.json").read_text())  # the new checkpoint: today's format
    moved = load_file(str(new / "trainable.safetensors"))
    start = first_release_trainable()
    l1 = sum(float((moved[k].double() - start[k].double()).abs().sum()) for k in start)
    assert l1 == pytest.approx(RESUME_STEP_L1_01, rel=1e-3)


def test_resume_still_refuses_a_real_change_but_accepts_what_01_never_recorded(run, tmp_path):
    result = runner.invoke(app, ["train", "--resume", "--out", str(run), "--iters", "3", "--batch", "4"])
    assert result.exit_code == 1 and "batch: 2 -> 4" in result.output
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1\n2\n")
    ok(runner.invoke(app, ["train", "--resume", "--out", str(run), "--iters", "3", "--prompts", str(prompts),
                           "--export-format", "none"]))
    assert json.loads((run / "config.json").read_text())["world_size"] == 1  # still 0.1's file
