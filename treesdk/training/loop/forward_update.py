"""The forward-process update: train on the forest's clean leaves, not on its edges.

Chosen by :func:`treesdk.training.loop.update.policy_update` when the recipe's loss terms consume
clean leaves (:class:`treesdk.forward_losses.ForwardTerm`, e.g. DiffusionNFT, AWM). Whatever
sampled the leaves (ODE, a tree, a backend's solver), the update sees only each leaf's clean latent
``x0``, its prompt and its advantage (``EdgeAdvantages.leaf_advantages``):

    for each of n training slots: sigma per leaf (the terms' sigma sampler), fresh noise,
    x_sigma = (1 - sigma) x0 + sigma noise; v_theta (with gradient), v_old (old policy, no grad)
    and v_ref (adapter off, no grad) when a term asks; loss = sum_terms weight * term.

Given the trees' seeds (``seeds``, one per prompt, the sampler's), every training draw is a pure
function of them: leaf ``j`` of prompt ``p`` takes its noise levels (``grid-permutation``) from a
generator seeded by ``(seeds[p], j, pass)`` and its noise at training slot ``n`` from one seeded by
``(seeds[p], j, pass, n)``; ``stratified`` levels, shared by a minibatch, from its prompts' seeds and
the pass. So a run repeated from its ``config.json``, or resumed from a checkpoint, trains on
exactly the same ``x_sigma``. Without ``seeds`` the draws come from torch's global generator.

The gradient of one optimiser step is that of the mean over slots and leaves of the minibatch
(DiffusionNFT and AWM accumulate over their training timesteps the same way). Every velocity call is
counted: ``nfe_training`` the forwards with gradient, ``nfe_reference`` the no-grad forwards of the
old and the reference policies (``nfe_old`` and ``nfe_ref`` among the metrics).

The old policy is a float32 copy of the trainable weights, moved after every iteration by its decay
schedule (:class:`treesdk.forward_losses.OldPolicySchedule`); with decay 0 it is the weights before
the iteration's update. The trainer takes it with :func:`behaviour_policy` (one object per run, kept
on the loss term that asked for it), samples the forest with its weights swapped in when a term says
so (:func:`sampling_weights`; DiffusionNFT does) and writes it into checkpoints
(:meth:`OldPolicy.state_dict`, keys ``old.*``), so a resumed run continues the same old policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from treesdk.errors import NonFiniteLossError, UserError
from treesdk.forward_losses import CleanBatch, OldPolicySchedule, grid_permutation_sigmas, stratified_grid_sigmas
from treesdk.interfaces import EdgeAdvantages, Forest, LossTerm, VelocityModel, iter_chunks, select_cond
from treesdk.training.loop.batches import derived_seed
from treesdk.training.loop.gradient_step import minibatch_prompts, optimizer_step
from treesdk.training.loop.update_stats import UpdateStats


class OldPolicy:
    """A float32 copy of ``params`` (the old / behaviour policy) and its decay schedule.

    ``samples``: the forest is sampled with these weights (:func:`sampling_weights`)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], schedule: OldPolicySchedule, samples: bool = False) -> None:
        self.params = list(params)
        self.schedule = schedule
        self.samples = bool(samples)
        self.steps = 0  # optimiser steps taken while this copy was kept
        #: called after the weights are swapped in or out (FSDP: reshard, so forwards see the new shards)
        self.on_swap: Callable[[], None] | None = None
        with torch.no_grad():
            self.shadow = [p.detach().float().clone() for p in self.params]

    def state_dict(self) -> dict[str, Tensor]:
        """Checkpoint tensors: ``old.<position>`` the copy (float32, in ``params`` order) and
        ``old.steps`` the optimiser steps its schedule has counted."""
        out = {f"old.{i}": t for i, t in enumerate(self.shadow)}
        out["old.steps"] = torch.tensor([self.steps], dtype=torch.int64)
        return out

    def load_state_dict(self, tensors: Mapping[str, Tensor]) -> bool:
        """Restore :meth:`state_dict` from checkpoint tensors; returns whether they held an old policy.
        Without ``old.*`` keys (a checkpoint of a run without one) the copy restarts from the live weights."""
        keys = sorted((k for k in tensors if k.startswith("old.") and k != "old.steps"), key=lambda k: int(k.split(".", 1)[1]))
        with torch.no_grad():
            if not keys:
                for old, p in zip(self.shadow, self.params):
                    old.copy_(p.detach().float())
                return False
            if len(keys) != len(self.shadow):
                raise UserError(f"the checkpoint's old policy holds {len(keys)} tensors, the model has "
                                f"{len(self.shadow)} trainable parameters: it was written by another model or recipe")
            for key, old in zip(keys, self.shadow):
                if tuple(tensors[key].shape) != tuple(old.shape):
                    raise UserError(f"the checkpoint's old policy tensor {key} has shape {tuple(tensors[key].shape)}, "
                                    f"the parameter {tuple(old.shape)}: it was written by another model or LoRA rank")
                old.copy_(tensors[key].to(dtype=old.dtype, device=old.device))
        self.steps = int(tensors["old.steps"].flatten()[0]) if "old.steps" in tensors else 0
        return True

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the parameters hold the old weights; the live ones come back after."""
        live = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, old in zip(self.params, self.shadow):
                    p.copy_(old.to(dtype=p.dtype, device=p.device))
            if self.on_swap is not None:
                self.on_swap()
            yield
        finally:
            with torch.no_grad():
                for p, keep in zip(self.params, live):
                    p.copy_(keep)
            if self.on_swap is not None:
                self.on_swap()

    def advance(self, steps: int) -> float:
        """``old <- d old + (1 - d) theta`` with ``d = schedule.decay(steps)``; returns ``d``."""
        d = self.schedule.decay(steps)
        with torch.no_grad():
            for old, p in zip(self.shadow, self.params):
                old.mul_(d).add_(p.detach().float().to(old.device), alpha=1.0 - d)
        return d


def forward_terms(terms: Sequence[tuple[LossTerm, float]]) -> bool:
    """True when the recipe's terms consume clean leaves; a mix with edge terms is refused."""
    kinds = {getattr(term, "consumes", "edges") for term, _ in terms}
    if kinds == {"clean-leaves"}:
        return True
    if "clean-leaves" in kinds:
        names = ", ".join(f"{t.name} ({getattr(t, 'consumes', 'edges')})" for t, _ in terms)
        raise UserError(f"recipe losses mix edge terms and clean-leaf terms ({names}); a recipe trains either on "
                        "the tree's edges (clipped-surrogate, layertuning-sft, kl) or on its clean leaves (nft, awm, "
                        "velocity-kl), not both")
    return False


