"""The trainer's one door to other processes: a :class:`Collective`.

A single process uses the default :class:`Collective`, whose calls are identities. Several processes
(``torchrun``) use :class:`treesdk.training.parallel.distributed.DistributedContext`, the same interface over
``torch.distributed``. A user who runs treesdk under another launcher implements these calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class Collective:
    """Communication between the ranks of one training job (single process: nothing to do).

    Attributes:
        rank, world_size: this process's rank and the number of ranks; rank ``r`` owns the batch
            slots ``r, r + world_size, ...``.
        fsdp: a :class:`treesdk.training.parallel.fsdp.FullyShardedTraining` when the trainable modules are
            sharded (full fine-tunes that do not fit one device), else None.
    """

    rank: int = 0
    world_size: int = 1
    fsdp: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder (metrics, checkpoints, export)."""
        return self.rank == 0

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Average ``p.grad`` of ``params`` over ranks, in place (after backward, before clipping)."""

    def reduce_metrics(self, row: dict[str, float]) -> dict[str, float]:
        """One iteration's numeric metrics combined over ranks (counts summed, means averaged)."""
        return dict(row)

    def gather_leaf_values(self, values: torch.Tensor, leaves_per_prompt: int) -> torch.Tensor:
        """Every rank's per-leaf ``values`` (``[P_rank * L]``, its slots' prompts in order) as one
        ``[B * L]`` tensor in batch-slot order, on ``values``' device (batch-wide statistics)."""
        return values

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one (every rank stops after the same iteration)."""
        return bool(flag)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (rank 0 alone reads a checkpoint on resume)."""
        return obj
