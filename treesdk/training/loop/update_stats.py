"""What one optimiser pass over an iteration's samples did (shared by the edge and clean-leaf updates)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UpdateStats:
    """What one call to :func:`treesdk.training.loop.update.policy_update` did."""

    nfe_training: int = 0
    nfe_reference: int = 0
    optimizer_steps: int = 0
    grad_norm: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