def behaviour_policy(terms: Sequence[tuple[LossTerm, float]], params: Sequence[torch.nn.Parameter]) -> OldPolicy | None:
    """The run's old policy over ``params`` (None when no term of the recipe uses one): created on the
    first call and kept on the first term that uses it, so the trainer and every update share it."""
    return _old_policy(terms, params)


@contextlib.contextmanager
def sampling_weights(old: OldPolicy | None) -> Iterator[bool]:
    """Inside the block the parameters hold the weights the forest is sampled with: the old policy's
    when it has ``samples`` set, else the live ones (nothing changes). Yields whether they were swapped."""
    if old is None or not old.samples:
        yield False
        return
    with old.swapped_in():
        yield True


def old_policy_tensors(old: OldPolicy | None, fsdp: Any = None) -> dict[str, Tensor]:
    """Checkpoint tensors of the old policy (``old.*``; empty without one), gathered into full tensors
    under FSDP (``fsdp``: a :class:`treesdk.training.parallel.fsdp.FullyShardedTraining`; every rank calls this)."""
    if old is None:
        return {}
    tensors = old.state_dict()
    return fsdp.full_tensors(tensors) if fsdp is not None else tensors


def restore_old_policy(old: OldPolicy | None, tensors: Mapping[str, Tensor], fsdp: Any = None) -> None:
    """Load :func:`old_policy_tensors` of a checkpoint into ``old`` (cut into this rank's shards under
    FSDP); a checkpoint without them restarts the old policy from the loaded weights."""
    if old is None:
        return
    old.load_state_dict(fsdp.shard_like(tensors, old.state_dict()) if fsdp is not None else tensors)


