"""The forward-process losses equal float64 re-derivations of the references' formulas, GRPO-Guard's
ratio equals its closed form, branch-point trees sample what they say, and the update counts every
velocity call it makes."""

import math

import pytest
import torch

import treesdk
from treesdk.forward_losses import (
    CleanBatch, NFTLoss, AWMLoss, VelocityKL, grid_permutation_sigmas, stratified_grid_sigmas, unit_reward,
)
from treesdk.interfaces import EdgeBatch, TreeLayer
from treesdk.losses import ClippedSurrogate
from treesdk.sampler import nfe_split_tree, sample_forest


def _inputs(seed=0, b=5, shape=(2, 3, 3)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, *shape, generator=g)
    noise = torch.randn(b, *shape, generator=g)
    sigma = torch.rand(b, generator=g) * 0.9 + 0.05
    xt = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * noise
    v = torch.randn(b, *shape, generator=g)
    v_old = torch.randn(b, *shape, generator=g)
    adv = torch.randn(b, generator=g) * 4
    return x0, noise, sigma, xt, v, v_old, adv


def _nft_reference(x0, xt, sigma, v, v_old, adv, beta, clip):
    """Straight from DiffusionNFT's train_nft_sd3.py, in float64, one sample at a time."""
    total = 0.0
    for i in range(x0.shape[0]):
        a = min(max(float(adv[i]), -clip), clip)
        r = min(max(a / clip / 2.0 + 0.5, 0.0), 1.0)
        t = float(sigma[i])
        pos = beta * v[i] + (1 - beta) * v_old[i]
        neg = (1 + beta) * v_old[i] - beta * v[i]
        x0p, x0n = xt[i] - t * pos, xt[i] - t * neg
        wp = max(float((x0p - x0[i]).abs().mean()), 1e-5)
        wn = max(float((x0n - x0[i]).abs().mean()), 1e-5)
        lp = float(((x0p - x0[i]) ** 2).mean()) / wp
        ln = float(((x0n - x0[i]) ** 2).mean()) / wn
        total += (r * lp / beta + (1 - r) * ln / beta) * clip
    return total / x0.shape[0]


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_nft_loss_equals_the_reference_formula(beta):
    x0, noise, sigma, xt, v, v_old, adv = _inputs()
    term = NFTLoss(beta=beta, adv_clip=5.0)
    batch = CleanBatch(x0, noise, xt, sigma, {}, adv, v.clone().requires_grad_(True), v_old=v_old)
    loss, _ = term(batch)
    expected = _nft_reference(*(t.double() for t in (x0, xt, sigma, v, v_old, adv)), beta, 5.0)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert batch.v_theta.grad is not None and batch.v_theta.grad.abs().sum() > 0


def test_nft_gradient_is_positive_weighted_matching_when_the_policies_agree():
    """With v_old = v_theta both implicit policies equal v_theta; the gradient is then
    beta * c * (r - (1 - r)) ... pulled towards x0 on good samples, pushed away on bad ones."""
    x0, noise, sigma, xt, v, _, _ = _inputs(1)
    good = CleanBatch(x0, noise, xt, sigma, {}, torch.full((5,), 5.0), v.clone().requires_grad_(True), v_old=v)
    bad = CleanBatch(x0, noise, xt, sigma, {}, torch.full((5,), -5.0), v.clone().requires_grad_(True), v_old=v)
    NFTLoss(beta=1.0)(good)[0].backward()
    NFTLoss(beta=1.0)(bad)[0].backward()
    assert torch.allclose(good.v_theta.grad, -bad.v_theta.grad, atol=1e-6)


def test_unit_reward_maps_the_clip_range_onto_zero_one():
    assert unit_reward(torch.tensor([-9.0, -5.0, 0.0, 2.5, 5.0, 9.0]), 5.0).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def _awm_reference(v, noise, x0, sigma, adv, weighting, power, clip, a_max):
    total = 0.0
    for i in range(v.shape[0]):
        lp = -float(((v[i] - (noise[i] - x0[i])) ** 2).mean())
        t = float(sigma[i])
        lp = {"uniform": lp, "t": lp * t, "t**2": lp * t * t,
              "ghuber": -(((-lp + 1e-10) ** power) - (1e-10 ** power)) * t / power}[weighting]
        a = min(max(float(adv[i]), -clip), clip) / clip * a_max
        total += -a  # on-policy: the ratio is exactly 1 in value
    return total / v.shape[0]


