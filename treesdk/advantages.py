"""Advantage estimators: leaf rewards of a :class:`~treesdk.interfaces.Forest` -> per-edge targets.

Leaf advantages are group-normalised per prompt, ``A = (r - mean_prompt) / (std + eps)`` (or by the
std over the whole batch with ``global_std``); ``std`` is the population std (Flow-GRPO, eps 1e-4)
or the unbiased one (DanceGRPO, eps 1e-8). With several rewards each is normalised on its own and
the weighted sum is taken (as both TreeGRPO and Dynamic-TreeRPO do). Edges then receive:

* ``group``: the mean advantage of the leaves below the edge (a trajectory's own advantage when
  nothing branches, as GRPO/MixGRPO);
* ``tree-backup`` (TreeGRPO): leaf edges get their leaf's advantage; an internal edge gets
  ``sum_c softmax(logp_c / temperature) * A_c`` over its child edges, ``logp`` the stored
  behaviour log-probs of those children (``backup="softmax"``), or their plain mean
  (``backup="mean"``);
* ``depthwise`` (BranchGRPO): the backup above, then at every depth the values of the prompt's
  nodes are re-standardised, ``(value - mean_depth) / (unbiased std_depth + 1e-8)`` (0 where the
  std is below 1e-6), so every layer's advantages have unit scale.

"The whole batch" under ``global_std`` is every rank's leaves in a multi-process run (Flow-GRPO
gathers all processes' rewards before normalising): the trainer runs the estimator inside
:func:`whole_batch`, and :func:`batch_values` returns the gathered values in batch-slot order, so two
ranks normalise exactly as one process with the whole batch does.

Under ``path`` attribution (Dynamic-TreeRPO eq. 9) every edge carries the advantages of *all*
leaves below it, one loss term per root-to-leaf path.

Each estimator is one class: a recipe part (:class:`~treesdk.part.RuntimePart`, its fields validated
once by pydantic) and the callable the trainer runs.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from .interfaces import AdvantageEstimator, EdgeAdvantages, Forest
from .part import RuntimePart

_STD = Field("population", description="population std (Flow-GRPO) or unbiased std (DanceGRPO, BranchGRPO)")


#: per-leaf values ``[P * L]`` of this process -> the whole batch's (every rank's, in batch-slot
#: order), given ``L``; set by :func:`whole_batch` while the trainer runs an estimator
_WHOLE_BATCH: ContextVar[Callable[[Tensor, int], Tensor] | None] = ContextVar("treesdk_whole_batch", default=None)


@contextlib.contextmanager
def whole_batch(gather: Callable[[Tensor, int], Tensor] | None) -> Iterator[None]:
    """Within the block, :func:`batch_values` (and so ``global_std``) uses ``gather(values,
    leaves_per_prompt)`` to see every rank's leaves; ``None``: this process holds the whole batch."""
    token = _WHOLE_BATCH.set(gather)
    try:
        yield
    finally:
        _WHOLE_BATCH.reset(token)


def batch_values(values: Tensor, leaves_per_prompt: int) -> Tensor:
    """``values`` of the whole batch: gathered over ranks inside :func:`whole_batch`, else as given."""
    gather = _WHOLE_BATCH.get()
    return values if gather is None else gather(values, leaves_per_prompt)


def normalised_leaf_advantages(
    rewards: Tensor, leaves_per_prompt: int, *, global_std: bool = False, eps: float = 1e-4, unbiased: bool = False
) -> Tensor:
    """``[P * L]`` rewards -> ``(r - mean_prompt) / (std + eps)``; std per prompt or over the whole
    batch (:func:`batch_values`: every rank's leaves in a multi-process run).

    The std is the population std (``unbiased=False``, Flow-GRPO's per-prompt stat tracker) or the
    unbiased one (``unbiased=True``, DanceGRPO's ``tensor.std()``).
    """
    groups = rewards.float().view(-1, leaves_per_prompt)
    mean = groups.mean(dim=1, keepdim=True)
    batch = batch_values(rewards.float(), leaves_per_prompt) if global_std else None
    n = batch.numel() if batch is not None else groups.shape[1]
    unbiased = unbiased and n > 1  # one leaf: no spread (the unbiased std would be NaN), advantage 0
    std = batch.std(unbiased=unbiased) if batch is not None else groups.std(dim=1, unbiased=unbiased, keepdim=True)
    return ((groups - mean) / (std + eps)).reshape(-1)


