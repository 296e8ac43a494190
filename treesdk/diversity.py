"""Sample diversity: how different the images drawn for one prompt are from each other.

Definition (used by ``treesdk eval``, every evaluation during training and ``treesdk bench``):

    diversity = mean over prompts p with >= 2 images of
                mean over pairs i < j of that prompt's images of || f(image_i) - f(image_j) ||_2

``f`` is a feature map, chosen in this order:

1. the features of a held-out reward (``VelocityModel.heldout_rewards()``) that offers
   ``features(images) -> Tensor[B, D]`` (for ``digits``: the held-out ``digit-evaluator``'s
   penultimate layer, so diversity is measured by a network that was not trained against);
2. the features of any other reward that offers ``features`` (e.g. an image embedding);
3. the pixels, flattened (images in ``[0, 1]``).

RL toward one reward tends to collapse the samples of a prompt onto its reward's mode; the ratio
``diversity_after / diversity_before`` on a fixed prompt/seed set is the fraction kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .interfaces import RewardModel

__all__ = ["FeatureMap", "choose_features", "mean_pairwise_distance", "per_prompt_diversity", "pixel_features", "prompt_groups"]

#: ``images [B, 3, H, W] in [0, 1] -> features [B, D]``
FeatureMap = Callable[[Tensor], Tensor]


def pixel_features(images: Tensor) -> Tensor:
    """The fallback feature map: flattened pixels, float32 ``[B, C * H * W]``."""
    return images.detach().float().flatten(1)


def mean_pairwise_distance(features: Tensor) -> float:
    """Mean Euclidean distance over the unordered pairs of rows of ``features`` ``[N, D]`` (0 if N < 2)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    dist = torch.cdist(features.double().unsqueeze(0), features.double().unsqueeze(0)).squeeze(0)
    upper = torch.triu_indices(n, n, offset=1)
    return float(dist[upper[0], upper[1]].mean())


def prompt_groups(prompts: Sequence[str]) -> list[list[int]]:
    """Row indices of each distinct prompt, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    return list(groups.values())


def per_prompt_diversity(features: Tensor, prompts: Sequence[str]) -> float:
    """Mean over prompts (with at least two images) of the mean pairwise feature distance.

    ``features`` ``[B, D]``, one row per image; ``prompts`` the B prompts. NaN if no prompt has two images.
    """
    if features.shape[0] != len(prompts):
        raise ValueError(f"{features.shape[0]} feature rows but {len(prompts)} prompts")
    values = [mean_pairwise_distance(features[rows]) for rows in prompt_groups(prompts) if len(rows) >= 2]
    return sum(values) / len(values) if values else float("nan")


def choose_features(rewards: Mapping[str, RewardModel], heldout: Sequence[str] = ()) -> tuple[str, FeatureMap]:
    """``(source name, feature map)``: a held-out reward's ``features``, else any reward's, else pixels."""
    ordered = [name for name in heldout if name in rewards] + [name for name in rewards if name not in heldout]
    for name in ordered:
        features = getattr(rewards[name], "features", None)
        if callable(features):
            return name, features
    return "pixels", pixel_features
