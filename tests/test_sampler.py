"""Tree sampler: NFE, structure, batch invariance, exact ratio before the first update."""

import pytest
import torch

from analytic import MixtureFlow
from treesdk.advantages import GroupAdvantage
from treesdk.losses import ClippedSurrogate
from treesdk.recipes import nfe_per_tree
from treesdk.sampler import sample_forest
from treesdk.sde import get_sde_family
from treesdk.training.loop.update import policy_update


@pytest.mark.parametrize(
    "T,s,d,k",
    [(10, 0, 3, 3), (10, 2, 3, 2), (6, 0, 0, 4), (5, 3, 2, 3), (8, 0, 8, 2), (7, 6, 1, 5), (4, 1, 2, 1)],
)
def test_nfe_matches_formula_and_counts_calls(T, s, d, k):
    model = MixtureFlow()
    forest = sample_forest(model, ["p", "q"], [1, 2], steps=T, k=k, depth=d, window_start=s, chunk=1000)
    per_tree = s + (d if k == 1 else (k**d - 1) // (k - 1)) + k**d * (T - s - d)
    assert per_tree == nfe_per_tree(T, s, d, k)
    assert forest.nfe == 2 * per_tree == model.rows
    assert model.calls == T  # one batched call per step: every node's velocity once for all children
    assert forest.leaves.shape == (2 * k**d, 1, 2, 2)
    assert len(forest.layers) == d


def test_grpo_costs_G_times_T():
    model = MixtureFlow()
    forest = sample_forest(model, ["p", "q", "r"], [1, 2, 3], steps=7, k=1, depth=0, roots=5, sde_outside_window=True)
    assert forest.nfe == 3 * 5 * 7
    assert len(forest.layers) == 7 and all(layer.k == 1 for layer in forest.layers)


def test_children_structure_and_leaves_below():
    forest = sample_forest(MixtureFlow(), ["p"], [0], steps=5, k=3, depth=2, window_start=1)
    first, second = forest.layers
    assert (first.num_parents, first.k, first.leaves_below) == (1, 3, 3)
    assert (second.num_parents, second.k, second.leaves_below) == (3, 3, 1)
    torch.testing.assert_close(second.parents, first.children.flatten(0, 1))


def test_a_tree_does_not_depend_on_its_batch():
    model = MixtureFlow()
    both = sample_forest(model, ["p", "q"], [11, 22], steps=6, k=2, depth=2, window_start=1, chunk=3)
    alone = sample_forest(model, ["q"], [22], steps=6, k=2, depth=2, window_start=1, chunk=3)
    torch.testing.assert_close(both.leaves[4:], alone.leaves, rtol=0, atol=1e-6)
    torch.testing.assert_close(both.layers[1].log_probs[2:], alone.layers[1].log_probs, rtol=0, atol=1e-6)


def test_window_must_fit():
    with pytest.raises(ValueError, match="does not fit"):
        sample_forest(MixtureFlow(), ["p"], [0], steps=4, k=2, depth=3, window_start=2)


class _RecordRatio(ClippedSurrogate):
    def __init__(self):
        super().__init__()
        self.ratios = []

    def __call__(self, batch):
        self.ratios.append(torch.exp(batch.new_log_probs - batch.old_log_probs).detach())
        return super().__call__(batch)


def test_ratio_is_exactly_one_before_the_first_update_and_one_call_per_parent():
    model = MixtureFlow(logits=(0.3, -0.2))
    forest = sample_forest(model, ["p", "q"], [5, 6], steps=6, k=3, depth=2, window_start=1, chunk=4)
    rewards = {"r": torch.randn(forest.leaves.shape[0])}
    targets = GroupAdvantage()(forest, rewards, {"r": 1.0})
    term = _RecordRatio()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    model.calls = model.rows = 0
    stats = policy_update(model, forest, targets, [(term, 1.0)], opt, model.trainable_parameters(), chunk=4)
    assert all(bool((r == 1.0).all()) for r in term.ratios)
    parents = sum(layer.num_parents for layer in forest.layers)
    assert stats.nfe_training == parents == model.rows == 2 * (1 + 3)


@pytest.mark.parametrize("family", ["flow-sde", "dance-sde", "cps"])
def test_every_family_samples_and_retrains_with_ratio_one(family):
    """The update recomputes log-probs with the family the sampler recorded on the forest."""
    model = MixtureFlow(logits=(0.3, -0.2))
    forest = sample_forest(model, ["p", "q"], [5, 6], steps=6, k=2, depth=2, window_start=3, chunk=4,
                           noise_level=0.6, mean_std=get_sde_family(family))
    assert forest.mean_std is get_sde_family(family)
    assert all(torch.isfinite(layer.log_probs).all() for layer in forest.layers)
    targets = GroupAdvantage()(forest, {"r": torch.randn(forest.leaves.shape[0])}, {"r": 1.0})
    term = _RecordRatio()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.0)
    policy_update(model, forest, targets, [(term, 1.0)], opt, model.trainable_parameters(), chunk=4)
    assert all(bool((r == 1.0).all()) for r in term.ratios)


def test_per_step_noise_schedule_reaches_every_step():
    from treesdk.recipes import Recipe
    from treesdk.sampler import sample_forest_for_recipe

    levels = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    recipe = Recipe(steps=6, tree={"k": 2, "d": 2, "sde_outside_window": True},
                    noise={"kind": "per-step", "levels": levels})
    forest = sample_forest_for_recipe(MixtureFlow(logits=(0.0, 0.0)), recipe, ["p"], [1], window_start=2)
    assert [layer.noise_scale for layer in forest.layers] == pytest.approx(levels)
    with pytest.raises(ValueError, match="one per step"):
        Recipe(steps=5, tree={"k": 2, "d": 2}, noise={"kind": "per-step", "levels": levels})
