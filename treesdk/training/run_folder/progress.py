"""Live progress of a training run (rich): the run's iterations with an ETA, and inside the current
iteration the phase being worked on (sampling steps, decoding, reward scoring, optimiser steps)
with its own count and ETA.

:class:`TrainProgress` provides the two callbacks :func:`treesdk.train` takes:
``on_step(phase, done, total)`` (phases: ``sampling``, ``decoding``, ``rewards``, ``optimizer``,
``evaluation``) and ``on_iteration(row)``. Use it as a context manager::

    with TrainProgress(iters=20) as progress:
        run = treesdk.train(..., on_step=progress.on_step, on_iteration=progress.on_iteration)

``enabled=False`` (ranks other than 0, or ``--quiet``) shows nothing.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

#: what each phase is called on screen
PHASE_LABELS = {
    "sampling": "  sampling steps",
    "decoding": "  decoding",
    "rewards": "  scoring rewards",
    "optimizer": "  optimiser steps",
    "evaluation": "  evaluation",
}


class TrainProgress:
    """Two bars: iterations (ETA of the run, reward, s/iter, lr) and the current phase."""

    def __init__(self, iters: int, *, start: int = 0, console: Console | None = None, enabled: bool = True) -> None:
        self.iters = iters
        self.start = start
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False, disable=not enabled,
        )
        self.run_task: TaskID | None = None
        self.phase_task: TaskID | None = None
        self.phase: str | None = None

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        self.run_task = self.progress.add_task("training", total=self.iters, completed=self.start, info="")
        self.phase_task = self.progress.add_task("", total=1, completed=0, info="", visible=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.phase_task is not None:
            self.progress.update(self.phase_task, visible=False)
        self.progress.__exit__(*exc)

    def on_step(self, phase: str, done: int, total: int) -> None:
        """Inside an iteration: ``done`` of ``total`` units of ``phase`` are finished."""
        if self.phase_task is None:
            return
        if phase != self.phase:  # a new phase restarts the bar (and its ETA)
            self.phase = phase
            self.progress.reset(self.phase_task, total=max(total, 1), completed=done, visible=True,
                                description=PHASE_LABELS.get(phase, f"  {phase}"), info="")
        else:
            self.progress.update(self.phase_task, total=max(total, 1), completed=done)

    def on_iteration(self, row: dict[str, Any]) -> None:
        """After an iteration: advance the run bar and show its mean reward, seconds and lr."""
        if self.run_task is None:
            return
        self.phase = None
        info = f"reward {row.get('reward_mean', float('nan')):.3f}  {row.get('seconds', 0.0):.2f} s/it"
        if "lr" in row:
            info += f"  lr {row['lr']:.1e}"
        self.progress.update(self.run_task, completed=row.get("iteration", 0), info=info)


def summary_table(run: Any) -> Table:
    """The before/after table of a finished run (``run.eval_before`` / ``run.eval_after``: reward
    means on the evaluation set), one row per reward."""
    table = Table(title=f"evaluation set: before vs after ({run.iterations} iterations)")
    for name, justify in (("reward", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for key in sorted(set(run.eval_before) | set(run.eval_after)):
        b, a = run.eval_before.get(key), run.eval_after.get(key)
        change = f"{a - b:+.4f}" if a is not None and b is not None else "-"
        table.add_row(key.removesuffix("_mean"), f"{b:.4f}" if b is not None else "-",
                      f"{a:.4f}" if a is not None else "-", change)
    return table


def print_summary(run: Any, console: Console | None = None) -> None:
    """Print :func:`summary_table`, then where the run folder and exports are."""
    console = console or Console()
    console.print(summary_table(run))
    if getattr(run, "interrupted", False):
        code = getattr(run, "exit_code", None)
        console.print(f"[yellow]interrupted: checkpoint written at iteration {run.iterations}; resume with --resume"
                      + (f" (exit code {code})" if code else "") + "[/]")
    exported = getattr(run, "exported", None)
    console.print(f"run folder: {run.out_dir}" + (f"; exported: {', '.join(exported)}" if exported else ""))


def print_profile(rows: list[tuple[str, float, float, float]], console: Console | None = None) -> None:
    """``--profile``: one row per phase (mean seconds per iteration, share of the profiled time, peak GiB)."""
    table = Table(title="profile: per phase, mean over the iterations (metrics.jsonl \"profile\" per iteration)")
    for column in ("phase", "mean s", "share %", "peak GiB"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase, seconds, share, peak in rows:
        table.add_row(phase, f"{seconds:.3f}", f"{share:.1f}", f"{peak:.2f}")
    (console or Console()).print(table)
