"""Learning-rate schedules as ``torch.optim.lr_scheduler.LambdaLR`` multipliers of the recipe's lr.

The trainer steps the scheduler once per **iteration** (not per optimiser step), so
``warmup`` and ``total`` are counted in iterations, and the lr used during iteration ``i``
(0-based: the ``i``-th iteration of the run) is ``lr * factor(i)``:

* ``constant``: ``1`` (after the warm-up).
* ``linear``: from ``1`` at the end of the warm-up down to ``min_factor`` at iteration ``total``.
* ``cosine``: half a cosine from ``1`` to ``min_factor`` over the same span.

Warm-up (any kind): ``factor(i) = (i + 1) / (warmup + 1)`` for ``i < warmup``, a linear ramp that
never uses a zero lr (the first iteration already learns). These are the shapes of
``diffusers.optimization.get_scheduler`` / ``transformers.get_*_schedule_with_warmup``, with the
warm-up shifted by one so that iteration 0 is not wasted.

A resumed run rebuilds the scheduler with ``last_iteration`` (the checkpoint's iteration), so the
factor is a pure function of the iteration, like everything else the trainer samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: schedule kinds understood by :func:`lr_factor`
KINDS = ("constant", "linear", "cosine")


def lr_factor(kind: str, iteration: int, total: int, warmup: int = 0, min_factor: float = 0.0) -> float:
    """Multiplier of the base lr during 0-based ``iteration`` of a ``total``-iteration run."""
    if kind not in KINDS:
        raise ValueError(f"lr schedule {kind!r} is unknown; expected one of {', '.join(KINDS)}")
    if warmup < 0 or total < 1:
        raise ValueError(f"lr schedule needs warmup >= 0 and total >= 1 iterations (got warmup={warmup}, total={total})")
    if not 0.0 <= min_factor <= 1.0:
        raise ValueError(f"lr schedule min_factor {min_factor} must be in [0, 1]")
    if iteration < warmup:
        return (iteration + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(iteration - warmup, 0) / span, 1.0)
    if kind == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_factor + (1.0 - min_factor) * shape


def lr_lambda(kind: str, total: int, warmup: int = 0, min_factor: float = 0.0) -> Callable[[int], float]:
    """``factor(iteration)`` for ``LambdaLR`` (arguments checked now, not at the first step)."""
    lr_factor(kind, 0, total, warmup, min_factor)
    return lambda iteration: lr_factor(kind, iteration, total, warmup, min_factor)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, kind: str = "constant", total: int = 1, warmup: int = 0,
                       min_factor: float = 0.0, last_iteration: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over ``optimizer`` positioned at ``last_iteration`` (0 for a new run; a
    resumed run passes the iterations already done): the optimiser's lr is then that of iteration
    ``last_iteration``. Call ``scheduler.step()`` after every iteration."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(kind, total, warmup, min_factor))
    if last_iteration:
        for group in optimizer.param_groups:  # LambdaLR multiplies initial_lr, set at construction
            group["lr"] = group["initial_lr"] * lr_factor(kind, last_iteration, total, warmup, min_factor)
        scheduler.last_epoch = last_iteration
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # noqa: SLF001 - get_last_lr()
    return scheduler