def _old_policy(terms: Sequence[tuple[LossTerm, float]], params: Sequence[torch.nn.Parameter]) -> OldPolicy | None:
    wanting = [t for t, _ in terms if getattr(t, "needs_old_velocity", False)]
    if not wanting:
        return None
    schedules = {t.old_schedule for t in wanting if getattr(t, "old_schedule", None) is not None}
    if len(schedules) > 1:
        raise UserError(f"loss terms disagree on the old policy's decay schedule: {sorted(map(str, schedules))}; "
                        "give every term that uses the old policy the same old_flat / old_uprate / old_uphold")
    holder = wanting[0]
    old = getattr(holder, "_old_policy", None)
    if old is None or [p.data_ptr() for p in old.params] != [p.data_ptr() for p in params]:
        samples = any(getattr(t, "samples_with_old", False) for t in wanting)
        old = OldPolicy(params, next(iter(schedules)) if schedules else OldPolicySchedule(), samples)
        holder._old_policy = old  # type: ignore[attr-defined]
    return old


#: salts that keep the generators of the three kinds of training draw apart
_SIGMA_SALT, _SHARED_SIGMA_SALT, _NOISE_SALT = 0x516A, 0x5A4E, 0x401E


def _generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded by :func:`~treesdk.training.loop.batches.derived_seed` of ``entropy``."""
    return torch.Generator().manual_seed(derived_seed(*entropy))


def _leaf_noise(x0: Tensor, leaves: Sequence[tuple[int, int]] | None, part: slice, pass_index: int, slot: int) -> Tensor:
    """float32 CPU noise like ``x0`` (the rows ``part`` of the minibatch): one generator per leaf and
    training slot when the leaves' seeds are known, else torch's global generator."""
    if leaves is None:
        return torch.randn(x0.shape, dtype=torch.float32)
    return torch.stack([torch.randn(x0.shape[1:], dtype=torch.float32,
                                    generator=_generator(*leaves[i], pass_index, slot, _NOISE_SALT))
                        for i in range(part.start, part.stop)])


def leaf_entropy(leaf_prompt: Tensor, seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Per leaf ``(seeds[p], j)``: its tree's seed and its position among the leaves of prompt ``p``."""
    seen: dict[int, int] = {}
    out = []
    for p in leaf_prompt.tolist():
        j = seen.get(p, 0)
        seen[p] = j + 1
        out.append((int(seeds[p]), j))
    return out


def _slot_sigmas(terms: Sequence[tuple[LossTerm, float]], grid: Tensor, n_leaves: int,
                 leaves: Sequence[tuple[int, int]] | None = None, shared: torch.Generator | None = None,
                 pass_index: int = 0) -> Tensor:
    """``[n_slots, n_leaves]`` training sigmas from the first term that declares a sampler; per-leaf
    draws from ``leaves``' generators and shared ones from ``shared`` when given."""
    for term, _ in terms:
        kind = getattr(term, "sigmas", None)
        if kind == "grid-permutation":
            if leaves is None:
                return grid_permutation_sigmas(grid, n_leaves, term.fraction)
            return torch.cat([grid_permutation_sigmas(grid, 1, term.fraction, _generator(*leaf, pass_index, _SIGMA_SALT))
                              for leaf in leaves], dim=1)
        if kind == "stratified":
            return stratified_grid_sigmas(grid, n_leaves, term.count, term.fraction, shared)
    raise UserError("no loss term of the recipe says at which noise levels to train the clean leaves; "
                    "add an nft or awm term (velocity-kl alone has no sigma sampler)")


