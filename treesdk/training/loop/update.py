"""The policy update: optimisation passes over the edges of a sampled forest.

For every layer, parents are processed in chunks; **one velocity call per parent** gives the new
log-probs of all its ``k`` stored children (and, when a term asks, one no-grad reference call).
Each chunk's loss is scaled so that the accumulated gradient is that of

    mean over layers ( mean over the layer's elements ( sum_terms weight * term ) ),

Flow-GRPO's per-timestep mean accumulated over timesteps. Trees (prompts) are split between
``minibatches`` optimiser steps per pass; ``passes`` repeats the whole schedule (PPO epochs).
With ``minibatches = 1`` the chunks are exactly the sampler's, so before the first optimiser step
every ratio is exactly 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from treesdk.errors import NonFiniteLossError  # noqa: F401 - raised here, re-exported for callers
from treesdk.interfaces import EdgeAdvantages, EdgeBatch, Forest, LossTerm, VelocityModel, iter_chunks, select_cond
from treesdk.training.loop.forward_update import forward_terms, forward_update
from treesdk.training.loop.gradient_step import minibatch_prompts, optimizer_step
from treesdk.training.loop.update_stats import UpdateStats


def sft_targets(forest: Forest, leaf_rewards: Tensor) -> list[Tensor]:
    """LayerTuning targets: per layer, for each parent, the stored velocity of the node on the best
    leaf's path at that layer, the best leaf taken among the leaves of the parent's own tree (best =
    highest weighted raw reward).

    A tree is everything under one node of the first stochastic layer: with ``tree.roots = 1`` the
    prompt's tree (Dynamic-TreeRPO's setting), with more roots each root's. Nodes of different
    roots have unrelated states (independent initial noises), so one root's velocity is no target
    for another's.

    Returns one ``[N_l, *latent]`` tensor per layer (detached).
    """
    first = forest.layers[0]
    per_tree = first.leaves_below * first.k
    trees = leaf_rewards.numel() // per_tree
    best_leaf = leaf_rewards.view(trees, per_tree).argmax(dim=1) + torch.arange(trees) * per_tree
    targets = []
    for layer in forest.layers:
        span = layer.leaves_below * layer.k  # leaves under one parent of this layer
        ancestor = best_leaf // span  # per tree: the index in this layer of the best leaf's ancestor
        parent_tree = torch.arange(layer.num_parents) * span // per_tree
        targets.append(layer.velocity[ancestor[parent_tree].to(layer.velocity.device)].detach())
    return targets


def _parent_rows(forest: Forest, prompts: Tensor, trained: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Per layer, indices of the parents that belong to ``prompts`` (in layer order), only the
    ``trained`` ones when a mask per layer is given (pruning)."""
    rows = [torch.isin(layer.parent_prompt.cpu(), prompts) for layer in forest.layers]
    if trained is not None:
        rows = [r & m.cpu() for r, m in zip(rows, trained)]
    return [r.nonzero().flatten() for r in rows]


