"""BranchGRPO's pruning and mixed ODE/SDE tree: the masks equal a re-derivation of the reference's
selection (transition lists, as train_branchgrpo_flux.py builds them), the update skips the pruned
parents (the NFE counters say so and the plan agrees), and tree.sde_steps samples ODE elsewhere."""

import pytest
import torch

import treesdk
from treesdk.pruning import active_depths, pruning_on
from treesdk.recipes import prune_edges
from treesdk.recipes.parts import build
from treesdk.sampler import sample_forest_for_recipe
from treesdk.training.loop.plan import plan_run

PROMPTS = ["a handwritten digit 3", "a handwritten digit 7"]


def _recipe(**kw):
    return treesdk.load_algorithm("branchgrpo", **{"steps": 8, "tree.split_steps": [0, 2], "tree.d": 2,
                                                   "optim.lr": 1e-4, **kw})


def _forest_and_targets(recipe, seed=0):
    backend = treesdk.load_backend("digits", device="cpu")
    forest = sample_forest_for_recipe(backend, recipe, PROMPTS, [seed, seed + 1], 0,
                                      mean_std=build("sde", recipe.sde))
    reward = treesdk.load_reward("digit-classifier", device="cpu")
    scores = {"digit-classifier": reward.score(backend.decode(forest.leaves), [PROMPTS[i] for i in forest.leaf_prompt])}
    targets = build("advantage", recipe.advantage)(forest, scores, {"digit-classifier": 1.0})
    return forest, targets


def _reference_kept(forest, targets, depths, width, ratio, last_split):
    """The reference's procedure on a list of transitions: depth filter, then width pruning of the
    transitions whose parent step is after the last split (mode 2 per prompt here)."""
    samples = []
    for li, layer in enumerate(forest.layers):
        for n in range(layer.num_parents):
            samples.append({"layer": li, "parent": n, "step": layer.step, "child_depth": layer.step + 1,
                            "advantage": float(targets.advantages[li][n].mean()), "prompt": int(layer.parent_prompt[n])})
    samples = [s for s in samples if s["child_depth"] not in depths]
    if width:
        last = [s for s in samples if s["step"] > last_split]
        other = [s for s in samples if s["step"] <= last_split]
        kept = []
        if width == 1:  # group by the branch the last split made: after it, parent n of every layer is leaf n's chain
            groups = {}
            for s in last:
                groups.setdefault(s["parent"], []).append(s)
            for group in groups.values():
                keep = max(1, int(len(group) * ratio))
                kept += sorted(group, key=lambda s: s["advantage"], reverse=True)[:keep]
        else:
            for p in range(forest.num_prompts):
                mine = sorted([s for s in last if s["prompt"] == p], key=lambda s: (s["parent"], s["layer"]))
                ranked = sorted(mine, key=lambda s: s["advantage"], reverse=True)
                keep = min(len(ranked), max(2, int(len(ranked) * ratio)))
                best = keep // 2
                kept += ranked[:best] + ranked[len(ranked) - (keep - best):]
        samples = other + kept
    return {(s["layer"], s["parent"]) for s in samples}


@pytest.mark.parametrize("prune", [
    {"depths": [4, 5]},
    {"width": 1, "width_ratio": 0.5},
    {"width": 2, "width_ratio": 0.5},
    {"depths": [6], "width": 1, "width_ratio": 0.4},
])
def test_masks_equal_the_reference_selection(prune):
    recipe = _recipe(**{"tree.prune": prune})
    forest, targets = _forest_and_targets(recipe)
    pruned = prune_edges(recipe, forest, targets, iteration=0, iters=10)
    got = {(li, int(n)) for li, mask in enumerate(pruned.trained) for n in mask.nonzero().flatten()}
    expected = _reference_kept(forest, targets, set(prune.get("depths", [])), prune.get("width", 0),
                               prune.get("width_ratio", 0.5), last_split=2)
    assert got == expected
    assert len(got) < sum(layer.num_parents for layer in forest.layers)


