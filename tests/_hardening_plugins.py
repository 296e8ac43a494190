"""Plugins for the hardening tests, registered through a dist-info folder (:func:`fake_distribution`).

* ``gated-brightness`` (reward): :class:`analytic.BrightnessReward` that, on its first call, writes
  the file ``$TREESDK_TEST_READY`` and then waits for ``$TREESDK_TEST_GO`` to exist: the test sends
  its signal between the two, so the signal lands inside an iteration by construction (an event),
  not after a guessed delay.
* ``exits-at-import`` (reward): a module that calls ``sys.exit(3)`` when imported.
* ``nan-later`` (reward): brightness, then NaN from its N-th call (:class:`NaNLater`).
* ``divides-by-zero`` (reward): raises ``ZeroDivisionError`` from ``score`` (:class:`DividesByZero`).
* ``interrupts-twice`` (reward): brightness that sends its own process SIGINT twice on call
  ``at_call`` (and, with ``in_checkpoint``, once there and once from inside the next checkpoint).
* ``mixture`` (backend) and ``brightness`` (reward): the analytic pair of :mod:`analytic`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from analytic import BrightnessReward

ENTRY_POINTS = """\
[treesdk.backends]
mixture = analytic:MixtureFlow

[treesdk.rewards]
brightness = analytic:BrightnessReward
gated-brightness = _hardening_plugins:GatedBrightness
exits-at-import = _exit_at_import:Reward
nan-later = _hardening_plugins:NaNLater
divides-by-zero = _hardening_plugins:DividesByZero
interrupts-twice = _hardening_plugins:InterruptsTwice
"""


def fake_distribution(site: Path) -> Path:
    """Write ``site/treesdk_hardening_test-0.0.dist-info`` (put ``site`` on sys.path / PYTHONPATH)."""
    info = site / "treesdk_hardening_test-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: treesdk-hardening-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


class GatedBrightness(BrightnessReward):
    name = "gated-brightness"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        self.calls += 1
        ready, go = os.environ.get("TREESDK_TEST_READY"), os.environ.get("TREESDK_TEST_GO")
        if self.calls == 2 and ready and go:  # call 1 is the evaluation before training
            Path(ready).write_text("scoring")
            deadline = time.monotonic() + 120
            while not Path(go).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().score(images, prompts)


class NaNLater(BrightnessReward):
    """Brightness until call ``from_call`` (1-based; call 1 is the evaluation before training),
    then NaN: a reward that breaks in the middle of a run."""

    name = "nan-later"

    def __init__(self, from_call: int = 3) -> None:
        super().__init__()
        self.from_call, self.calls = from_call, 0

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        self.calls += 1
        values = super().score(images, prompts)
        return values * float("nan") if self.calls >= self.from_call else values


class DividesByZero(BrightnessReward):
    """A third-party reward with a bug: ``score`` raises ``ZeroDivisionError``."""

    name = "divides-by-zero"

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        return 1 / 0


class InterruptsTwice(BrightnessReward):
    """On call ``at_call`` (call 1 is the evaluation before training) the user presses Ctrl-C
    twice: the first asks for a stop after the iteration, the second stops at once."""

    name = "interrupts-twice"

    def __init__(self, at_call: int = 3) -> None:
        super().__init__()
        self.at_call, self.calls = at_call, 0

    def score(self, images, prompts):  # noqa: ANN001, ANN201
        import signal

        self.calls += 1
        if self.calls == self.at_call:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes: let it
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the second handler raises KeyboardInterrupt in here
        return super().score(images, prompts)
