"""Advantage estimators on hand-computed trees."""

import math

import pytest
import torch

from treesdk.advantages import GroupAdvantage, TreeBackupAdvantage, normalised_leaf_advantages
from treesdk.interfaces import Forest, TreeLayer
from treesdk.sde import sde_mean_std


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
                  mean_std=sde_mean_std)


def test_tree_backup_three_levels_by_hand():
    # root -> 2 children -> 2 grandchildren each -> 2 leaves each (8 leaves), k = 2 at three layers
    lp0 = [[0.0, math.log(3.0)]]  # softmax -> [0.25, 0.75]
    lp1 = [[0.0, 0.0], [math.log(1.0), math.log(4.0)]]  # [0.5, 0.5], [0.2, 0.8]
    lp2 = [[0.0, 0.0]] * 4
    forest = make_forest([2, 2, 2], [lp0, lp1, lp2])
    rewards = torch.tensor([1.0, 3.0, 2.0, 6.0, 0.0, 4.0, 5.0, 3.0])
    out = TreeBackupAdvantage(eps=0.0)(forest, {"r": rewards}, {"r": 1.0})
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
