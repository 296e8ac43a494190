"""Node specs: every registered node describes its inputs once (pydantic), and that description
round-trips through JSON Schema and agrees with pydantic on what is valid."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os

import jsonschema
import pytest
from pydantic import BaseModel, Field

from treesdk import registry
from treesdk import nodes
from treesdk.interfaces import RewardModel
from treesdk.recipes import ClippedSurrogateSpec, FixedWindow, NoiseSpec, OptimSpec, TreeBackupSpec, TreeSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: values for fields that have no default (so a complete instance can be built)
REQUIRED_SAMPLES = {"path": "/tmp/lora.safetensors"}


def _instance(spec: nodes.NodeSpec) -> dict:
    data = spec.default_inputs()
    for f in spec.fields():
        if f.required:
            data[f.name] = REQUIRED_SAMPLES.get(f.name, f.default)
    return data


def _check_round_trip(spec: nodes.NodeSpec) -> None:
    schema = spec.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert json.loads(json.dumps(schema)) == schema, f"{spec.type}: schema is not plain JSON"
    assert spec.json_schema() == schema, f"{spec.type}: model_json_schema is not stable"
    validator = jsonschema.Draft202012Validator(schema)
    data = _instance(spec)
    errors = [e.message for e in validator.iter_errors(data)]
    assert not errors, f"{spec.type}: default instance {data} fails its own schema: {errors}"
    validated = spec.validate(data)
    dumped = {k: v for k, v in validated.model_dump(mode="json").items() if k in spec.field_names()}
    assert not list(validator.iter_errors(dumped)), f"{spec.type}: validated instance fails the schema"
    assert spec.validate(dumped) == validated, f"{spec.type}: JSON round trip changed the value"
    # a bound broken is rejected by both the schema and pydantic
    for f in spec.fields():
        if f.widget in {"INT", "FLOAT"} and f.minimum is not None:
            bad = {**data, f.name: f.minimum - 1}
            assert list(validator.iter_errors(bad)), f"{spec.type}.{f.name}: schema accepts {f.minimum - 1}"
            with pytest.raises(nodes.NodeInputError, match=f.name):
                spec.validate(bad)


@pytest.mark.parametrize("node_type", list(nodes.builtin_nodes()))
def test_builtin_node_spec_round_trips_through_json_schema(node_type):
    _check_round_trip(nodes.get_node(node_type))


def test_plugin_node_specs_round_trip_through_json_schema():
    plugin_specs = [s for s in nodes.all_nodes().values() if s.plugin is not None]
    names = {s.type for s in plugin_specs}
    assert {f"backend:{n}" for n in registry.available("backend")} - set(nodes.plugin_errors()) <= names
    assert "reward:digit-classifier" in names and "backend:digits" in names
    for spec in plugin_specs:
        _check_round_trip(spec)


def test_recipe_parts_reuse_the_recipe_classes():
    assert nodes.get_node("tree").inputs is TreeSpec
    assert nodes.get_node("tree-backup").inputs is TreeBackupSpec
    assert nodes.get_node("clipped-surrogate").inputs is ClippedSurrogateSpec
    assert nodes.get_node("fixed-window").inputs is FixedWindow
    assert nodes.get_node("noise-schedule").inputs is NoiseSpec
    assert nodes.get_node("adamw").inputs is OptimSpec
    # the discriminator is set by the node type, not a user input
    spec = nodes.get_node("tree-backup")
    assert "kind" not in spec.field_names() and spec.validate({}).kind == "tree-backup"
    with pytest.raises(nodes.NodeInputError, match="kind"):
        spec.validate({"kind": "group"})


def test_every_part_kind_has_a_node():
    outputs = {}
    for spec in nodes.builtin_nodes().values():
        outputs.setdefault(spec.output, set()).add(spec.type)
    assert outputs["WINDOW"] == {"fixed-window", "sliding-window", "random-window"}
    assert outputs["ADVANTAGE"] == {"group-advantage", "tree-backup", "depthwise-advantage"}
    assert outputs["LOSS"] == {"clipped-surrogate", "layertuning-sft", "kl", "nft", "awm", "velocity-kl"}
    assert outputs["SDE"] == {"flow-sde", "dance-sde", "cps", "ode"}  # named by the nested recipe's sde kinds
    assert "STEP" not in outputs  # the steps outside the window are the tree's sde_outside_window
    assert {"TREE", "NOISE", "OPTIM", "RECIPE", "IMAGE", "MODEL"} <= set(outputs)


def test_fields_carry_bounds_choices_and_descriptions():
    fields = {f.name: f for f in nodes.get_node("clipped-surrogate").fields()}
    assert fields["clip"].widget == "CHOICE" and fields["clip"].choices == ("fixed", "asymmetric", "reward-adaptive")
    eps = fields["eps"]
    assert (eps.widget, eps.minimum, eps.exclusive_minimum, eps.maximum, eps.default) == ("FLOAT", 0, True, 1, 1e-4)
    assert eps.description == "clip range (fixed)"
    k = {f.name: f for f in nodes.get_node("tree").fields()}["k"]
    assert (k.widget, k.minimum, k.maximum, k.required) == ("INT", 1, 64, False)
    tree = nodes.get_node("tree")  # the nested recipe's tree fields, sde_outside_window included
    assert {"sde_outside_window", "outside_noise_level"} <= set(tree.field_names())
    assert tree.validate({"sde_outside_window": True, "outside_noise_level": 0.5}).sde_outside_window


def test_whole_node_checks_name_the_fields_involved():
    with pytest.raises(nodes.NodeInputError) as info:
        nodes.get_node("tree").validate({"k": 8, "d": 5})
    (field, message), = info.value.problems
    assert set(field.split(", ")) == {"k", "d", "roots", "max_leaves"} and "max_leaves" in message


# ----------------------------------------------------------------------------------------------
# plugins: declared Options, or derived from __init__


class _DeclaredReward(RewardModel):
    """A reward that declares its options."""

    name = "declared"

    class Options(BaseModel):
        temperature: float = Field(1.0, gt=0, le=5, description="softmax temperature")
        mode: str = Field("fast", description="how to score")

    def __init__(self, temperature: float = 1.0, mode: str = "fast") -> None:
        self.temperature, self.mode = temperature, mode

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        return images.mean(dim=(1, 2, 3)) * self.temperature


class _UndeclaredReward(RewardModel):
    """A reward with no Options.

    Args:
        scale: multiplies the score.
        path: optional weights file.
    """

    name = "undeclared"

    def __init__(self, scale: float = 2.0, path: str | os.PathLike[str] | None = None, *, flag: bool = False, **extra) -> None:
        self.scale = scale

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        return images.mean(dim=(1, 2, 3)) * self.scale


def test_options_declared_or_derived_from_init():
    assert nodes.options_model(_DeclaredReward) is _DeclaredReward.Options
    derived = nodes.options_model(_UndeclaredReward)
    assert list(derived.model_fields) == ["scale", "path", "flag"]  # **extra is left out
    fields = {f.name: f for f in nodes.plugin_node("reward", "u", _UndeclaredReward, "x:y").fields()}
    assert (fields["scale"].widget, fields["scale"].default, fields["scale"].description) == ("FLOAT", 2.0, "multiplies the score.")
    assert (fields["path"].widget, fields["path"].nullable) == ("STRING", True)
    assert fields["flag"].widget == "BOOLEAN"


def test_third_party_plugins_appear_as_nodes(monkeypatch):
    real = registry._entry_points

    def with_fakes(kind):
        found = dict(real(kind))
        if kind == "reward":
            for ep_name, cls in (("declared", "_DeclaredReward"), ("undeclared", "_UndeclaredReward")):
                found[ep_name] = metadata.EntryPoint(ep_name, f"{__name__}:{cls}", "treesdk.rewards")
            found["broken"] = metadata.EntryPoint("broken", "no_such_module_xyz:Reward", "treesdk.rewards")
        return found

    monkeypatch.setattr(registry, "_entry_points", with_fakes)
    nodes.refresh()
    try:
        specs = nodes.all_nodes()
        declared = specs["reward:declared"]
        assert declared.inputs is _DeclaredReward.Options and declared.output == "REWARD"
        temp = declared.input_types()["required"]["temperature"]
        assert temp[0] == "FLOAT" and temp[1]["max"] == 5.0 and temp[1]["tooltip"].startswith("softmax temperature")
        assert "reward:undeclared" in specs
        assert "reward:broken" not in specs and "no_such_module_xyz" in nodes.plugin_errors()["reward:broken"]
        with pytest.raises(KeyError, match="failed to import"):
            nodes.get_node("reward:broken")
    finally:
        monkeypatch.undo()
        nodes.refresh()


def test_installed_third_party_reward_is_listed():
    if "colorfulness" not in registry.available("reward"):
        pytest.skip("the example third-party plugin (examples/custom_reward) is not installed")
    assert "reward:colorfulness" in nodes.all_nodes()
