"""Evaluation on a fixed set of prompts and seeds: deterministic ODE samples, every reward's mean
and the samples' per-prompt diversity (:mod:`treesdk.diversity`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from treesdk.diversity import choose_features, per_prompt_diversity, pixel_features
from treesdk.interfaces import RewardModel, VelocityModel, iter_chunks
from treesdk.rewards import score_images
from treesdk.sampler import sample_ode


def decode_chunked(model: VelocityModel, latents: Tensor, chunk: int = 64) -> Tensor:
    """``model.decode`` in chunks; images float32 ``[B, 3, H, W]`` on the CPU."""
    with torch.no_grad():
        return torch.cat([model.decode(latents[part]).float().cpu() for part in iter_chunks(latents.shape[0], chunk)])


def evaluate(
    model: VelocityModel,
    rewards: Mapping[str, RewardModel],
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    chunk: int = 64,
    decode_chunk: int | None = None,
) -> tuple[dict[str, float], dict[str, Tensor], Tensor]:
    """Sample one ODE image per (prompt, seed) pair, score it, and measure diversity.

    ``chunk``: rows per sampling call; ``decode_chunk``: images per decode call (default ``chunk``).
    Returns ``({"<reward>_mean": value, ..., "diversity": value, "diversity_pixels": value},
    {reward: per-image scores}, images)``; both diversities are None when no prompt has at least two images.
    ``diversity`` is the per-prompt mean pairwise feature distance (:mod:`treesdk.diversity`), with
    the features of the backend's held-out reward when one is among ``rewards`` and offers them,
    else another reward's, else the pixels; :func:`diversity_source` names the choice.
    ``diversity_pixels`` is the same statistic on the flattened pixels in ``[0, 1]`` (model-agnostic,
    but blind to what a feature network deems similar).
    """
    latents = sample_ode(model, prompts, seeds, steps, chunk=chunk)
    images = decode_chunked(model, latents, decode_chunk or chunk)
    scores = score_images(rewards, images, prompts)
    means = {f"{name}_mean": float(values.mean()) for name, values in scores.items()}
    _, features = choose_features(rewards, model.heldout_rewards())
    with torch.no_grad():
        value = per_prompt_diversity(features(images), list(prompts))
    pixels = per_prompt_diversity(pixel_features(images), list(prompts))
    means["diversity"] = value if value == value else None  # None (JSON null) when no prompt has two images
    means["diversity_pixels"] = pixels if pixels == pixels else None
    return means, scores, images


def diversity_source(model: VelocityModel, rewards: Mapping[str, RewardModel]) -> str:
    """Which features :func:`evaluate` measures diversity with: a reward's name, or ``"pixels"``."""
    return choose_features(rewards, model.heldout_rewards())[0]
