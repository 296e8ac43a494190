"""Advantage estimators on hand-computed trees."""

import math

import pytest
import torch

from treesdk.advantages import GroupAdvantage, TreeBackupAdvantage, normalised_leaf_advantages
from treesdk.interfaces import Forest, TreeLayer
from treesdk.sde import SDE_FAMILIES


def make_forest(ks, log_probs, prompts=1, roots=1):
    """A forest skeleton with the given branching factors and per-layer log-probs [N, k]."""
    layers, n = [], prompts * roots
    for k, lp in zip(ks, log_probs):
        layers.append(
            TreeLayer(step=0, depth=0, sigma=0.5, sigma_next=0.4, noise_scale=0.7, k=k,
                      parents=torch.zeros(n, 1), children=torch.zeros(n, k, 1), log_probs=torch.tensor(lp, dtype=torch.float32),
                      velocity=torch.zeros(n, 1), parent_prompt=torch.arange(prompts).repeat_interleave(n // prompts))
        )
        n *= k
    below = 1
    for layer in reversed(layers):
        layer.leaves_below = below
        below *= layer.k
    return Forest(prompts=["p"] * prompts, cond={}, sigmas=torch.zeros(2), layers=layers,
                  leaves=torch.zeros(n, 1), leaves_per_prompt=n // prompts, window_start=0, nfe=0,
                  mean_std=SDE_FAMILIES["flow-sde"])


def test_tree_backup_three_levels_by_hand():
    # root -> 2 children -> 2 grandchildren each -> 2 leaves each (8 leaves), k = 2 at three layers
    lp0 = [[0.0, math.log(3.0)]]  # softmax -> [0.25, 0.75]
    lp1 = [[0.0, 0.0], [math.log(1.0), math.log(4.0)]]  # [0.5, 0.5], [0.2, 0.8]
    lp2 = [[0.0, 0.0]] * 4
    forest = make_forest([2, 2, 2], [lp0, lp1, lp2])
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0, 0.0, 4.0, 5.0, 3.0])
    out = TreeBackupAdvantage(eps=1e-12)(forest, {"r": rewards}, {"r": 1.0})  # eps > 0 (equal rewards: 0/0); negligible
    a = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    torch.testing.assert_close(out.leaf_advantages, a)
    torch.testing.assert_close(out.advantages[2].flatten(), a)  # leaf edges: their leaf
    n = [(a[0] + a[1]) / 2, (a[2] + a[3]) / 2, (a[4] + a[5]) / 2, (a[6] + a[7]) / 2]  # uniform at layer 2
    torch.testing.assert_close(out.advantages[1].flatten(), torch.stack(n))
    m0 = 0.5 * n[0] + 0.5 * n[1]
    m1 = 0.2 * n[2] + 0.8 * n[3]
    torch.testing.assert_close(out.advantages[0].flatten(), torch.stack([m0, m1]))
    # edge attribution: reward-adaptive clip uses the best leaf below the edge
    torch.testing.assert_close(out.clip_rewards[0].flatten(), torch.tensor([6.0, 5.0]))


def test_temperature_sharpens_toward_the_likely_child():
    # root edge (k=1) above a node with two children whose log-probs differ slightly
    forest = make_forest([1, 2], [[[0.0]], [[0.0, 0.01]]])
    rewards = torch.tensor([0.0, 1.0])
    a = normalised_leaf_advantages(rewards, 2)
    warm = TreeBackupAdvantage(temperature=1.0)(forest, {"r": rewards}, {"r": 1.0}).advantages[0].item()
    cold = TreeBackupAdvantage(temperature=1e-3)(forest, {"r": rewards}, {"r": 1.0}).advantages[0].item()
    w = torch.softmax(torch.tensor([0.0, 0.01]), 0)
    assert warm == pytest.approx(float((w * a).sum()), abs=1e-6)  # near-uniform: averaged log-probs
    assert abs(warm) < 0.01
    assert cold == pytest.approx(float(a[1]), abs=1e-3)  # sharp: the more likely child's advantage


def test_path_attribution_gives_each_edge_all_leaves_below():
    forest = make_forest([2, 2], [[[0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = GroupAdvantage(attribution="path")(forest, {"r": rewards}, {"r": 1.0})
    assert out.advantages[0].shape == (1, 2, 2) and out.advantages[1].shape == (2, 2, 1)
    torch.testing.assert_close(out.advantages[0].flatten(), out.leaf_advantages)
    torch.testing.assert_close(out.clip_rewards[0].flatten(), rewards)


def test_grpo_gives_the_plain_group_normalised_trajectory_advantage():
    # 2 prompts x 3 independent trajectories, 2 SDE steps each (k = 1)
    forest = make_forest([1, 1], [[[0.0]] * 6, [[0.0]] * 6], prompts=2, roots=3)
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    out = GroupAdvantage(eps=1e-4)(forest, {"r": rewards}, {"r": 1.0})
    g = rewards.view(2, 3)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True) + 1e-4)).flatten()
    for layer_adv in out.advantages:
        torch.testing.assert_close(layer_adv.flatten(), expected)


def test_multi_reward_is_weighted_sum_of_per_reward_normalisation():
    r1, r2 = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 0.0, 5.0, 5.0])
    forest = make_forest([4], [[[0.0] * 4]])
    out = GroupAdvantage()(forest, {"a": r1, "b": r2}, {"a": 0.8, "b": 0.2})
    expected = 0.8 * normalised_leaf_advantages(r1, 4) + 0.2 * normalised_leaf_advantages(r2, 4)
    torch.testing.assert_close(out.leaf_advantages, expected)
    torch.testing.assert_close(out.leaf_rewards, 0.8 * r1 + 0.2 * r2)


