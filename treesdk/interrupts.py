"""Stop signals as exceptions, for commands that write files (``export``, ``tiny``).

Python turns SIGINT into :class:`KeyboardInterrupt`, so ``finally`` blocks and the atomic writers'
``except BaseException`` clean-ups run; SIGTERM and SIGHUP, by default, end the process at once,
leaving temporary files behind and printing nothing. Inside :func:`stop_signals_raise` they raise
:class:`Terminated` (a ``KeyboardInterrupt``) instead, so every signal that asks a command to stop
unwinds it the same way. ``train`` has its own handling (finish the iteration, checkpoint, exit):
:class:`treesdk.training.loop.stop_request.StopRequest`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

#: the signals turned into :class:`Terminated` (SIGINT already raises ``KeyboardInterrupt``)
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """A stop signal other than SIGINT arrived; ``signum`` is its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_number(exc: BaseException) -> int:
    """The signal behind an interrupt: :attr:`Terminated.signum`, else SIGINT."""
    return int(getattr(exc, "signum", signal.SIGINT))


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread; the
    previous handlers come back afterwards. Outside the main thread (where Python cannot install
    handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001 - the signal API
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
