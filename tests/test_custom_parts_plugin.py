"""Third-party recipe parts (``examples/custom_parts``: a loss term under ``treesdk.losses``, an
advantage estimator under ``treesdk.estimators``) installed with pip from a local path are listed by
``treesdk plugins`` and ``treesdk nodes``, validate in recipes, and train two iterations on digits
through the recipe file that ships with them.

The fixture installs the example once (``--no-deps --no-build-isolation --no-index``: no network)
into the running environment and uninstalls it at the end of the module.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from treesdk import nodes
from treesdk.recipes import RecipeError, load_recipe, parts
from treesdk_cli.main import app
from _example_install import installed_example

DISTRIBUTION = "treesdk-custom-parts"


@pytest.fixture(scope="module")
def custom_parts(tmp_path_factory):
    try:
        with installed_example("custom_parts", DISTRIBUTION, "treesdk_custom_parts", tmp_path_factory.mktemp("custom_parts")) as example:
            nodes.refresh()  # the node catalogue caches the plugins it found
            yield example / "rank_tree.yaml"
    finally:
        nodes.refresh()


def test_parts_are_listed_by_plugins_and_nodes(custom_parts):
    result = CliRunner().invoke(app, ["plugins", "--json", "--kind", "loss", "--kind", "estimator"])
    assert result.exit_code == 0, result.output
    rows = {(row["kind"], row["name"]): row for row in json.loads(result.output)}
    assert rows[("loss", "logratio-penalty")]["ok"] and rows[("loss", "logratio-penalty")]["distribution"] == DISTRIBUTION
    assert rows[("estimator", "rank")]["value"] == "treesdk_custom_parts:RANK_ADVANTAGE"
    listing = CliRunner().invoke(app, ["nodes", "--json"])
    assert listing.exit_code == 0, listing.output
    assert {"logratio-penalty", "rank"} <= {node["type"] for node in json.loads(listing.output)}


def test_recipe_validates_the_plugin_parts_by_their_own_spec(custom_parts):
    recipe = load_recipe(custom_parts)
    assert recipe.advantage.kind == "rank" and [loss.kind for loss in recipe.losses] == ["clipped-surrogate", "logratio-penalty"]
    assert type(recipe.losses[1]).__module__ == "treesdk_custom_parts"
    with pytest.raises(RecipeError, match="weight"):
        load_recipe(custom_parts, **{"losses.1.weight": -1.0})
    assert parts.lookup("advantage", "rank").spec.__name__ == "RankAdvantage"  # one class: spec and estimator
    assert parts.build("advantage", recipe.advantage) is recipe.advantage


def test_rank_estimator_centres_ranks_per_prompt(custom_parts):
    from treesdk.sampler import sample_forest
    from treesdk_backends.digits import DigitsBackend

    forest = sample_forest(DigitsBackend(), ["a handwritten digit 1", "a handwritten digit 2"], [0, 1], steps=3, k=2, depth=2)
    estimator = parts.build("advantage", parts.validate_part("advantage", {"kind": "rank"}))
    targets = estimator(forest, {"r": torch.tensor([0.1, 0.9, 0.5, 0.3, 5.0, 1.0, 2.0, 3.0])}, {"r": 1.0})
    expected = torch.tensor([-1.0, 1.0, 1 / 3, -1 / 3, 1.0, -1.0, -1 / 3, 1 / 3])
    torch.testing.assert_close(targets.leaf_advantages, expected)
    torch.testing.assert_close(targets.advantages[-1].flatten(), expected)  # last layer: one leaf per edge


def test_recipe_file_with_plugin_parts_trains_two_iterations_on_digits(custom_parts, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(custom_parts), "--iters", "2", "--batch", "2",
                                      "--out", str(out), "--export-format", "none"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if not r.get("eval")]
    assert [r["iteration"] for r in train_rows] == [1, 2]
    assert all(r["loss_logratio_penalty"] >= 0 and r["leaves"] == 2 * 8 for r in train_rows)
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["advantage"] == {"kind": "rank"} and config["recipe"]["losses"][1]["kind"] == "logratio-penalty"