def forward_update(
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
    stats: UpdateStats | None = None,
    seeds: Sequence[int] | None = None,
) -> UpdateStats:
    """``passes * minibatches`` optimiser steps on the clean leaves of ``forest`` (module docstring);
    ``seeds``: the trees' seeds, one per prompt of the forest, from which every training draw comes."""
    stats = stats or UpdateStats()
    need_old = any(getattr(t, "needs_old_velocity", False) for t, _ in terms)
    need_ref = any(getattr(t, "needs_reference", False) for t, _ in terms)
    old = _old_policy(terms, params)
    x0_all = forest.leaves.detach().float()
    leaf_prompt = forest.leaf_prompt.to(x0_all.device)
    adv_all = targets.leaf_advantages.detach().float().to(x0_all.device)
    groups = minibatch_prompts(forest.num_prompts, minibatches)
    if seeds is not None and len(seeds) != forest.num_prompts:
        raise ValueError(f"{len(seeds)} seeds for a forest of {forest.num_prompts} prompts")
    entropy = leaf_entropy(leaf_prompt.cpu(), seeds) if seeds is not None else None
    totals: dict[str, float] = {}
    weight_sum, n_old, n_ref = 0.0, 0, 0
    model.train_mode(True)
    try:
        for pass_index in range(passes):
            for group in groups:
                optimizer.zero_grad(set_to_none=True)
                rows = torch.isin(leaf_prompt.cpu(), group).nonzero().flatten().to(x0_all.device)
                leaves = [entropy[i] for i in rows.tolist()] if entropy is not None else None
                shared = (_generator(*(int(seeds[p]) for p in group.tolist()), pass_index, _SHARED_SIGMA_SALT)
                          if seeds is not None else None)
                sigmas = _slot_sigmas(terms, forest.sigmas.cpu(), len(rows), leaves, shared, pass_index).to(x0_all.device)  # [n, R]
                for slot in range(sigmas.shape[0]):
                    for part in iter_chunks(len(rows), chunk):
                        index = rows[part]
                        scale = len(index) / len(rows) / sigmas.shape[0]
                        x0 = x0_all[index]
                        noise = _leaf_noise(x0, leaves, part, pass_index, slot).to(x0.device)
                        loss, metrics, counts = _chunk_loss(model, forest, x0, noise, leaf_prompt[index],
                                                            adv_all[index], sigmas[slot, part], terms, old, need_old, need_ref)
                        stats.nfe_training += len(index)
                        n_old += counts[0]
                        n_ref += counts[1]
                        if not torch.isfinite(loss):
                            raise NonFiniteLossError(f"loss is {float(loss)} at training slot {slot}; metrics {metrics}; "
                                                     "no optimiser step was taken")
                        (loss * scale).backward()
                        weight_sum += scale
                        for key, value in metrics.items():
                            totals[key] = totals.get(key, 0.0) + value * scale
                optimizer_step(params, optimizer, stats, grad_clip, reduce_gradients)
    finally:
        model.train_mode(False)
        optimizer.zero_grad(set_to_none=True)
    stats.nfe_reference += n_old + n_ref
    stats.metrics = {key: value / weight_sum for key, value in totals.items()} if weight_sum else {}
    stats.metrics.update({"nfe_old": float(n_old), "nfe_ref": float(n_ref)})
    if old is not None:
        old.steps += stats.optimizer_steps
        stats.metrics["old_decay"] = old.advance(old.steps)
    return stats


def _chunk_loss(model, forest, x0, noise, prompt, adv, sigma, terms, old, need_old, need_ref):  # noqa: ANN001, ANN202
    cond = select_cond(forest.cond, prompt)
    s = sigma.view(-1, *([1] * (x0.ndim - 1)))
    xt = (1.0 - s) * x0 + s * noise
    v_old = v_ref = None
    n_old = n_ref = 0
    if need_old:
        assert old is not None
        with torch.no_grad(), old.swapped_in():
            v_old = model.velocity(xt, sigma, cond).float()
        n_old = len(x0)
    if need_ref:
        with torch.no_grad(), model.reference():
            v_ref = model.velocity(xt, sigma, cond).float()
        n_ref = len(x0)
    v_theta = model.velocity(xt, sigma, cond).float()
    batch = CleanBatch(x0=x0, noise=noise, xt=xt, sigma=sigma, cond=cond, advantages=adv, v_theta=v_theta,
                       v_old=v_old, v_ref=v_ref)
    total = v_theta.new_zeros(())
    metrics: dict[str, float] = {}
    for term, weight in terms:
        value, term_metrics = term(batch)
        total = total + weight * value
        metrics[f"loss_{term.name}"] = float(value.detach())
        metrics.update(term_metrics)
    return total, metrics, (n_old, n_ref)
