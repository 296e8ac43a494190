"""Advantage estimators: leaf rewards of a :class:`~treesdk.interfaces.Forest` -> per-edge targets.

Leaf advantages are group-normalised per prompt, ``A = (r - mean_prompt) / (std + eps)`` (or by the
std over the whole batch with ``global_std``); with several rewards each is normalised on its own
and the weighted sum is taken (as both TreeGRPO and Dynamic-TreeRPO do). Edges then receive:

* ``group``: the mean advantage of the leaves below the edge (a trajectory's own advantage when
  nothing branches, as GRPO/MixGRPO);
* ``tree-backup`` (TreeGRPO): leaf edges get their leaf's advantage; an internal edge gets
  ``sum_c softmax(logp_c / temperature) * A_c`` over its child edges, ``logp`` the stored
  behaviour log-probs of those children.

Under ``path`` attribution (Dynamic-TreeRPO eq. 9) every edge carries the advantages of *all*
leaves below it, one loss term per root-to-leaf path.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor

from .interfaces import AdvantageEstimator, EdgeAdvantages, Forest


def normalised_leaf_advantages(
    rewards: Tensor, leaves_per_prompt: int, *, global_std: bool = False, eps: float = 1e-4
) -> Tensor:
    """``[P * L]`` rewards -> ``(r - mean_prompt) / (std + eps)``; std per prompt or over the batch.

    The std is the population std (``unbiased=False``), as Flow-GRPO's per-prompt stat tracker.
    """
    groups = rewards.float().view(-1, leaves_per_prompt)
    mean = groups.mean(dim=1, keepdim=True)
    std = rewards.float().std(unbiased=False) if global_std else groups.std(dim=1, unbiased=False, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def weighted_leaf_advantages(
    rewards: Mapping[str, Tensor], weights: Mapping[str, float], leaves_per_prompt: int, *, global_std: bool, eps: float
) -> tuple[Tensor, Tensor]:
    """Per-reward normalisation then weighted sum. Returns ``(advantages, weighted raw rewards)``."""
    if not rewards:
        raise ValueError("no rewards given")
    adv = None
    raw = None
    for name, values in rewards.items():
        w = float(weights.get(name, 1.0))
        a = normalised_leaf_advantages(values, leaves_per_prompt, global_std=global_std, eps=eps) * w
        r = values.float() * w
        adv = a if adv is None else adv + a
        raw = r if raw is None else raw + r
    assert adv is not None and raw is not None
    return adv, raw


class _LeafNormalising(AdvantageEstimator):
    def __init__(
        self, attribution: str = "edge", global_std: bool = False, clip: float | None = None, eps: float = 1e-4
    ) -> None:
        if attribution not in ("edge", "path"):
            raise ValueError(f"attribution must be 'edge' or 'path', got {attribution!r}")
        self.attribution = attribution
        self.global_std = global_std
        self.clip = clip
        self.eps = eps

    def _leaves(self, forest: Forest, rewards: Mapping[str, Tensor], weights: Mapping[str, float]) -> tuple[Tensor, Tensor]:
        n_leaves = forest.leaves.shape[0]
        for name, values in rewards.items():
            if values.shape != (n_leaves,):
                raise ValueError(f"reward {name!r} has shape {tuple(values.shape)}, expected [{n_leaves}] (one per leaf)")
        adv, raw = weighted_leaf_advantages(
            rewards, weights, forest.leaves_per_prompt, global_std=self.global_std, eps=self.eps
        )
        if self.clip is not None:
            adv = adv.clamp(-self.clip, self.clip)
        return adv, raw

    @abstractmethod
    def _edge_values(self, forest: Forest, leaf_adv: Tensor) -> list[Tensor]:
        """Per layer ``[N, k, 1]`` advantages under edge attribution."""

    def __call__(self, forest: Forest, rewards: Mapping[str, Tensor], weights: Mapping[str, float]) -> EdgeAdvantages:
        leaf_adv, leaf_raw = self._leaves(forest, rewards, weights)
        advantages, clip_rewards = [], []
        if self.attribution == "path":
            for layer in forest.layers:
                advantages.append(leaf_adv.view(layer.num_parents, layer.k, layer.leaves_below))
                clip_rewards.append(leaf_raw.view(layer.num_parents, layer.k, layer.leaves_below))
        else:
            advantages = self._edge_values(forest, leaf_adv)
            for layer in forest.layers:
                below = leaf_raw.view(layer.num_parents, layer.k, layer.leaves_below)
                clip_rewards.append(below.max(dim=2, keepdim=True).values)
        return EdgeAdvantages(advantages, clip_rewards, leaf_adv, leaf_raw)


class GroupAdvantage(_LeafNormalising):
    """Group-normalised advantages; an edge gets the mean of the leaves below it (edge attribution)."""

    def _edge_values(self, forest: Forest, leaf_adv: Tensor) -> list[Tensor]:
        return [
            leaf_adv.view(layer.num_parents, layer.k, layer.leaves_below).mean(dim=2, keepdim=True)
            for layer in forest.layers
        ]


class TreeBackupAdvantage(_LeafNormalising):
    """TreeGRPO reward backup with a softmax over sibling log-probs at ``temperature``.

    Log-probs are averaged over latent elements, so siblings' values are close and the softmax is
    near-uniform at temperature 1; lower temperatures weight the more likely child more.
    """

    def __init__(self, temperature: float = 1.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def _edge_values(self, forest: Forest, leaf_adv: Tensor) -> list[Tensor]:
        node_adv = leaf_adv  # advantage of the nodes below the current layer, in node order
        out: list[Tensor] = []
        for layer in reversed(forest.layers):
            child_adv = node_adv.view(layer.num_parents, layer.k)
            out.append(child_adv.unsqueeze(-1))
            weights = torch.softmax(layer.log_probs.float() / self.temperature, dim=1)
            node_adv = (weights * child_adv).sum(dim=1)
        out.reverse()
        return out