def test_unbiased_std_and_tiny_eps_as_dancegrpo():
    """DanceGRPO: (r - mean) / (r.std() + 1e-8) with torch's default (unbiased, n - 1) std per group."""
    rewards = torch.tensor([1.0, 2.0, 4.0, 0.5, 0.5, 3.0])
    got = normalised_leaf_advantages(rewards, 3, eps=1e-8, unbiased=True)
    for g in range(2):
        r = [float(x) for x in rewards[3 * g: 3 * g + 3]]
        m = sum(r) / 3
        sd = math.sqrt(sum((x - m) ** 2 for x in r) / 2)
        assert [float(x) for x in got[3 * g: 3 * g + 3]] == pytest.approx([(x - m) / (sd + 1e-8) for x in r], rel=1e-5)
    single = normalised_leaf_advantages(torch.tensor([0.3, 0.9]), 1, eps=1e-8, unbiased=True)
    assert single.tolist() == [0.0, 0.0]  # one leaf per prompt: no spread, no advantage (not NaN)
    glob = normalised_leaf_advantages(rewards, 3, global_std=True, eps=1e-4)
    pop = float(rewards.std(unbiased=False))
    assert float(glob[0]) == pytest.approx((1.0 - 7 / 3) / (pop + 1e-4), rel=1e-5)


def test_mean_backup_ignores_log_probs():
    lp0 = [[0.0, math.log(9.0)]]  # softmax would give [0.1, 0.9]
    forest = make_forest([2, 2], [lp0, [[0.0, 0.0], [0.0, 0.0]]])
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0])
    out = TreeBackupAdvantage(backup="mean", eps=1e-12)(forest, {"r": rewards}, {"r": 1.0})
    a = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    torch.testing.assert_close(out.advantages[0].flatten(), torch.stack([(a[0] + a[1]) / 2, (a[2] + a[3]) / 2]))


def test_depthwise_restandardises_each_depth_per_prompt_by_hand():
    """BranchGRPO: mean backup of leaf values, then per prompt and depth (x - mean) / (unbiased std + 1e-8)."""
    from treesdk.advantages import DepthwiseAdvantage

    # two prompts, each a binary tree of depth 2 (4 leaves)
    forest = make_forest([2, 2], [[[0.0, 0.0]] * 2, [[0.0, 0.0]] * 4], prompts=2)
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0, 5.0, 1.0, 1.0, 5.0])
    out = DepthwiseAdvantage(eps=1e-8)(forest, {"r": rewards}, {"r": 1.0})

    def z(values):
        m = sum(values) / len(values)
        sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        return [0.0] * len(values) if sd < 1e-6 else [(v - m) / (sd + 1e-8) for v in values]

    leaves = []
    for p in range(2):
        leaves += z([float(x) for x in rewards[4 * p: 4 * p + 4]])  # leaf normalisation (unbiased, 1e-8)
    expect_leaf = []
    expect_mid = []
    for p in range(2):
        lv = leaves[4 * p: 4 * p + 4]
        expect_leaf += z(lv)
        expect_mid += z([(lv[0] + lv[1]) / 2, (lv[2] + lv[3]) / 2])
    assert [float(x) for x in out.advantages[1].flatten()] == pytest.approx(expect_leaf, abs=1e-5)
    assert [float(x) for x in out.advantages[0].flatten()] == pytest.approx(expect_mid, abs=1e-5)
    assert [float(x) for x in out.advantages[0].flatten()[2:]] == [0.0, 0.0]  # prompt 1's two nodes are equal


def test_depthwise_is_built_from_a_recipe_and_refuses_path_attribution():
    from treesdk.advantages import DepthwiseAdvantage
    from treesdk.recipes import load_recipe, parts

    recipe = load_recipe("treegrpo", advantage={"kind": "depthwise", "backup": "softmax"})
    est = parts.build("advantage", recipe.advantage)
    assert isinstance(est, DepthwiseAdvantage) and est.backup == "softmax" and est.unbiased
    with pytest.raises(ValueError, match=r"attribution\s+Input should be 'edge'"):
        DepthwiseAdvantage(attribution="path")


def test_global_std_uses_the_whole_batch_inside_whole_batch():
    """Under several ranks the trainer runs the estimator inside ``whole_batch``: ``global_std`` then
    normalises by the std of every rank's leaves, as one process holding the whole batch does."""
    from treesdk.advantages import normalised_leaf_advantages, whole_batch

    everything = torch.tensor([0.1, 0.9, 0.4, 0.6, 0.0, 1.0, 0.2, 0.2])  # 4 prompts x 2 leaves
    alone = normalised_leaf_advantages(everything, 2, global_std=True)
    mine = everything[[0, 1, 4, 5]]  # rank 0 of 2: slots 0 and 2
    with whole_batch(lambda values, leaves: everything):
        gathered = normalised_leaf_advantages(mine, 2, global_std=True)
    assert torch.equal(gathered, alone[[0, 1, 4, 5]])
    local = normalised_leaf_advantages(mine, 2, global_std=True)  # outside: this rank's std only
    assert not torch.allclose(local, gathered)
