"""The pieces both policy updates (edges: :mod:`~treesdk.training.loop.update`, clean leaves:
:mod:`~treesdk.training.loop.forward_update`) share: splitting an iteration's prompts into
minibatches, and ending a minibatch with one optimiser step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from treesdk.training.loop.update_stats import UpdateStats

__all__ = ["minibatch_prompts", "optimizer_step"]


def minibatch_prompts(num_prompts: int, minibatches: int) -> list[Tensor]:
    """Prompt indices ``0..num_prompts-1`` in at most ``minibatches`` contiguous, non-empty groups."""
    return [g for g in torch.arange(num_prompts).tensor_split(min(minibatches, num_prompts)) if len(g)]


def optimizer_step(
    params: Sequence[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    stats: UpdateStats,
    grad_clip: float | None,
    reduce_gradients: Callable[[Sequence[torch.nn.Parameter]], None] | None,
) -> None:
    """End a minibatch whose gradients are accumulated: average them over ranks
    (``reduce_gradients``), clip their global norm to ``grad_clip`` (None: no clip, the norm is still
    recorded in ``stats.grad_norm``), take the optimiser step and count it."""
    if reduce_gradients is not None:
        reduce_gradients(params)
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    stats.grad_norm = float(norm)
    optimizer.step()
    stats.optimizer_steps += 1
