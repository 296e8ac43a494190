"""A run's metrics file and the stop request: the bookkeeping around the training loop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from treesdk.io import strict_json_line, truncate_jsonl


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard events of a run folder, written by rank 0 only.

    On resume, lines past the checkpoint's iteration are dropped first (they belong to iterations
    that will be run again): the file is rewritten atomically, so a failure there leaves it whole.
    Lines are strict JSON (NaN/inf values are written as ``null``).
    """

    def __init__(self, out_dir: Path | None, resume_from: int | None, tensorboard: bool = True) -> None:
        self.path = out_dir / "metrics.jsonl" if out_dir else None
        self.writer = None
        if out_dir is None:
            return
        if resume_from is not None and self.path.is_file():  # drop lines past the checkpoint
            truncate_jsonl(self.path, lambda row: row.get("iteration", 0) <= resume_from)
        if tensorboard:
            # imported here: tensorboard takes seconds to import and only a run with a folder needs it
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"))

    def log(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as handle:
            handle.write(strict_json_line(row) + "\n")
        if self.writer is not None:
            prefix = "eval/" if row.get("eval") else "train/"
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iteration":
                    self.writer.add_scalar(prefix + key, value, row.get("iteration", 0))
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