@pytest.mark.parametrize("weighting", ["uniform", "t", "t**2", "ghuber"])
def test_awm_loss_and_gradient_equal_the_reference(weighting):
    x0, noise, sigma, xt, v, _, adv = _inputs(2)
    batch = CleanBatch(x0, noise, xt, sigma, {}, adv, v.double().clone().requires_grad_(True))
    term = AWMLoss(weighting=weighting, power=0.25, clip_range=1.0, adv_clip=5.0, advantage_max=1.0)
    loss, _ = term(CleanBatch(x0.double(), noise.double(), xt.double(), sigma.double(), {}, adv.double(), batch.v_theta))
    assert float(loss.detach()) == pytest.approx(_awm_reference(*(t.double() for t in (v, noise, x0, sigma, adv)), weighting, 0.25, 5.0, 1.0), rel=1e-6)
    loss.backward()
    # d loss / d v = -mean_i A_i d lp_i / d v, by finite differences of the float64 reference log-likelihood
    vd = v.double()
    i, e = 0, (0, 1, 1, 1)
    def lp_i(vv):
        lp = -((vv[i] - (noise[i].double() - x0[i].double())) ** 2).mean()
        t = sigma[i].double()
        return {"uniform": lp, "t": lp * t, "t**2": lp * t * t,
                "ghuber": -(((-lp + 1e-10) ** 0.25) - (1e-10 ** 0.25)) * t / 0.25}[weighting]
    h = 1e-6
    plus, minus = vd.clone(), vd.clone()
    plus[e] += h
    minus[e] -= h
    a = min(max(float(adv[i]), -5.0), 5.0) / 5.0
    expected = -a * float(lp_i(plus) - lp_i(minus)) / (2 * h) / v.shape[0]
    assert float(batch.v_theta.grad[e]) == pytest.approx(expected, rel=1e-4, abs=1e-10)


def test_velocity_kl_is_the_mean_squared_velocity_gap():
    x0, noise, sigma, xt, v, v_old, adv = _inputs(3)
    ref = torch.randn_like(v)
    batch = CleanBatch(x0, noise, xt, sigma, {}, adv, v, v_old=v_old, v_ref=ref)
    assert float(VelocityKL("reference")(batch)[0]) == pytest.approx(float(((v.double() - ref.double()) ** 2).mean()), rel=1e-6)
    assert float(VelocityKL("old")(batch)[0]) == pytest.approx(float(((v.double() - v_old.double()) ** 2).mean()), rel=1e-6)


def test_training_sigmas_come_from_the_sampling_grid():
    grid = treesdk.sde.sigma_grid(10)
    perm = grid_permutation_sigmas(grid, 4, 0.99, torch.Generator().manual_seed(0))
    assert perm.shape == (9, 4)
    for b in range(4):  # 9 distinct grid values per leaf, never the final 0
        assert len(set(perm[:, b].tolist())) == 9 and set(perm[:, b].tolist()) <= set(grid[:10].tolist())
    strat = stratified_grid_sigmas(grid, 3, 6, 0.9, torch.Generator().manual_seed(0))
    assert strat.shape == (6, 3) and (strat == strat[:, :1]).all()  # one level per slot, shared by the batch
    index = [int((grid - s).abs().argmin()) for s in strat[:, 0]]
    assert index == sorted(index) and index[0] >= 1 and index[-1] <= 9  # stratified in [1, int(0.9 T)]


