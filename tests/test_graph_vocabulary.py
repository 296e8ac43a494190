"""The graph form speaks the nested recipe's names; the older spellings load with a FutureWarning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from treesdk.nodes.graph import compile_graph, recipe_to_graph, upgrade_graph
from treesdk.recipes import load_recipe

HYBRID = Path(__file__).resolve().parents[1] / "examples" / "hybrid.yaml"


def hybrid() -> dict:
    return yaml.safe_load(HYBRID.read_text())


def test_the_steps_outside_the_window_are_tree_inputs_as_in_the_nested_recipe():
    data = hybrid()
    data["nodes"]["tree"]["inputs"].update(sde_outside_window=True, outside_noise_level=0.5)
    data["nodes"]["family"] = {"type": "dance-sde"}
    data["recipe"]["sde"] = "family"
    recipe = compile_graph(data)
    assert recipe.tree.sde_outside_window and recipe.tree.outside_noise_level == 0.5 and recipe.sde.kind == "dance-sde"
    nested = load_recipe(recipe.model_dump(mode="json"))
    assert nested == recipe
    graph = recipe_to_graph(recipe)
    assert "outside" not in graph["recipe"]
    assert graph["nodes"]["tree"]["inputs"]["sde_outside_window"] is True and graph["nodes"]["sde"] == {"type": "dance-sde"}


def test_the_ode_family_node_is_named_by_its_kind():
    data = hybrid()
    data["nodes"]["tree"]["inputs"].update(d=0)
    data["recipe"]["sde"] = {"type": "ode"}
    assert compile_graph(data).sde.kind == "ode"


@pytest.mark.parametrize("step,window,level", [({"type": "ode"}, False, None),
                                               ({"type": "flow-grpo-sde", "inputs": {"noise_level": 0.5}}, True, 0.5)])
def test_the_old_outside_slot_loads_with_a_warning_naming_the_new_spelling(step, window, level):
    old = hybrid()
    old["nodes"]["step"] = step
    old["recipe"]["outside"] = "step"
    with pytest.warns(FutureWarning, match="sde_outside_window"):
        recipe = compile_graph(old)
    new = hybrid()
    new["nodes"]["tree"]["inputs"]["sde_outside_window"] = window
    if level is not None:
        new["nodes"]["tree"]["inputs"]["outside_noise_level"] = level
    assert recipe == compile_graph(new)
    assert (recipe.tree.sde_outside_window, recipe.tree.outside_noise_level) == (window, level)


def test_the_old_ode_family_type_is_renamed_with_a_warning():
    old = hybrid()
    old["nodes"]["tree"]["inputs"].update(d=0)
    old["recipe"]["sde"] = {"type": "ode-family"}
    with pytest.warns(FutureWarning, match="'ode-family' is now 'ode'"):
        upgraded = upgrade_graph(old)
    assert upgraded["recipe"]["sde"] == {"type": "ode"} and old["recipe"]["sde"] == {"type": "ode-family"}  # a copy
    with pytest.warns(FutureWarning):
        assert compile_graph(old).sde.kind == "ode"


def test_a_current_graph_is_not_copied_nor_warned_about(recwarn):
    data = hybrid()
    assert upgrade_graph(data) is data
    compile_graph(data)
    assert not [w for w in recwarn.list if issubclass(w.category, FutureWarning)]
