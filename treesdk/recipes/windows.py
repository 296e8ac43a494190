"""Window schedules of a recipe: where the branching window of ``d`` steps starts each iteration.

Each schedule is a part (slot ``window``) with ``start_at(iteration, seed, steps, depth) -> step``;
step 0 is the noisiest (sigma 1 = pure noise). Split out of :mod:`treesdk.recipes.recipe`, which
re-exports every name.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from pydantic import Field

from treesdk.recipes.parts import Part


class FixedWindow(Part):
    """The window always starts at step ``start``."""

    kind: Literal["fixed"] = "fixed"
    start: int = Field(0, ge=0, description="first step of the window (0 = the noisiest step)")

    def start_at(self, iteration: int, seed: int, steps: int, depth: int) -> int:  # noqa: ARG002 - same signature as the others
        return self.start


class SlidingWindow(Part):
    """MixGRPO / Dynamic-TreeRPO: start at ``start``, advance by ``stride`` every ``every`` iterations,
    wrap back to ``start`` after ``max_start`` (default ``T - d``)."""

    kind: Literal["sliding"] = "sliding"
    start: int = Field(0, ge=0, description="first window start")
    stride: int = Field(1, ge=1, description="steps the window advances each move")
    every: int = Field(1, ge=1, description="iterations between moves")
    max_start: int | None = Field(None, ge=0, description="last start before wrapping (default T - d)")

    def start_at(self, iteration: int, seed: int, steps: int, depth: int) -> int:  # noqa: ARG002
        last = self.max_start if self.max_start is not None else steps - depth
        span = last - self.start + 1
        return self.start + (self.stride * (iteration // self.every)) % span


class RandomWindow(Part):
    """TreeGRPO: start drawn from a truncated geometric law ``P(s) ∝ p (1 - p)^(s - min_start)`` on
    ``[min_start, max_start]`` (default ``max_start = T - d``), so early (noisy) steps are favoured."""

    kind: Literal["random"] = "random"
    p: float = Field(0.5, gt=0, le=1, description="geometric success probability; 1 = always min_start")
    min_start: int = Field(0, ge=0, description="smallest start")
    max_start: int | None = Field(None, ge=0, description="largest start (default T - d)")

    def start_at(self, iteration: int, seed: int, steps: int, depth: int) -> int:
        """Drawn from a generator seeded by ``(seed, iteration)``: every rank and every resume agrees."""
        first = self.min_start
        last = self.max_start if self.max_start is not None else steps - depth
        starts = np.arange(first, last + 1)
        probs = self.p * (1.0 - self.p) ** (starts - first) if self.p < 1 else (starts == first).astype(float)
        probs = probs / probs.sum()
        rng = np.random.default_rng([seed, iteration, 0x57A27])
        return int(rng.choice(starts, p=probs))


WindowSpec = Annotated[Union[FixedWindow, SlidingWindow, RandomWindow], Field(discriminator="kind")]

__all__ = ["FixedWindow", "RandomWindow", "SlidingWindow", "WindowSpec"]
