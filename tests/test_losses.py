"""Loss terms: clipping modes, reward-adaptive bounds, LayerTuning target, KL."""

import math

import pytest
import torch

from analytic import MixtureFlow
from treesdk.interfaces import EdgeBatch
from treesdk.losses import ClippedSurrogate, KLToReference, LayerTuningSFT
from treesdk.sampler import sample_forest
from treesdk.training.update import sft_targets


def batch(new_lp, old_lp, adv, rewards=None, **kw):
    n, k = new_lp.shape
    return EdgeBatch(layer=None, old_log_probs=old_lp, new_log_probs=new_lp,
                     new_velocity=torch.zeros(n, 1), advantages=adv,
                     clip_rewards=rewards if rewards is not None else torch.zeros_like(adv), std=torch.tensor(1.0), **kw)


def test_reward_adaptive_bounds_on_known_rewards():
    term = ClippedSurrogate("reward-adaptive", eps_low=0.1, eps_high=0.5, eta=2.0)
    lo, hi = term.bounds(torch.tensor([0.0, 1.0, 3.0]))
    expected = torch.tensor([0.5, 0.1 + 0.4 * math.exp(-2.0), 0.1 + 0.4 * math.exp(-6.0)])
    torch.testing.assert_close(lo, expected)
    torch.testing.assert_close(hi, expected)


def test_clipped_surrogate_values():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))
    adv = torch.tensor([[[1.0], [-1.0]]])
    loss, metrics = ClippedSurrogate("fixed", eps=0.2)(batch(new, old, adv))
    # edge 1: A=1, rho=1.5 -> min(1.5, 1.2) = 1.2; edge 2: A=-1, rho=0.5 -> min(-0.5, -0.8) = -0.8
    assert float(loss) == pytest.approx(-(1.2 - 0.8) / 2)
    assert metrics["clip_fraction"] == 1.0
    loss_a, _ = ClippedSurrogate("asymmetric", eps_low=0.1, eps_high=0.3)(batch(new, old, adv))
    assert float(loss_a) == pytest.approx(-(1.3 - 0.9) / 2)


def test_surrogate_gradient_is_policy_gradient_at_ratio_one():
    new = torch.zeros(2, 3, requires_grad=True)
    adv = torch.randn(2, 3, 1)
    loss, _ = ClippedSurrogate()(batch(new, torch.zeros(2, 3), adv))
    loss.backward()
    torch.testing.assert_close(new.grad, -adv.squeeze(-1) / 6)


def test_layertuning_target_is_best_leaf_ancestor():
    forest = sample_forest(MixtureFlow(), ["p", "q"], [3, 4], steps=5, k=2, depth=3, window_start=1)
    rewards = torch.zeros(16)
    rewards[5] = 1.0  # prompt 0, leaf 5 = path 0 -> 1 -> 0 -> 1 (binary digits 101)
    rewards[8 + 6] = 2.0  # prompt 1, leaf 6 = path 1 -> 1 -> 0
    targets = sft_targets(forest, rewards)
    l0, l1, l2 = forest.layers
    torch.testing.assert_close(targets[0], l0.velocity[[0, 1]])  # roots are the ancestors
    torch.testing.assert_close(targets[1][:2], l1.velocity[[1, 1]])  # prompt 0: node 1 of layer 1
    torch.testing.assert_close(targets[1][2:], l1.velocity[[3, 3]])  # prompt 1: node 2 + 1
    torch.testing.assert_close(targets[2][:4], l2.velocity[[2] * 4])  # prompt 0: 5 // 2
    torch.testing.assert_close(targets[2][4:], l2.velocity[[7] * 4])  # prompt 1: (8 + 6) // 2
    vel = torch.randn(2, 1, requires_grad=True)
    b = batch(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1, 1), sft_target=torch.ones(2, 1))
    b.new_velocity = vel
    loss, _ = LayerTuningSFT()(b)
    assert float(loss.detach()) == pytest.approx(float(((vel.detach() - 1) ** 2).mean()))


def test_kl_term():
    b = batch(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 1), new_mean=torch.ones(1, 4), ref_mean=torch.zeros(1, 4))
    b.std = torch.tensor(0.5)
    loss, _ = KLToReference()(b)
    assert float(loss) == pytest.approx(1.0 / (2 * 0.25))
