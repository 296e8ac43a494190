"""What a run leaves behind (:class:`Run`) and the stop request around the training loop (metrics
files and loggers: :mod:`treesdk.training.run_folder.loggers`)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
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


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the iteration, checkpoints and returns."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:  # second signal: give up at once (after a checkpoint being written)
            if self._deferring:
                self._pending = True
                return
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    _deferring = False
    _pending = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A second signal inside the block (a checkpoint being written) stops the run only when
        the block is done, so the checkpoint of the finished iteration is never cut short."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
