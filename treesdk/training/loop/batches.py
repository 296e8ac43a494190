"""Which prompts and which noise an iteration uses: pure functions of ``(seed, iteration, slot)``,
so a resumed run, or one split over ranks, samples exactly what an uninterrupted single-process run
samples (:mod:`treesdk.training.loop.trainer`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def derived_seed(*entropy: int) -> int:
    """A 32-bit seed hashed from the non-negative integers ``entropy`` (numpy's ``SeedSequence``)."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def slot_seed(seed: int, iteration: int, slot: int) -> int:
    """Seed of the tree in global batch slot ``slot`` at ``iteration`` (independent of ranks)."""
    return derived_seed(seed, iteration, slot, 0x7EE)


def iteration_prompts(prompts: Sequence[str], batch: int, seed: int, iteration: int) -> list[str]:
    """The ``batch`` prompts of ``iteration``: an epoch-wise shuffle of ``prompts`` (with
    repetition when ``batch`` exceeds the prompt count), a pure function of ``(seed, iteration)``."""
    n = len(prompts)
    start = iteration * batch
    out = []
    for position in range(start, start + batch):
        epoch, offset = divmod(position, n)
        order = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(n)
        out.append(prompts[int(order[offset])])
    return out
