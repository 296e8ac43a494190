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

A distance-based diversity also counts *noise* as variety: images that leave the data for speckled,
off-manifold ones grow further apart. Where a backend has reference images of what a prompt should
look like (``VelocityModel.reference_images``; ``digits``: the real digits of the prompted class),
evaluations also report the improved **precision** and **recall** of Kynkäänniemi et al. (2019)
in the same features (:func:`precision_recall`): precision = the fraction of samples inside the
reference manifold (fidelity), recall = the fraction of references inside the samples' manifold
(coverage, a diversity that noise does not buy). Each manifold is the union of balls around its
points, of radius the distance to the point's k-th nearest neighbour in the same set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .interfaces import RewardModel

__all__ = [
    "FeatureMap",
    "choose_features",
    "mean_pairwise_distance",
    "per_prompt_diversity",
    "per_prompt_precision_recall",
    "pixel_features",
    "precision_recall",
    "prompt_groups",
]

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


def knn_radii(features: Tensor, k: int) -> Tensor:
    """Distance of each row of ``features`` ``[N, D]`` to its k-th nearest other row, float64 ``[N]`` (needs N > k)."""
    if features.shape[0] <= k:
        raise ValueError(f"k-th neighbour radii need more than k = {k} rows, got {features.shape[0]}")
    x = features.double()
    dist = torch.cdist(x.unsqueeze(0), x.unsqueeze(0)).squeeze(0)
    return dist.kthvalue(k + 1, dim=1).values  # the 1st smallest is the row itself (distance 0)


def precision_recall(samples: Tensor, references: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``samples`` ``[N, D]`` against
    ``references`` ``[M, D]`` (features of the same map): ``(precision, recall)``, each in ``[0, 1]``.

    precision = fraction of samples within ``radius_k(r)`` of some reference ``r``;
    recall = fraction of references within ``radius_k(s)`` of some sample ``s``;
    ``radius_k`` = the distance to the k-th nearest neighbour inside the point's own set. Needs
    N > k and M > k.
    """
    ref_radii, sample_radii = knn_radii(references, k), knn_radii(samples, k)
    cross = torch.cdist(samples.double().unsqueeze(0), references.double().unsqueeze(0)).squeeze(0)  # [N, M]
    precision = (cross <= ref_radii.unsqueeze(0)).any(dim=1).double().mean()
    recall = (cross <= sample_radii.unsqueeze(1)).any(dim=0).double().mean()
    return float(precision), float(recall)


def per_prompt_precision_recall(
    features: Tensor, prompts: Sequence[str], references: Mapping[str, Tensor], k: int = 3
) -> tuple[float, float]:
    """Mean over prompts of :func:`precision_recall` of that prompt's rows of ``features`` against
    ``references[prompt]`` (reference features). Prompts with no references, or with at most ``k``
    samples or references, are left out; ``(nan, nan)`` when none is left."""
    if features.shape[0] != len(prompts):
        raise ValueError(f"{features.shape[0]} feature rows but {len(prompts)} prompts")
    pairs = []
    for rows in prompt_groups(prompts):
        ref = references.get(prompts[rows[0]])
        if ref is not None and len(rows) > k and ref.shape[0] > k:
            pairs.append(precision_recall(features[rows], ref, k))
    if not pairs:
        return float("nan"), float("nan")
    return sum(p for p, _ in pairs) / len(pairs), sum(r for _, r in pairs) / len(pairs)


def choose_features(rewards: Mapping[str, RewardModel], heldout: Sequence[str] = ()) -> tuple[str, FeatureMap]:
    """``(source name, feature map)``: a held-out reward's ``features``, else any reward's, else pixels."""
    ordered = [name for name in heldout if name in rewards] + [name for name in rewards if name not in heldout]
    for name in ordered:
        features = getattr(rewards[name], "features", None)
        if callable(features):
            return name, features
    return "pixels", pixel_features
