"""Scoring leaves with several weighted rewards, with NaN/inf guarded."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .errors import UserError
from .interfaces import RewardModel


class NonFiniteRewardError(RuntimeError):
    """A reward returned NaN or inf; the iteration stops before any update."""


class RewardFailedError(UserError):
    """A reward raised while scoring, or returned something that is not one score per image; the
    message names the reward and where it comes from (``--debug`` shows the reward's stack)."""


def _where(name: str, model: RewardModel) -> str:
    from . import registry

    try:
        return registry.provider("reward", name, model)
    except Exception:  # noqa: BLE001 - a message helper must not hide the reward's own error
        return f"module {type(model).__module__}"


def _scores(name: str, model: RewardModel, images: Tensor, prompts: Sequence[str]) -> Tensor:
    """``model.score`` as a float32 CPU ``[B]`` tensor; :class:`RewardFailedError` when it raises or
    returns anything but a tensor, array or sequence of numbers."""
    try:
        with torch.no_grad():
            values = model.score(images, list(prompts))
    except Exception as exc:  # a third-party reward's fault: one line; --debug shows the stack
        raise RewardFailedError(
            f"reward {name!r} ({_where(name, model)}) failed while scoring {images.shape[0]} images: "
            f"{type(exc).__name__}: {exc}; the iteration was stopped before any update (--debug shows the stack)"
        ) from exc
    kind = type(values).__name__
    if values is None or isinstance(values, (str, bytes, Mapping)):
        raise RewardFailedError(
            f"reward {name!r} ({_where(name, model)}) returned {kind} from score(); it must return "
            f"{images.shape[0]} numbers (a [B] tensor, array or list)"
        )
    try:
        return torch.as_tensor(values).detach().float().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RewardFailedError(
            f"reward {name!r} ({_where(name, model)}) returned a {kind} that is not numbers ({exc}); it "
            f"must return {images.shape[0]} numbers (a [B] tensor, array or list)"
        ) from None


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
        out[name] = checked_scores(name, _scores(name, model, images, prompts), prompts, model)
    return out


def checked_scores(name: str, values: Tensor, prompts: Sequence[str], model: RewardModel | None = None) -> Tensor:
    """Reward ``name``'s scores of ``len(prompts)`` images as float32 ``[B]`` on the CPU; a wrong
    count is a :class:`RewardFailedError` and the first NaN/inf a :class:`NonFiniteRewardError`, each
    naming the reward (and the image index and its prompt)."""
    values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
    if values.shape[0] != len(prompts):
        where = f" ({_where(name, model)})" if model is not None else ""
        raise RewardFailedError(f"reward {name!r}{where} returned {values.shape[0]} scores for {len(prompts)} "
                                f"images; it must return one per image")
    bad = (~torch.isfinite(values)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise NonFiniteRewardError(
            f"reward {name!r} returned {float(values[i])} for image {i} of prompt {prompts[i]!r} "
            f"({len(bad)} non-finite values in all); the iteration was stopped before any update"
        )
    return values
