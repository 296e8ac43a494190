"""Wall seconds and peak memory per phase of a training iteration (``treesdk train --profile``).

:class:`PhaseProfiler` times named phases (``encode``, ``sample``, ``decode``, ``reward``,
``advantages``, ``training``, ``optimizer``, ``checkpoint``) and records the peak memory inside
each: on CUDA ``torch.cuda.max_memory_allocated`` (reset at every phase edge, after a
``torch.cuda.synchronize`` so that the timer reads finished work); on a CPU the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` where Linux allows it). A phase may
open inside another (the optimiser's steps inside ``training``): the outer phase's clock and peak
pause while the inner one runs, so phases never overlap and their seconds add up to the time
profiled. Disabled, :meth:`PhaseProfiler.run` calls the function and nothing else: no
synchronisation, no hook.

``benchmarks/profile_iteration.py`` measures with the same :class:`MemoryProbe`.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

__all__ = ["PHASES", "MemoryProbe", "PhaseProfiler"]

#: the phases of one iteration, in the order they run
PHASES = ("encode", "sample", "decode", "reward", "advantages", "training", "optimizer", "checkpoint")
GIB = 2**30
T = TypeVar("T")


class MemoryProbe:
    """Memory of one device, GiB: live (``now_gib``) and the peak since the last :meth:`reset_peak`."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA); nothing on a CPU."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # "5" resets the peak resident set (VmHWM) to the current one
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
        except OSError:
            pass

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / GIB
        value = _status_gib("VmHWM:")
        return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def now_gib(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device) / GIB
        return _status_gib("VmRSS:") or 0.0


def _status_gib(key: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


@dataclass
class _Open:
    name: str
    started: float


class PhaseProfiler:
    """Seconds and peak GiB per phase, per iteration (:meth:`take`) and over the run (:meth:`summary`)."""

    def __init__(self, device: torch.device | str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.probe = MemoryProbe(device)
        self._open: list[_Open] = []
        self._current: dict[str, dict[str, float]] = {}
        self._totals: dict[str, dict[str, float]] = {}
        self.iterations = 0

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` timed as phase ``name`` (just called when disabled)."""
        if not self.enabled:
            return fn(*args, **kwargs)
        self.begin(name)
        try:
            return fn(*args, **kwargs)
        finally:
            self.end()

    def begin(self, name: str) -> None:
        self.probe.sync()
        now = time.perf_counter()
        if self._open:  # pause the enclosing phase: its seconds and peak so far
            outer = self._open[-1]
            self._add(outer.name, now - outer.started, self.probe.peak_gib())
        self.probe.reset_peak()
        self._open.append(_Open(name, time.perf_counter()))

    def end(self) -> None:
        self.probe.sync()
        top = self._open.pop()
        self._add(top.name, time.perf_counter() - top.started, self.probe.peak_gib())
        self.probe.reset_peak()
        if self._open:  # the enclosing phase goes on
            self._open[-1].started = time.perf_counter()

    def take(self) -> dict[str, dict[str, float]]:
        """The phases finished since the last call (one iteration's ``profile`` field), in :data:`PHASES`
        order: ``{phase: {"seconds": s, "peak_gib": GiB}}``."""
        done, self._current = self._current, {}
        self.iterations += 1
        order = {name: i for i, name in enumerate(PHASES)}
        return {name: {"seconds": round(v["seconds"], 6), "peak_gib": round(v["peak_gib"], 4)}
                for name, v in sorted(done.items(), key=lambda kv: order.get(kv[0], len(PHASES)))}

    def summary(self) -> list[tuple[str, float, float, float]]:
        """``(phase, mean seconds per iteration, share of all profiled seconds in %, peak GiB)`` per phase,
        over every phase run so far (a checkpoint after the last iteration included)."""
        total = sum(v["seconds"] for v in self._totals.values()) or 1.0
        per = max(self.iterations, 1)
        names = [p for p in PHASES if p in self._totals] + [p for p in self._totals if p not in PHASES]
        return [(name, self._totals[name]["seconds"] / per, 100.0 * self._totals[name]["seconds"] / total,
                 self._totals[name]["peak_gib"]) for name in names]

    def _add(self, name: str, seconds: float, peak: float) -> None:
        for table in (self._current, self._totals):
            row = table.setdefault(name, {"seconds": 0.0, "peak_gib": 0.0})
            row["seconds"] += seconds
            row["peak_gib"] = max(row["peak_gib"], peak)
