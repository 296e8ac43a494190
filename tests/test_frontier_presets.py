"""The new presets carry their cited values (docs/forward_process.md's table), and each runs two
iterations on digits."""

import json
from pathlib import Path

import pytest
import torch

import treesdk

TABLE = Path(__file__).resolve().parents[1] / "docs" / "forward_process.md"
NEW = ["diffusionnft", "awm", "grpo-guard", "flow-grpo-fast", "branchgrpo", "tree-nft", "tree-awm"]


def _rows():
    section = TABLE.read_text().split("## Presets and their cited values", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in NEW:
            rows.append(tuple(cells))
    return rows


def _get(recipe, dotted):
    node = recipe.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _parse(text):
    for cast in (int, float, json.loads):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def test_the_table_covers_every_new_preset():
    assert {row[0] for row in _rows()} == set(NEW)


@pytest.mark.parametrize("preset,field,value,source", _rows())
def test_preset_equals_the_cited_value(preset, field, value, source):
    assert source
    got, expected = _get(treesdk.load_algorithm(preset), field), _parse(value)
    assert got == pytest.approx(expected, rel=1e-9) if isinstance(expected, float) else got == expected


@pytest.mark.parametrize("preset", NEW)
def test_two_iterations_on_digits(preset):
    torch.manual_seed(0)
    backend = treesdk.load_backend("digits")
    small = {"tree.roots": 2} if treesdk.load_algorithm(preset).tree.d == 0 or preset in ("grpo-guard", "flow-grpo-fast") else {}
    recipe = treesdk.load_algorithm(preset, **{**backend.recipe_defaults(), **small})
    before = [p.detach().clone() for p in backend.trainable_parameters()]
    run = treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")},
                        ["a handwritten digit 3", "a handwritten digit 7"], iters=2, batch=2, seed=0)
    assert len(run.history) == 2
    row = run.history[-1]
    assert row["nfe_training"] > 0 and all(torch.isfinite(torch.tensor(row["loss"])) for _ in [0])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, backend.trainable_parameters()))


def test_branch_point_example_branches_once_and_trains_only_that_step():
    """examples/branch_point.yaml: 4 roots, ODE to step round(0.25 T), 6 SDE children there, ODE after.
    One tree costs (s + 1) + 6 (T - s - 1) sampling forwards; training needs one velocity per root."""
    path = Path(__file__).resolve().parents[1] / "examples" / "branch_point.yaml"
    assert treesdk.load_algorithm(str(path), steps=8).branch_steps == [2]
    torch.manual_seed(0)
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm(str(path), **backend.recipe_defaults())
    (split,) = recipe.branch_steps
    assert (recipe.steps, split) == (10, 3)  # round(2.5) half up
    before = [p.detach().clone() for p in backend.trainable_parameters()]
    run = treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")},
                        ["a handwritten digit 3", "a handwritten digit 7"], iters=2, batch=2, seed=0)
    row = run.history[-1]
    per_tree = (split + 1) + 6 * (recipe.steps - split - 1)
    assert row["nfe_sampling"] == 2 * 4 * per_tree and row["nfe_training"] == 2 * 4
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, backend.trainable_parameters()))
