"""Two third-party recipe parts, each one class (its pydantic fields are the recipe spec, its
``__call__`` what the trainer runs: a ``RuntimePart``) declared once as a ``PartDecl``:

* loss term ``logratio-penalty``: ``0.5 * mean((logp_new - logp_old)^2)`` over the chunk's edges, a
  quadratic estimate of the KL from the behaviour policy (log-probs are treesdk's: Gaussian
  transition log densities averaged over latent elements);
* advantage estimator ``rank``: per prompt, each leaf's reward rank centred and scaled to
  ``[-1, 1]`` (robust to reward scale and outliers; several rewards: the weighted sum of their
  ranks); an edge gets the mean advantage of the leaves below it.

A recipe uses them by kind, like the built-ins (``advantage: {kind: rank}``,
``losses: [{kind: logratio-penalty, weight: 0.1}]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from treesdk.interfaces import AdvantageEstimator, EdgeAdvantages, EdgeBatch, Forest, LossTerm
from treesdk.recipes.parts import PartDecl, RuntimePart

__all__ = ["LOGRATIO_PENALTY", "RANK_ADVANTAGE", "LogRatioPenalty", "RankAdvantage"]


class LogRatioPenalty(RuntimePart, LossTerm):
    """Quadratic penalty ``0.5 * mean((logp_new - logp_old)^2)`` keeping the policy near the behaviour policy."""

    name: ClassVar[str] = "logratio_penalty"

    kind: Literal["logratio-penalty"] = "logratio-penalty"
    weight: float = Field(0.1, ge=0, description="weight of this term")

    def __call__(self, batch: EdgeBatch) -> tuple[Tensor, dict[str, float]]:
        log_ratio = (batch.new_log_probs - batch.old_log_probs).float()
        loss = 0.5 * (log_ratio**2).mean()
        return loss, {"logratio_penalty": float(loss.detach())}


class RankAdvantage(RuntimePart, AdvantageEstimator):
    """Centred reward ranks per prompt, scaled to [-1, 1]; an edge gets the mean of the leaves below it."""

    kind: Literal["rank"] = "rank"

    def __call__(self, forest: Forest, rewards: Mapping[str, Tensor], weights: Mapping[str, float]) -> EdgeAdvantages:
        leaves = forest.leaves_per_prompt
        half = max((leaves - 1) / 2.0, 1.0)
        adv = torch.zeros(forest.leaves.shape[0])
        raw = torch.zeros(forest.leaves.shape[0])
        for name, values in rewards.items():
            w = float(weights.get(name, 1.0))
            groups = values.float().cpu().view(-1, leaves)
            ranks = groups.argsort(dim=1).argsort(dim=1).float()  # 0 = worst leaf of its prompt
            adv += w * ((ranks - (leaves - 1) / 2.0) / half).reshape(-1)
            raw += w * values.float().cpu()
        advantages, clip_rewards = [], []
        for layer in forest.layers:
            advantages.append(adv.view(layer.num_parents, layer.k, layer.leaves_below).mean(dim=2, keepdim=True))
            clip_rewards.append(raw.view(layer.num_parents, layer.k, layer.leaves_below).max(dim=2, keepdim=True).values)
        return EdgeAdvantages(advantages, clip_rewards, adv, raw)


#: no builder: each part is its own runtime object
LOGRATIO_PENALTY = PartDecl("loss", LogRatioPenalty)
RANK_ADVANTAGE = PartDecl("advantage", RankAdvantage)
