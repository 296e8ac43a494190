"""The typed run configuration: what the CLI builds, what ``config.json`` stores (itself a run file
that repeats the run), what :func:`treesdk.train` takes; the Trainer's steps and its callbacks."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import treesdk
from treesdk import RunConfig, Trainer
from treesdk.recipes import Recipe
from treesdk.training.config import RunConfigError, is_run_file_data, read_run_config, run_config_from_data
from treesdk.training.exporting.trained_policy import load_trained_backend
from treesdk_cli.main import app

SMALL = {"tree.k": 2, "tree.d": 2, "steps": 4}
NOISY_KEYS = ("seconds", "seconds_sampling", "seconds_reward", "seconds_training")


def small_config(**extra) -> RunConfig:
    return RunConfig(recipe="treegrpo", overrides=SMALL, iters=2, batch=2, seed=5,
                     export={"format": "none"}, logging={"tensorboard": False}, **extra)


def metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in NOISY_KEYS} for row in rows]


def test_defaults_and_short_forms_validate():
    config = run_config_from_data({"rewards": {"digit-classifier": 0.5}, "eval_rewards": ["digit-evaluator"]})
    assert config.backend.name == "digits" and config.recipe is None  # the backend's default_recipe
    assert config.rewards["digit-classifier"].weight == 0.5 and list(config.eval_rewards) == ["digit-evaluator"]


def test_a_bad_field_is_named():
    with pytest.raises(RunConfigError, match=r"batch.*greater than or equal to 1.*\(got 0\)"):
        run_config_from_data({"batch": 0}, "run.yaml")
    with pytest.raises(RunConfigError, match="bogus"):
        run_config_from_data({"bogus": 1}, "run.yaml")
    with pytest.raises(RunConfigError, match="tree.k"):
        run_config_from_data({"recipe": {"tree": {"k": 0}}})


def test_run_files_and_recipe_files_are_told_apart():
    assert is_run_file_data({"backend": {"name": "digits"}, "recipe": "grpo"})
    assert is_run_file_data({"recipe": "grpo", "iters": 3})
    assert not is_run_file_data({"name": "x", "steps": 4, "tree": {"k": 2}})
    assert not is_run_file_data({"nodes": {}, "recipe": {"tree": "t"}})


def test_train_config_writes_a_config_json_that_is_a_run_file(tmp_path):
    run = treesdk.train(small_config(), out_dir=tmp_path / "a")
    assert run.iterations == 2 and not run.interrupted
    stored = read_run_config(tmp_path / "a")
    assert isinstance(stored.recipe, Recipe) and stored.recipe.tree.k == 2 and stored.overrides == {}
    assert stored.rewards and stored.backend.describe  # explicit rewards, the backend's facts
    backend, config, state = load_trained_backend(tmp_path / "a")
    assert state["iteration"] == 2 and config == stored and backend.name == "digits"


def test_cli_repeats_a_run_from_its_config_json(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["train", "--iters", "2", "--batch", "2", "--seed", "3", "--export-format", "none"]
    sets = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(app, [*args, *sets, "--out", str(first)])
    assert result.exit_code == 0, result.output
    again = CliRunner().invoke(app, ["train", "--config", str(first / "config.json"), "--out", str(second)])
    assert again.exit_code == 0, again.output
    assert metrics(first) == metrics(second)
    # flags still override a run file
    third = tmp_path / "third"
    more = CliRunner().invoke(app, ["train", "--config", str(first / "config.json"), "--iters", "3", "--out", str(third)])
    assert more.exit_code == 0, more.output
    train_rows = [row for row in metrics(third) if not row.get("eval")]
    assert train_rows[:2] == [row for row in metrics(first) if not row.get("eval")] and len(train_rows) == 3


def test_cli_reads_a_yaml_run_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"recipe": "grpo", "overrides": {"tree.roots": 2, "steps": 3}, "iters": 1, "batch": 1,
                                    "export": {"format": "none"}, "prompts": {"items": ["a handwritten digit 4"]}}))
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    stored = read_run_config(tmp_path / "run")
    assert stored.recipe.name == "grpo" and stored.recipe.tree.roots == 2 and stored.prompts.items == ["a handwritten digit 4"]


def test_a_callback_sees_each_row_and_can_stop_the_run(tmp_path):
    seen: list[int] = []

    def stop_after_first(row: dict) -> bool:
        seen.append(row["iteration"])
        return row["iteration"] >= 1

    run = treesdk.train(small_config(), out_dir=tmp_path, callbacks=[stop_after_first])
    assert seen == [1] and run.interrupted and run.iterations == 1
    assert (tmp_path / "checkpoints" / "iter_000001").is_dir()


def test_trainer_steps_can_be_driven_by_hand():
    trainer = Trainer.from_config(small_config())
    trainer.start()
    rows = [trainer.step() for _ in range(2)]
    assert [r["iteration"] for r in rows] == [1, 2] and trainer.iteration == 2
    assert trainer.finish().iterations == 2


def test_an_unset_recipe_is_the_backends_default_recipe():
    from treesdk.training.loop.runs import precheck_run_config
    from treesdk_backends.digits import DigitsBackend

    digits = DigitsBackend.default_recipe
    default = RunConfig().resolve_recipe({"optim.lr": 3e-4}, digits)
    assert default.name == "tree-nft" and default.optim.lr == 3e-4  # a named default takes the defaults like any preset
    assert [t.kind for t in default.losses] == ["nft", "velocity-kl"]
    assert default.tree == treesdk.load_algorithm("tree-nft").tree
    named = RunConfig(recipe="treegrpo").resolve_recipe({"optim.lr": 3e-4}, digits)
    assert named.name == "treegrpo" and named.optim.lr == 3e-4 and len(named.losses) == 1
    assert RunConfig().resolve_recipe({"optim.lr": 1e-4}).name == "treegrpo"  # a backend that names none
    # checked before any model loads, against the default recipe: its second loss term exists
    precheck_run_config(RunConfig(overrides={"losses.1.weight": 0.01}))
    with pytest.raises(ValueError, match="losses"):
        precheck_run_config(RunConfig(recipe="treegrpo", overrides={"losses.1.weight": 0.01}))


@pytest.mark.parametrize("key, value", [("resolution", 0), ("resolution", -5), ("max_sequence_length", 0), ("resolution", 2.5)])
def test_a_size_that_is_not_positive_is_refused_before_any_model_loads(key, value):
    with pytest.raises(ValueError, match="positive whole number"):
        treesdk.RunConfig.model_validate({"backend": {"name": "digits", "options": {key: value}}})