def weighted_leaf_advantages(
    rewards: Mapping[str, Tensor], weights: Mapping[str, float], leaves_per_prompt: int, *, global_std: bool, eps: float,
    unbiased: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-reward normalisation then weighted sum. Returns ``(advantages, weighted raw rewards)``."""
    if not rewards:
        raise ValueError("no rewards given")
    adv = None
    raw = None
    for name, values in rewards.items():
        w = float(weights.get(name, 1.0))
        a = normalised_leaf_advantages(values, leaves_per_prompt, global_std=global_std, eps=eps, unbiased=unbiased) * w
        r = values.float() * w
        adv = a if adv is None else adv + a
        raw = r if raw is None else raw + r
    assert adv is not None and raw is not None
    return adv, raw


class _LeafNormalising(AdvantageEstimator):
    """What every estimator here shares. It declares no field (a pydantic model would put a base's
    fields first): each estimator declares its own, ``attribution`` (``edge``/``path``),
    ``global_std``, ``clip`` (None or > 0), ``eps`` and ``std`` (``population``/``unbiased``) among them."""

    @property
    def unbiased(self) -> bool:
        """Whether leaves are normalised by the unbiased std (``std="unbiased"``)."""
        return self.std == "unbiased"

    def _leaves(self, forest: Forest, rewards: Mapping[str, Tensor], weights: Mapping[str, float]) -> tuple[Tensor, Tensor]:
        n_leaves = forest.leaves.shape[0]
        for name, values in rewards.items():
            if values.shape != (n_leaves,):
                raise ValueError(f"reward {name!r} has shape {tuple(values.shape)}, expected [{n_leaves}] (one per leaf)")
        adv, raw = weighted_leaf_advantages(
            rewards, weights, forest.leaves_per_prompt, global_std=self.global_std, eps=self.eps, unbiased=self.unbiased
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


class GroupAdvantage(RuntimePart, _LeafNormalising):
    """Group-normalised leaf advantage ``(r - mean_prompt) / (std + eps)``; every edge gets the mean
    advantage of the leaves below it (for non-branching trajectories: the trajectory's advantage).
    Flow-GRPO: population std, eps 1e-4; DanceGRPO/MixGRPO: unbiased std, eps 1e-8."""

    label: ClassVar[str] = "group advantage"

    kind: Literal["group"] = "group"
    attribution: Literal["edge", "path"] = Field("edge", description="edge: one value per edge; path: one per root-to-leaf path")
    global_std: bool = Field(False, description="normalise by the std over all leaves of the batch, not per prompt")
    clip: float | None = Field(None, gt=0, description="clip advantages to [-clip, clip]")
    eps: float = Field(1e-4, gt=0, description="added to the std")
    std: Literal["population", "unbiased"] = _STD

    def _edge_values(self, forest: Forest, leaf_adv: Tensor) -> list[Tensor]:
        return [
            leaf_adv.view(layer.num_parents, layer.k, layer.leaves_below).mean(dim=2, keepdim=True)
            for layer in forest.layers
        ]


class _BackingUp(_LeafNormalising):
    """The TreeGRPO backup shared by :class:`TreeBackupAdvantage` and :class:`DepthwiseAdvantage`
    (their fields add ``temperature`` and ``backup``: ``softmax``/``mean``)."""

    def _weights(self, layer) -> Tensor:  # noqa: ANN001 - a TreeLayer
        if self.backup == "mean":
            return torch.full((layer.num_parents, layer.k), 1.0 / layer.k)
        return torch.softmax(layer.log_probs.float().cpu() / self.temperature, dim=1)

    def _edge_values(self, forest: Forest, leaf_adv: Tensor) -> list[Tensor]:
        node_adv = leaf_adv  # advantage of the nodes below the current layer, in node order
        out: list[Tensor] = []
        for layer in reversed(forest.layers):
            child_adv = self._child_values(node_adv.view(layer.num_parents, layer.k), forest.num_prompts)
            out.append(child_adv.unsqueeze(-1))
            node_adv = (self._weights(layer).to(child_adv.device) * node_adv.view(layer.num_parents, layer.k)).sum(dim=1)
        out.reverse()
        return out

    def _child_values(self, child_adv: Tensor, num_prompts: int) -> Tensor:  # noqa: ARG002
        return child_adv


class TreeBackupAdvantage(RuntimePart, _BackingUp):
    """TreeGRPO backup: leaf advantages as :class:`GroupAdvantage`, then each internal edge gets
    ``sum_c w_c * A_c`` over its child edges: ``w = softmax(logp_c / temperature)`` of the stored
    behaviour log-probs (``backup=softmax``, the paper) or ``1/k`` (``backup=mean``).

    Log-probs are averaged over latent elements, so they differ little between siblings and the
    softmax is near-uniform at temperature 1 (close to the plain mean). A smaller temperature
    sharpens it toward the most likely child; a larger one makes it exactly uniform.
    """

    label: ClassVar[str] = "tree backup"

    kind: Literal["tree-backup"] = "tree-backup"
    attribution: Literal["edge", "path"] = Field("edge", description="edge (TreeGRPO) or path (Dynamic-TreeRPO eq. 9)")
    backup: Literal["softmax", "mean"] = Field("softmax", description="softmax over sibling log-probs, or the plain mean")
    temperature: float = Field(1.0, gt=0, description="softmax temperature over sibling log-probs")
    global_std: bool = Field(False, description="normalise by the std over all leaves of the batch")
    clip: float | None = Field(None, gt=0, description="clip advantages to [-clip, clip]")
    eps: float = Field(1e-4, gt=0, description="added to the std")
    std: Literal["population", "unbiased"] = _STD


class DepthwiseAdvantage(RuntimePart, _BackingUp):
    """BranchGRPO: the tree backup (``mean`` or ``softmax``), then at every depth the values of each
    prompt's nodes are re-standardised, ``(x - mean) / (unbiased std + depth_eps)`` (0 where the std
    is below 1e-6); one advantage per edge. ``clip`` applies to leaves and to the re-standardised
    values."""

    label: ClassVar[str] = "depthwise"

    kind: Literal["depthwise"] = "depthwise"
    attribution: Literal["edge"] = Field("edge", description="one advantage per edge")
    backup: Literal["softmax", "mean"] = Field("mean", description="how leaf values are backed up before re-standardising")
    temperature: float = Field(1.0, gt=0, description="softmax temperature (backup=softmax)")
    depth_eps: float = Field(1e-8, gt=0, description="added to each depth's std")
    global_std: bool = Field(False, description="normalise leaves by the std over the batch")
    clip: float | None = Field(None, gt=0, description="clip advantages to [-clip, clip]")
    eps: float = Field(1e-8, gt=0, description="added to the leaves' std")
    std: Literal["population", "unbiased"] = Field("unbiased", description="std of the leaf normalisation")

    def _child_values(self, child_adv: Tensor, num_prompts: int) -> Tensor:
        per_prompt = child_adv.reshape(num_prompts, -1)
        mean = per_prompt.mean(dim=1, keepdim=True)
        std = per_prompt.std(dim=1, unbiased=True, keepdim=True) if per_prompt.shape[1] > 1 else torch.zeros_like(mean)
        values = torch.where(std < 1e-6, torch.zeros_like(per_prompt), (per_prompt - mean) / (std + self.depth_eps))
        if self.clip is not None:
            values = values.clamp(-self.clip, self.clip)
        return values.view_as(child_adv)