def policy_update(
    model: VelocityModel,
    forest: Forest,
    targets: EdgeAdvantages,
    terms: Sequence[tuple[LossTerm, float]],
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    *,
    passes: int = 1,
    minibatches: int = 1,
    chunk: int = 64,
    grad_clip: float | None = 1.0,
    reduce_gradients: Callable[[Sequence[torch.nn.Parameter]], None] | None = None,
    seeds: Sequence[int] | None = None,
) -> UpdateStats:
    """Run ``passes * minibatches`` optimiser steps on ``forest``; returns counts and mean metrics.

    ``reduce_gradients`` (distributed training) is called on the parameters after each minibatch's
    backward passes and before clipping; it should average gradients over ranks. ``seeds`` (the
    trees' seeds, one per prompt) make the forward-process path's training draws reproducible
    (:mod:`treesdk.training.loop.forward_update`); the edge path draws nothing.
    """
    stats = UpdateStats()
    if forward_terms(terms):  # the recipe trains on clean leaves (DiffusionNFT, AWM): no edges needed
        return forward_update(model, forest, targets, terms, optimizer, params, passes=passes, minibatches=minibatches,
                              chunk=chunk, grad_clip=grad_clip, reduce_gradients=reduce_gradients, stats=stats, seeds=seeds)
    if not forest.layers:
        return stats
    need_ref = any(t.needs_reference for t, _ in terms)
    need_old_mean = any(getattr(t, "needs_old_mean", False) for t, _ in terms)
    need_sft = any(t.needs_sft_target for t, _ in terms)
    sft = sft_targets(forest, targets.leaf_rewards) if need_sft else None
    groups = minibatch_prompts(forest.num_prompts, minibatches)
    totals: dict[str, float] = {}
    weight_sum = 0.0
    model.train_mode(True)
    try:
        for _ in range(passes):
            for group in groups:
                optimizer.zero_grad(set_to_none=True)
                rows_per_layer = _parent_rows(forest, group, targets.trained)
                layers_used = sum(1 for rows in rows_per_layer if len(rows))
                for li, (layer, rows) in enumerate(zip(forest.layers, rows_per_layer)):
                    for part in iter_chunks(len(rows), chunk):
                        index = rows[part]
                        scale = len(index) / len(rows) / layers_used
                        loss, metrics, n_ref = _chunk_loss(model, forest, targets, terms, li, index, need_ref, sft, need_old_mean)
                        stats.nfe_training += len(index)
                        stats.nfe_reference += n_ref
                        if not torch.isfinite(loss):
                            raise NonFiniteLossError(
                                f"loss is {float(loss)} at layer {li} (step {layer.step}); metrics {metrics}; "
                                "no optimiser step was taken"
                            )
                        (loss * scale).backward()
                        weight_sum += scale
                        for key, value in metrics.items():
                            totals[key] = totals.get(key, 0.0) + value * scale
                optimizer_step(params, optimizer, stats, grad_clip, reduce_gradients)
    finally:
        model.train_mode(False)
        optimizer.zero_grad(set_to_none=True)
    stats.metrics = {key: value / weight_sum for key, value in totals.items()} if weight_sum else {}
    return stats


def _chunk_loss(
    model: VelocityModel,
    forest: Forest,
    targets: EdgeAdvantages,
    terms: Sequence[tuple[LossTerm, float]],
    layer_index: int,
    index: Tensor,
    need_ref: bool,
    sft: list[Tensor] | None,
    need_old_mean: bool = False,
) -> tuple[Tensor, dict[str, float], int]:
    layer = forest.layers[layer_index]
    device = layer.parents.device
    idx = index.to(device)
    parents = layer.parents[idx]
    cond = select_cond(forest.cond, layer.parent_prompt[idx])
    sigma = torch.full((len(idx),), layer.sigma, device=device, dtype=torch.float32)
    velocity = model.velocity(parents, sigma, cond).float()
    mean, std = forest.mean_std(parents, velocity, layer.sigma, layer.sigma_next, layer.noise_scale)
    children = layer.children[idx].flatten(0, 1)
    new_logp = forest.mean_std.log_prob(children, mean.repeat_interleave(layer.k, dim=0), std[:1]).view(len(idx), layer.k)
    ref_mean = None
    n_ref = 0
    if need_ref:
        with torch.no_grad(), model.reference():
            ref_v = model.velocity(parents, sigma, cond).float()
        ref_mean, _ = forest.mean_std(parents, ref_v, layer.sigma, layer.sigma_next, layer.noise_scale)
        n_ref = len(idx)
    batch = EdgeBatch(
        layer=layer,
        old_log_probs=layer.log_probs[idx],
        new_log_probs=new_logp,
        new_velocity=velocity,
        advantages=targets.advantages[layer_index][idx.to(targets.advantages[layer_index].device)].to(device),
        clip_rewards=targets.clip_rewards[layer_index][idx.to(targets.clip_rewards[layer_index].device)].to(device),
        std=std[:1].reshape(()),
        new_mean=mean,
        ref_mean=ref_mean,
        sft_target=sft[layer_index][idx] if sft is not None else None,
        kl_std=forest.mean_std.kl_std(std[:1].reshape(()), layer.sigma, layer.sigma_next) if need_ref else None,
        old_mean=forest.mean_std(parents, layer.velocity[idx], layer.sigma, layer.sigma_next, layer.noise_scale)[0]
        if need_old_mean else None,
    )
    total = velocity.new_zeros(())
    metrics: dict[str, float] = {}
    for term, weight in terms:
        value, term_metrics = term(batch)
        total = total + weight * value
        metrics[f"loss_{term.name}"] = float(value.detach())
        metrics.update(term_metrics)
    return total, metrics, n_ref
