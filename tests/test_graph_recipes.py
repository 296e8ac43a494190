"""Recipe files as graphs: the shipped presets, a hybrid that trains, and errors that name node and field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

import treesdk
from treesdk.nodes.graph import GraphError, compile_graph, parse_graph, recipe_to_graph
from treesdk.nodes.schema import graph_json_schema
from importlib.metadata import entry_points

#: every built-in preset, by its registered name (the treesdk.algorithms entry points treesdk ships)
PRESETS = {ep.name: ep.load() for ep in entry_points(group="treesdk.algorithms") if ep.value.startswith("treesdk.")}
from treesdk.recipes import RecipeError, load_recipe

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
HYBRID = ROOT / "examples" / "hybrid.yaml"


def hybrid() -> dict:
    return yaml.safe_load(HYBRID.read_text())


@pytest.fixture(scope="module")
def schema_validator():
    schema = graph_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ----------------------------------------------------------------------------------------------
# presets and the hybrid


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_written_as_a_graph_file_loads_back_equal(name, tmp_path):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe_to_graph(PRESETS[name]()), sort_keys=False))
    assert load_recipe(path) == PRESETS[name]()
    assert treesdk.load_algorithm(str(path)) == PRESETS[name]()


@pytest.mark.parametrize("name", [*sorted(PRESETS), "hybrid"])
def test_graphs_follow_the_json_schema(name, schema_validator):
    data = hybrid() if name == "hybrid" else json.loads(json.dumps(recipe_to_graph(PRESETS[name]())))
    errors = [e.message for e in schema_validator.iter_errors(data)]
    assert not errors


def test_schema_rejects_a_broken_bound(schema_validator):
    data = hybrid()
    data["nodes"]["backup"]["inputs"]["temperature"] = -1.0
    assert list(schema_validator.iter_errors(data))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_recipe_to_graph_round_trips(name):
    recipe = PRESETS[name]()
    graph = json.loads(json.dumps(recipe_to_graph(recipe)))
    assert compile_graph(graph) == recipe


def test_hybrid_file_mixes_the_parts():
    recipe = load_recipe(HYBRID)
    assert recipe.advantage.kind == "tree-backup" and recipe.window.kind == "random"
    assert [(loss.kind, loss.weight) for loss in recipe.losses] == [("clipped-surrogate", 1.0), ("layertuning-sft", 0.001)]
    assert recipe.losses[0].clip == "reward-adaptive"
    assert not recipe.tree.sde_outside_window  # inline `ode` node


def test_overrides_apply_to_graph_files():
    recipe = load_recipe(HYBRID, **{"tree.k": 3, "steps": 12})
    assert (recipe.tree.k, recipe.steps) == (3, 12)


def test_outside_step_node_sets_the_tree_fields():
    data = hybrid()
    data["nodes"]["sde"] = {"type": "flow-grpo-sde", "inputs": {"noise_level": 0.5}}
    data["recipe"]["outside"] = "sde"
    recipe = compile_graph(data)
    assert recipe.tree.sde_outside_window and recipe.tree.outside_noise_level == 0.5


def test_loss_entry_weight_overrides_the_node():
    data = hybrid()
    data["recipe"]["losses"] = ["adaptive-clip", {"node": "sft", "weight": 0.3}]
    assert compile_graph(data).losses[1].weight == 0.3


# ----------------------------------------------------------------------------------------------
# invalid graphs name the node and the field


def _error(mutate) -> str:
    data = hybrid()
    mutate(data)
    with pytest.raises(GraphError) as info:
        compile_graph(data, "hybrid.yaml")
    return str(info.value)


def test_dangling_connection_names_slot_and_node():
    message = _error(lambda d: d["recipe"].__setitem__("advantage", "adv2"))
    assert "field 'advantage'" in message and "dangling" in message and "'adv2'" in message


def test_wrong_output_type_names_slot_and_node():
    message = _error(lambda d: d["recipe"].__setitem__("advantage", "sft"))
    assert "field 'advantage'" in message and "node 'sft' (layertuning-sft) gives LOSS" in message and "ADVANTAGE" in message


def test_loss_slot_rejects_a_non_loss():
    message = _error(lambda d: d["recipe"].__setitem__("losses", ["adaptive-clip", "backup"]))
    assert "field 'losses[1]'" in message and "node 'backup'" in message


def test_broken_bound_names_node_and_field():
    message = _error(lambda d: d["nodes"]["backup"]["inputs"].__setitem__("temperature", -1))
    assert "node 'backup' (tree-backup), field 'temperature'" in message and "greater than 0" in message


def test_bad_choice_names_node_and_field():
    message = _error(lambda d: d["nodes"]["adaptive-clip"]["inputs"].__setitem__("clip", "adaptive"))
    assert "node 'adaptive-clip' (clipped-surrogate), field 'clip'" in message and "reward-adaptive" in message


def test_unknown_type_and_unknown_field():
    message = _error(lambda d: d["nodes"]["tree"].__setitem__("type", "trees"))
    assert "node 'tree', field 'type'" in message and "unknown node type 'trees'" in message
    message = _error(lambda d: d["nodes"]["tree"]["inputs"].__setitem__("width", 2))
    assert "node 'tree' (tree), field 'width'" in message


def test_window_past_T_names_the_nodes_involved():
    def mutate(d):
        d["nodes"]["window"] = {"type": "fixed-window", "inputs": {"start": 9}}

    message = _error(mutate)
    assert "window runs past T" in message
    assert "node 'window' field 'start'" in message and "node 'tree' field 'd'" in message and "'steps'" in message


def test_leaves_over_the_memory_bound_name_the_tree_node():
    message = _error(lambda d: d["nodes"]["tree"]["inputs"].update({"k": 5, "max_leaves": 64}))
    assert "node 'tree' (tree), field 'k, d, roots, max_leaves'" in message and "exceeds max_leaves = 64" in message


def test_every_problem_is_reported_at_once():
    def mutate(d):
        d["recipe"]["advantage"] = "nope"
        d["nodes"]["sft"]["inputs"]["weight"] = -2

    data = hybrid()
    mutate(data)
    with pytest.raises(GraphError) as info:
        compile_graph(data, "x")
    fields = {(p.node, p.field) for p in info.value.problems}
    assert ("recipe", "advantage") in fields and ("sft", "weight") in fields


def test_graph_errors_are_recipe_errors_through_load_recipe(tmp_path):
    data = hybrid()
    data["recipe"]["tree"] = "missing-tree"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="missing-tree"):
        load_recipe(path)


def test_runtime_nodes_are_not_recipe_parts():
    data = hybrid()
    data["nodes"]["search"] = {"type": "tree-search"}
    with pytest.raises(GraphError, match="runtime"):
        parse_graph(data)


# ----------------------------------------------------------------------------------------------
# CLI


def _cli():
    from treesdk_cli.main import app

    return app


def test_cli_nodes_lists_every_node_with_fields():
    from treesdk.nodes import all_nodes

    result = CliRunner().invoke(_cli(), ["nodes"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for node_type in all_nodes():
        assert node_type in result.output
    for field in ("temperature", "eps_high", "max_leaves", "noise_level", "min_start"):
        assert field in result.output


def test_cli_nodes_schema_validates_recipe_files():
    result = CliRunner().invoke(_cli(), ["nodes", "--schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(hybrid()))
    assert "node:tree-backup" in schema["$defs"]


def test_cli_nodes_check(tmp_path):
    result = CliRunner().invoke(_cli(), ["nodes", "--check", str(HYBRID)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["advantage"]["kind"] == "tree-backup"
    data = hybrid()
    data["nodes"]["backup"]["inputs"]["temperature"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(_cli(), ["nodes", "--check", str(bad)])
    assert result.exit_code == 1 and "temperature" in result.output


# ----------------------------------------------------------------------------------------------
# the hybrid trains on the digits backend


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    from treesdk_backends.digits import DigitsFlowNet, save_digits_checkpoint

    reward = treesdk.load_reward("digit-classifier")
    import torch

    torch.manual_seed(0)
    path = save_digits_checkpoint(DigitsFlowNet(channels=8, emb_dim=16), tmp_path_factory.mktemp("digits") / "tiny.safetensors", {})
    return treesdk.load_backend("digits", model=path), reward


def test_hybrid_recipe_file_trains_on_digits(tiny_digits, tmp_path):
    backend, reward = tiny_digits
    recipe = load_recipe(HYBRID, **{"steps": 4, "tree.k": 2, "tree.d": 2})
    before = {k: v.clone() for k, v in backend.trainable_state_dict().items()}
    run = treesdk.train(
        recipe,
        backend,
        {"digit-classifier": reward},
        ["a handwritten digit 3", "a handwritten digit 5"],
        iters=1,
        batch=2,
        out_dir=tmp_path / "run",
    )
    assert len(run.history) == 1
    row = run.history[-1]
    assert row["leaves"] == 2 * 4 and row["trees"] == 2
    assert row["loss"] == row["loss"]  # finite, not NaN
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["recipe"]["name"] == "hybrid-treegrpo-adaptive-sft"
    assert [loss["kind"] for loss in config["recipe"]["losses"]] == ["clipped-surrogate", "layertuning-sft"]
    after = backend.trainable_state_dict()
    assert any(not (after[k] == before[k]).all() for k in before), "one update step changed no weight"
