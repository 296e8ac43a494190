"""The stop request around the training loop: SIGINT/SIGTERM set a flag the loop reads at the end of
an iteration, so the finished iteration is checkpointed before the run returns."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


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