def _edge_batch(seed=4, n=3, k=2, shape=(1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    s = 0.3
    mean_old = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(n, k, *shape, generator=g, dtype=torch.float64)
    children = mean_old.unsqueeze(1) + s * eps
    mean_new = mean_old + 0.05 * torch.randn(n, *shape, generator=g, dtype=torch.float64)
    def lp(mean):
        e = -((children - mean.unsqueeze(1)) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
        return e.flatten(2).mean(-1)
    layer = TreeLayer(0, 0, 1.0, 0.9, 0.7, k, mean_old, children, lp(mean_old), mean_old, torch.zeros(n, dtype=torch.long))
    adv = torch.randn(n, k, 1, generator=g, dtype=torch.float64)
    batch = EdgeBatch(layer, lp(mean_old), lp(mean_new), mean_new, adv, adv.abs(), torch.tensor(s, dtype=torch.float64),
                      new_mean=mean_new, old_mean=mean_old)
    return batch, eps, mean_new - mean_old


def test_grpo_guard_ratio_is_the_noise_projection_of_the_mean_shift():
    """Flow-Factory's guard ratio exp((lp_new - lp_old) s + mse / (2 s)) reduces, for a Gaussian step, to
    exp(mean((mean_new - mean_old) * eps)): no drift below 1, no 1/s growth."""
    batch, eps, shift = _edge_batch()
    guarded = ClippedSurrogate(eps=0.5, guard=True).log_ratio(batch).squeeze(-1)
    closed = (shift.unsqueeze(1) * eps).flatten(2).mean(-1)
    assert torch.allclose(guarded, closed, atol=1e-12)


def test_grpo_guard_off_is_the_plain_surrogate_bit_for_bit():
    batch, _, _ = _edge_batch(5)
    plain, _ = ClippedSurrogate(eps=1e-2)(batch)
    log_ratio = (batch.new_log_probs - batch.old_log_probs).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    e = torch.full_like(batch.clip_rewards, 1e-2)  # the surrogate as it was before the guard option
    adv = batch.advantages.float()
    expected = torch.maximum(-adv * ratio, -adv * torch.minimum(torch.maximum(ratio, 1.0 - e), 1.0 + e)).mean()
    assert torch.equal(plain, expected)
    assert ClippedSurrogate().needs_old_mean is False and ClippedSurrogate(guard=True).needs_old_mean is True




def test_split_steps_branch_exactly_there_and_count_their_evaluations():
    model = treesdk.load_backend("digits")
    forest = sample_forest(model, ["a handwritten digit 3"], [0], steps=10, k=2, depth=3, split_steps=[1, 4, 8],
                           sde_outside_window=True)
    branching = [(layer.step, layer.depth, layer.k) for layer in forest.layers if layer.k > 1]
    assert branching == [(1, 0, 2), (4, 1, 2), (8, 2, 2)]
    assert forest.leaves.shape[0] == 8 and len(forest.layers) == 10  # every other step a non-branching SDE edge
    assert forest.nfe == nfe_split_tree(10, [1, 4, 8], 2) == 1 + 1 + 2 * 3 + 4 * 4 + 8
    with pytest.raises(ValueError, match="split_steps"):
        sample_forest(model, ["a handwritten digit 3"], [0], steps=10, k=2, depth=2, split_steps=[1, 4, 8])


def test_split_fractions_follow_the_sampling_steps():
    from treesdk.sampler import sample_forest_for_recipe

    assert treesdk.load_algorithm("branchgrpo").branch_steps == [0, 3, 6, 9]  # the reference's steps of 20
    recipe = treesdk.load_algorithm("branchgrpo", steps=8)
    assert recipe.branch_steps == [0, 1, 2, 4]  # 0.15 * 8 = 1.2, 0.3 * 8 = 2.4, 0.45 * 8 = 3.6
    assert recipe.window_start(5, 0) == 0
    forest = sample_forest_for_recipe(treesdk.load_backend("digits"), recipe, ["a handwritten digit 3"], [0], window_start=0)
    assert [layer.step for layer in forest.layers if layer.k > 1] == [0, 1, 2, 4]
    assert forest.nfe == nfe_split_tree(8, [0, 1, 2, 4], 2)
    override = treesdk.load_algorithm("branchgrpo", **{"steps": 8, "tree.split_steps": [0, 5], "tree.d": 2})
    assert override.branch_steps == [0, 5]  # split_steps, when given, takes precedence
    with pytest.raises(Exception, match="share a step"):
        treesdk.load_algorithm("branchgrpo", steps=4)  # 0.15 * 4 and 0.3 * 4 both round to step 1
    with pytest.raises(Exception, match="split_fractions"):
        treesdk.load_algorithm("branchgrpo", **{"tree.split_fractions": [0.0, 0.5, 1.0, 0.2]})


def test_mixing_edge_and_clean_leaf_terms_is_refused():
    recipe = treesdk.load_algorithm("diffusionnft", **{"tree.roots": 2, "steps": 4})
    recipe = recipe.model_copy(update={"losses": [*recipe.losses, treesdk.load_algorithm("grpo").losses[0]]})
    backend = treesdk.load_backend("digits")
    with pytest.raises(treesdk.errors.UserError, match="mix edge terms and clean-leaf terms"):
        treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")},
                      ["a handwritten digit 3"], iters=1, batch=1)


def test_the_forward_update_counts_every_velocity_call():
    """DiffusionNFT at T = 4, fraction 0.99 -> int(3.96) = 3 training sigmas per leaf; each costs one
    v_theta (with gradient), one v_old and one v_ref forward. Counted by wrapping the backend."""
    backend = treesdk.load_backend("digits")
    calls = {"rows": 0}
    velocity = backend.velocity
    def counting(x, sigma, cond):
        calls["rows"] += x.shape[0]
        return velocity(x, sigma, cond)
    backend.velocity = counting
    recipe = treesdk.load_algorithm("diffusionnft", **{"tree.roots": 3, "steps": 4, "optim.lr": 1e-4})
    run = treesdk.train(recipe, backend, {"digit-classifier": treesdk.load_reward("digit-classifier")},
                        ["a handwritten digit 3", "a handwritten digit 5"], iters=1, batch=2, seed=0)
    row = run.history[0]
    leaves = 2 * 3
    assert row["nfe_sampling"] == leaves * 4
    assert row["nfe_training"] == leaves * 3 and row["nfe_old"] == leaves * 3 and row["nfe_ref"] == leaves * 3
    assert row["nfe_reference"] == row["nfe_old"] + row["nfe_ref"]
    assert calls["rows"] == row["nfe_sampling"] + row["nfe_training"] + row["nfe_reference"]
