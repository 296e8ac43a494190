"""Reward-hacking audit figures: pure functions of image tensors and of grouped rewards.

Images are float ``[B, C, H, W]`` in ``[0, 1]``; the figures use the luminance ``Y`` = the mean over
channels. Each function returns one value per image (float32 ``[B]``) unless stated.

* :func:`dark_fraction`: fraction of pixels with ``Y < threshold`` (default 0.5). OCR hacking often
  shows as images that are mostly ink (or none).
* :func:`edge_density`: fraction of pixels whose gradient magnitude (forward differences,
  ``sqrt(dx^2 + dy^2)`` on ``Y``, the last row/column padded by replication so ``dx`` or ``dy`` is 0
  there) exceeds ``threshold`` (default 0.25). Stroke-like texture without letters raises it.
* :func:`intensity_entropy`: Shannon entropy in bits of the histogram of ``Y`` over ``bins``
  (default 16) equal bins of [0, 1] (value 1 in the last bin); 0 for a constant image, at most
  ``log2(bins)``.
* :func:`group_reward_stats`: for rewards grouped by prompt, the mean within-group standard
  deviation (population std, ``ddof=0``) and the fraction of groups whose std is 0 (no learning
  signal for group-relative advantages).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["audit_images", "dark_fraction", "edge_density", "group_reward_stats", "intensity_entropy", "luminance"]


def luminance(images: Tensor) -> Tensor:
    """Mean over channels: ``[B, C, H, W] -> [B, H, W]`` float32."""
    if images.ndim != 4:
        raise ValueError(f"audit figures need images [B, C, H, W], got shape {tuple(images.shape)}")
    return images.float().mean(1)


def dark_fraction(images: Tensor, threshold: float = 0.5) -> Tensor:
    """Fraction of pixels with luminance below ``threshold``: ``[B]``."""
    return (luminance(images) < threshold).float().flatten(1).mean(1)


def edge_density(images: Tensor, threshold: float = 0.25) -> Tensor:
    """Fraction of pixels whose forward-difference gradient magnitude exceeds ``threshold``: ``[B]``."""
    y = luminance(images)
    dx = torch.cat([y[:, :, 1:] - y[:, :, :-1], torch.zeros_like(y[:, :, :1])], dim=2)
    dy = torch.cat([y[:, 1:, :] - y[:, :-1, :], torch.zeros_like(y[:, :1, :])], dim=1)
    return ((dx.square() + dy.square()).sqrt() > threshold).float().flatten(1).mean(1)


def intensity_entropy(images: Tensor, bins: int = 16) -> Tensor:
    """Entropy in bits of the luminance histogram over ``bins`` equal bins of [0, 1]: ``[B]``."""
    y = luminance(images).clamp(0, 1).flatten(1)
    index = (y * bins).long().clamp(max=bins - 1)
    counts = torch.zeros(y.shape[0], bins).scatter_add_(1, index, torch.ones_like(y))
    p = counts / y.shape[1]
    return -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1)


def audit_images(images: Tensor) -> dict[str, float]:
    """Means over the batch of the three image figures: ``dark_fraction``, ``edge_density``, ``intensity_entropy``."""
    return {
        "dark_fraction": float(dark_fraction(images).mean()),
        "edge_density": float(edge_density(images).mean()),
        "intensity_entropy": float(intensity_entropy(images).mean()),
    }


def group_reward_stats(rewards: Sequence[float] | Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """``{"reward_std_per_prompt": mean within-prompt std, "zero_std_fraction": fraction of prompts
    whose rewards all equal}`` over the groups of equal prompts (a prompt seen once has std 0)."""
    values = torch.as_tensor(rewards, dtype=torch.float64).flatten().tolist()
    if len(values) != len(prompts):
        raise ValueError(f"group_reward_stats: {len(values)} rewards for {len(prompts)} prompts")
    groups: dict[str, list[float]] = defaultdict(list)
    for value, prompt in zip(values, prompts):
        groups[prompt].append(value)
    stds = [float(torch.tensor(g, dtype=torch.float64).std(unbiased=False)) for g in groups.values()]
    return {"reward_std_per_prompt": sum(stds) / len(stds), "zero_std_fraction": sum(s == 0.0 for s in stds) / len(stds)}
