"""Evaluation on a fixed set of prompts and seeds: deterministic ODE samples, every reward's mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

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
) -> tuple[dict[str, float], dict[str, Tensor], Tensor]:
    """Sample one ODE image per (prompt, seed) pair and score it.

    Returns ``({"<reward>_mean": value}, {reward: per-image scores}, images)``.
    """
    latents = sample_ode(model, prompts, seeds, steps, chunk=chunk)
    images = decode_chunked(model, latents, chunk)
    scores = score_images(rewards, images, prompts)
    means = {f"{name}_mean": float(values.mean()) for name, values in scores.items()}
    return means, scores, images