def test_sliding_depths_and_the_pruning_period():
    assert active_depths([15, 16, 17, 18], iteration=0, every=30, stop=9) == {15, 16, 17, 18}
    assert active_depths([15, 16, 17, 18], iteration=61, every=30, stop=9) == {13, 14, 15, 16}
    assert active_depths([15, 16, 17, 18], iteration=10_000, every=30, stop=9) == {9, 10, 11, 12}
    assert pruning_on(5, 10, 0.5) and not pruning_on(6, 10, 0.5)
    recipe = _recipe(**{"tree.prune": {"depths": [4], "until": 0.5}})
    forest, targets = _forest_and_targets(recipe)
    assert prune_edges(recipe, forest, targets, iteration=4, iters=10).trained is not None  # iteration 5 of 10
    assert prune_edges(recipe, forest, targets, iteration=5, iters=10) is targets


@pytest.mark.parametrize("prune", [{"depths": [4, 5, 6]}, {"width": 1, "width_ratio": 0.5}, {"width": 2}])
def test_a_pruned_run_skips_those_forwards_and_the_plan_counts_them(prune):
    torch.manual_seed(0)
    backend = treesdk.load_backend("digits", device="cpu")
    recipe = _recipe(**{"tree.prune": prune})
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier", device="cpu")}
    run = treesdk.train(recipe, backend, rewards, PROMPTS, iters=1, batch=2, seed=0)
    full = treesdk.train(_recipe(), treesdk.load_backend("digits", device="cpu"), rewards, PROMPTS, iters=1, batch=2, seed=0)
    plan = plan_run(recipe, None, batch=2, iters=1, seed=0)
    assert run.history[0]["nfe_training"] == plan["nfe_training"] < full.history[0]["nfe_training"]
    assert run.history[0]["nfe_sampling"] == full.history[0]["nfe_sampling"]  # sampling is unchanged


def test_sde_steps_make_the_other_non_branching_steps_ode():
    recipe = _recipe(**{"tree.sde_steps": [1, 3]})  # BranchGRPO --mix_ode_sde_tree: SDE in a window, split steps too
    forest, _ = _forest_and_targets(recipe)
    assert [layer.step for layer in forest.layers] == [0, 1, 2, 3]
    assert plan_run(recipe, None, batch=2)["nfe_training"] == sum(layer.num_parents for layer in forest.layers)
    with pytest.raises(ValueError, match="sde_outside_window"):
        _recipe(**{"tree.sde_steps": [1], "tree.sde_outside_window": False})


def test_depthwise_advantages_equal_branchgrpo_per_depth_normalisation():
    """compute_node_rewards_from_leaves + compute_hierarchical_advantages_by_depth, re-derived in
    float64 on one split-step forest: a node's reward is the mean raw reward of its leaves, and the
    nodes of one tree at one depth are standardised with the unbiased std (0 when it is below 1e-6)."""
    recipe = _recipe()
    forest, targets = _forest_and_targets(recipe)
    raw = targets.leaf_rewards.double()
    for li, layer in enumerate(forest.layers):
        below = layer.leaves_below  # leaves under each child of this layer, children in leaf order
        child_reward = raw.view(-1, below).mean(dim=1)  # [N * k]
        child_prompt = layer.parent_prompt.repeat_interleave(layer.k)
        for p in range(forest.num_prompts):
            values = child_reward[child_prompt == p]
            std = values.std() if len(values) > 1 else torch.tensor(0.0, dtype=torch.float64)
            expected = torch.zeros_like(values) if std < 1e-6 else ((values - values.mean()) / (std + 1e-8)).clamp(-5, 5)
            got = targets.advantages[li].view(-1)[child_prompt == p].double()
            assert torch.allclose(got, expected, atol=1e-5), (li, p)
