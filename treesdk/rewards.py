"""Scoring leaves with several weighted rewards, with NaN/inf guarded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .interfaces import RewardModel


class NonFiniteRewardError(RuntimeError):
    """A reward returned NaN or inf; the iteration stops before any update."""


def parse_reward_option(option: str) -> tuple[str, float]:
    """``"name"`` or ``"name=weight"`` -> ``(name, weight)``."""
    name, sep, weight = option.partition("=")
    name = name.strip()
    if not name:
        raise ValueError(f"--reward {option!r}: expected NAME or NAME=WEIGHT")
    if not sep:
        return name, 1.0
    try:
        value = float(weight)
    except ValueError as exc:
        raise ValueError(f"--reward {option!r}: weight {weight!r} is not a number") from exc
    if not math.isfinite(value):
        raise ValueError(f"--reward {option!r}: weight {weight!r} is not finite; give a number such as 0.5")
    return name, value


def score_images(
    rewards: Mapping[str, RewardModel], images: Tensor, prompts: Sequence[str]
) -> dict[str, Tensor]:
    """Every reward's float32 ``[B]`` scores on the CPU; raises :class:`NonFiniteRewardError`
    naming the reward, the image index and its prompt on the first NaN/inf."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    out: dict[str, Tensor] = {}
    for name, model in rewards.items():
        with torch.no_grad():
            values = model.score(images, list(prompts))
        out[name] = checked_scores(name, values, prompts)
    return out


def checked_scores(name: str, values: Tensor, prompts: Sequence[str]) -> Tensor:
    """Reward ``name``'s scores of ``len(prompts)`` images as float32 ``[B]`` on the CPU; a wrong
    count is a ``ValueError`` and the first NaN/inf a :class:`NonFiniteRewardError`, each naming the
    reward (and the image index and its prompt)."""
    values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
    if values.shape[0] != len(prompts):
        raise ValueError(f"reward {name!r} returned {values.shape[0]} scores for {len(prompts)} images")
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteRewardError(
            f"reward {name!r} returned {float(values[i])} for image {i} of prompt {prompts[i]!r} "
            f"({len(bad)} non-finite values in all); the iteration was stopped before any update"
        )
    return values
