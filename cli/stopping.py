"""Ctrl-C, SIGTERM and SIGHUP during a command that writes files (``export``, ``tiny``).

``with clean_errors(), stoppable("export"):`` — inside the block a stop signal unwinds the command
(:func:`treesdk.interrupts.stop_signals_raise`: the atomic writers remove their temporary files,
the previous file or folder stays as it was); the command then prints one line,
``interrupted (SIGTERM): ...``, and exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM,
129 for SIGHUP). With ``--debug`` the interrupt keeps its traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from treesdk.interrupts import signal_name, signal_number, stop_signals_raise

from .common import err_console


@contextlib.contextmanager
def stoppable(what: str) -> Iterator[None]:
    """Run the block with stop signals raised as exceptions; on one, print
    ``interrupted (SIG...): WHAT`` and exit ``128 + signal``."""
    from treesdk.errors import debug_enabled

    try:
        with stop_signals_raise():
            yield
    except KeyboardInterrupt as exc:
        if debug_enabled():
            raise
        signum = signal_number(exc)
        err_console.print(f"interrupted ({signal_name(signum)}): {what}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(code=128 + signum) from None
