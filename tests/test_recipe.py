"""Recipes: presets, overrides, and validation errors that name the field."""

import pytest

import treesdk
from treesdk.recipes import Recipe, RecipeError, load_recipe


@pytest.mark.parametrize("name", ["grpo", "mixgrpo", "treegrpo", "dynamic-treerpo"])
def test_presets_load_through_entry_points(name):
    recipe = treesdk.load_algorithm(name)
    assert recipe.name == name


def test_overrides_and_hybrid():
    r = load_recipe("treegrpo", **{"tree.k": 3, "tree.d": 3, "losses": [
        {"kind": "clipped-surrogate", "clip": "reward-adaptive"}, {"kind": "layertuning-sft", "weight": 0.2}]})
    assert (r.tree.k, r.tree.d) == (3, 3)
    assert [l.kind for l in r.losses] == ["clipped-surrogate", "layertuning-sft"]


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"tree.k": 0}, "tree.k"),
        ({"window": {"kind": "fixed", "start": 8}, "tree.d": 4, "steps": 10}, "window runs past T"),
        ({"noise.level": -0.1}, "noise.level"),
        ({"advantage": {"kind": "magic"}}, "advantage"),
        ({"tree.d": 12, "steps": 10}, "exceeds steps"),
        ({"tree.k": 8, "tree.d": 5}, "max_leaves"),
    ],
)
def test_invalid_recipes_name_the_field(overrides, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        load_recipe("treegrpo", **overrides)


def test_window_schedules():
    sliding = Recipe(steps=10, tree={"k": 2, "d": 3}, window={"kind": "sliding", "start": 1, "stride": 2, "every": 3})
    starts = [sliding.window_start(i, 0) for i in range(15)]
    # span [1, 7]: 1, 1, 1, 3, 3, 3, 5, 5, 5, 7, 7, 7, then wrap to 1 + (8 % 7) = 2
    assert starts[:12] == [1, 1, 1, 3, 3, 3, 5, 5, 5, 7, 7, 7] and starts[12] == 2
    rnd = Recipe(steps=10, tree={"k": 2, "d": 3}, window={"kind": "random", "p": 0.5})
    draws = [rnd.window_start(i, 0) for i in range(400)]
    assert min(draws) >= 0 and max(draws) <= 7
    assert draws.count(0) > draws.count(1) > draws.count(3)  # geometric favours early starts
    assert draws == [rnd.window_start(i, 0) for i in range(400)]  # deterministic


def test_treegrpo_with_a_sliding_window_and_mean_backup():
    """TreeGRPO's released-code variants are recipe options: a sliding window and the mean backup."""
    r = load_recipe("treegrpo", window={"kind": "sliding", "start": 0, "stride": 1, "every": 2},
                    **{"advantage.backup": "mean"})
    assert [r.window_start(i, 0) for i in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert r.advantage.backup == "mean"


def test_treegrpo_kl_preset_is_the_digits_recipe_it_replaced():
    """``treegrpo-kl`` (the digits default before ``tree-nft``) with the digits backend's scale
    defaults is, value for value, the recipe the digits backend used to build by hand: TreeGRPO,
    T = 10, lr 1e-4, plus Flow-GRPO's KL at beta 2."""
    from treesdk.recipes.loading import load_recipe
    from treesdk.recipes.presets import treegrpo
    from treesdk_backends.digits import DigitsBackend

    built = treegrpo().model_dump(mode="json")
    built.update(name="treegrpo-kl", steps=10)
    built["losses"] = [*built["losses"], {"kind": "kl", "form": "flow-grpo", "weight": 2.0}]
    built["optim"] = {**built["optim"], "lr": 1e-4}
    assert DigitsBackend.default_recipe == "tree-nft"
    preset = load_recipe("treegrpo-kl", **{"optim.lr": 1e-4, "steps": 10})
    assert preset.model_dump(mode="json") == load_recipe(built).model_dump(mode="json")
    assert load_recipe("treegrpo-kl").model_dump(mode="json")["optim"]["lr"] == 1e-5  # the paper's, before scale defaults
