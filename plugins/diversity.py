"""``group-diversity``: a reward that pays each image for being unlike the other images of its prompt.

Definition, for the images of one :meth:`~GroupDiversityReward.score` call::

    score_i = mean over the other images j of the same prompt of  d(f(image_i), f(image_j))

``f`` is the ``features`` map of another reward (``features_of``: ``digit-classifier``, ``clipscore``,
``pickscore``, ``hpsv2``, ``aesthetic``, ... any reward offering ``features(images) -> [B, D]``) or
the flattened pixels in ``[0, 1]`` (``features_of=None``), loaded with ``features_options`` (e.g.
``--reward-opt 'group-diversity:features_options={model: /ckpt/PickScore_v1}'``); ``d`` is the Euclidean distance or the
cosine distance ``1 - cos`` (``metric``). An image that is alone with its prompt scores 0.

This is the intra-group diversity bonus the field adds against mode collapse in RL post-training of
image generators: weighted beside a quality reward (``--reward digit-classifier --reward
group-diversity=0.5``), each reward is standardised within its group before the weighted sum, so
the weight is the bonus's share of every advantage.

It is a **group statistic**, unlike every other reward: an image's score depends on the other images
of its prompt in the same call. The trainer scores all leaves of an iteration (on one rank) in one
call, so the group is every leaf of that prompt on that rank (a tree's leaves, plus those of other
trees of the same prompt); an evaluation scores its whole prompt x seed set in one call, so the
mean score is the per-prompt mean pairwise distance (:mod:`treesdk.diversity`) in ``f``'s space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from treesdk.diversity import pixel_features, prompt_groups
from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs

METRICS = ("euclidean", "cosine")


def group_mean_distances(features: Tensor, prompts: Sequence[str], metric: str = "euclidean") -> Tensor:
    """float32 ``[B]``: each row's mean distance to the other rows of the same prompt (0 when alone).

    ``features`` ``[B, D]``; ``metric`` ``euclidean`` or ``cosine`` (``1 - cos``); computed in float64.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if features.ndim != 2 or features.shape[0] != len(prompts):
        raise ValueError(f"features must be [B, D] with B = {len(prompts)} prompts, got {tuple(features.shape)}")
    f = features.detach().double().cpu()
    if metric == "cosine":
        f = torch.nn.functional.normalize(f, dim=1)
    out = torch.zeros(len(prompts), dtype=torch.float64)
    for rows in prompt_groups(prompts):
        if len(rows) < 2:
            continue
        g = f[rows]
        dist = torch.cdist(g[None], g[None])[0] if metric == "euclidean" else 1.0 - g @ g.T
        out[rows] = dist.sum(dim=1) / (len(rows) - 1)  # the diagonal is 0 in both metrics
    return out.float()


class GroupDiversityReward(RewardModel):
    """Mean feature distance of each image to the other images of its prompt in the call; float32 ``[B]``."""

    name = "group-diversity"

    @staticmethod
    def weights_status() -> WeightsStatus:
        """No weights of its own (those of ``features_of`` are that reward's)."""
        return WeightsStatus(None, [], "needs no weights of its own; uses those of the reward named by features_of")

    def __init__(
        self,
        features_of: str | None = None,
        metric: str = "euclidean",
        features_options: dict[str, Any] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 64,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.metric = metric
        self.features_of = features_of
        self.batch_size = int(batch_size)
        self._source: Any = None
        if features_of:
            import treesdk  # the registry; imported here so listing plugins stays light

            if features_options is not None and not isinstance(features_options, dict):
                raise ValueError(f"features_options must be a mapping of {features_of!r}'s options, got {features_options!r}")
            options: dict[str, Any] = dict(features_options or {})
            if device is not None:
                options["device"] = device
            if dtype is not None:
                options["dtype"] = dtype
            self._source = treesdk.load_reward(features_of, **options)
            if not callable(getattr(self._source, "features", None)):
                raise ValueError(
                    f"group-diversity: reward {features_of!r} offers no features(images) to measure distances in; "
                    "name a reward that does (digit-classifier, digit-evaluator, clipscore, pickscore, hpsv2, aesthetic) "
                    "or leave features_of unset for pixels"
                )

    def to(self, device: torch.device | str) -> GroupDiversityReward:
        if self._source is not None:
            self._source.to(device)
        return self

    def features(self, images: Tensor) -> Tensor:
        """The feature rows distances are measured between: ``features_of``'s, or flattened pixels."""
        if self._source is None:
            return pixel_features(images).cpu()
        return self._source.features(images).float().cpu()

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        with torch.no_grad():
            return group_mean_distances(self.features(images), list(prompts), self.metric)
