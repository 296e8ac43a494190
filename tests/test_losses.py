"""Loss terms: clipping modes, reward-adaptive bounds, LayerTuning target, KL."""

import math

import pytest
import torch

from analytic import MixtureFlow
from treesdk.interfaces import EdgeBatch
from treesdk.losses import ClippedSurrogate, KLToReference, LayerTuningSFT
from treesdk.sampler import sample_forest
from treesdk.training.loop.update import sft_targets


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


def test_kl_forms_flow_grpo_and_transition():
    """flow-grpo divides by std_t^2 (Flow-GRPO's KL); transition by the transition variance std_t^2 (-dt)."""
    b = batch(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 1), new_mean=torch.full((1, 4), 0.3),
              ref_mean=torch.zeros(1, 4))
    std_t, dt = 0.8, -0.1
    b.std = torch.tensor(std_t * math.sqrt(-dt))
    b.kl_std = torch.tensor(std_t)
    flow, _ = KLToReference("flow-grpo")(b)
    exact, _ = KLToReference("transition")(b)
    assert float(flow) == pytest.approx(0.09 / (2 * std_t**2), rel=1e-6)
    assert float(exact) == pytest.approx(0.09 / (2 * std_t**2 * -dt), rel=1e-6)
    with pytest.raises(ValueError, match="KL form"):
        KLToReference("reverse")


def test_layertuning_target_stays_inside_each_root_tree():
    """With 2 roots per prompt each root's tree has its own best leaf: one root's velocities are no
    target for the other root's nodes (independent initial noises)."""
    forest = sample_forest(MixtureFlow(), ["p", "q"], [3, 4], steps=5, k=2, depth=2, roots=2, window_start=1)
    assert forest.leaves_per_prompt == 8 and forest.layers[0].num_parents == 4  # 2 prompts x 2 roots
    rewards = torch.zeros(16)
    rewards[1] = 1.0  # prompt 0, root 0, leaf 1 (path 0 -> 1)
    rewards[6] = 3.0  # prompt 0, root 1, leaf 2 (path 1 -> 0): the prompt's best, but not root 0's
    rewards[8 + 3] = 2.0  # prompt 1, root 0, leaf 3
    rewards[12 + 0] = 0.5  # prompt 1, root 1, leaf 0
    targets = sft_targets(forest, rewards)
    l0, l1 = forest.layers
    torch.testing.assert_close(targets[0], l0.velocity)  # each root is its own tree's ancestor
    # layer 1: parents 2r and 2r + 1 belong to root r (r = 0..3 over both prompts)
    torch.testing.assert_close(targets[1], l1.velocity[[0, 0, 3, 3, 5, 5, 6, 6]])
