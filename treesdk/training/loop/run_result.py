"""What a training run leaves behind: :class:`Run` (its folder, history, evaluations, exports and
exit code)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """What a finished (or stopped) training run leaves behind."""

    out_dir: Path | None
    iterations: int
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    #: every evaluation this process ran, in order: ``{"iteration", "tag", **means}`` with tag ``start``,
    #: ``iter_<n>`` (``eval_every``) or ``end``; the means as in :attr:`eval_before` (reward means,
    #: ``diversity``, ``diversity_pixels``, ``precision``, ``recall``). A resumed run lists only the
    #: evaluations since it resumed (``metrics.jsonl`` keeps them all).
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    exported: list[str] = field(default_factory=list)
    interrupted: bool = False
    #: the signal that stopped the run early (SIGINT/SIGTERM; None: a callback, or another rank's signal)
    stop_signal: int | None = None

    @property
    def exit_code(self) -> int:
        """0 when finished; stopped early: ``128 + signal`` (130 SIGINT, else 143 as for SIGTERM)."""
        return 128 + int(self.stop_signal or signal.SIGTERM) if self.interrupted else 0
