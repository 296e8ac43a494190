"""Evaluation on a fixed set of prompts and seeds: deterministic ODE samples, every reward's mean
and the samples' per-prompt diversity (:mod:`treesdk.diversity`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from treesdk.audit import audit_images, group_reward_stats
from treesdk.diversity import FeatureMap, choose_features, per_prompt_diversity, per_prompt_precision_recall, pixel_features
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
    Returns ``({"<reward>_mean": value, ..., "diversity": value, "diversity_pixels": value, "precision":
    value, "recall": value, "dark_fraction", "edge_density", "intensity_entropy": the reward-hacking
    audit of :mod:`treesdk.audit`, and per reward "<reward>_std_per_prompt" / "<reward>_zero_std_fraction":
    its within-prompt spread over the seeds}, {reward: per-image scores}, images)``; both diversities are None when no
    prompt has at least two images; precision and recall (fidelity to and coverage of the backend's
    ``reference_images``, in the diversity's features) are None when it has none.
    ``diversity`` is the per-prompt mean pairwise feature distance (:mod:`treesdk.diversity`), with
    the features of the backend's held-out reward when one is among ``rewards`` and offers them,
    else another reward's, else the backend's ``fidelity_features``, else the pixels
    (:func:`evaluation_features`); :func:`diversity_source` names the choice.
    ``diversity_pixels`` is the same statistic on the flattened pixels in ``[0, 1]`` (model-agnostic,
    but blind to what a feature network deems similar).
    """
    latents = sample_ode(model, prompts, seeds, steps, chunk=chunk)
    images = decode_chunked(model, latents, decode_chunk or chunk)
    scores = score_images(rewards, images, prompts)
    means = {f"{name}_mean": float(values.mean()) for name, values in scores.items()}
    features = evaluation_features(model, rewards)[1]
    with torch.no_grad():
        sample_features = features(images)
    value = per_prompt_diversity(sample_features, list(prompts))
    pixels = per_prompt_diversity(pixel_features(images), list(prompts))
    means["diversity"] = value if value == value else None  # None (JSON null) when no prompt has two images
    means["diversity_pixels"] = pixels if pixels == pixels else None
    means["precision"], means["recall"] = fidelity_and_coverage(model, features, sample_features, prompts)
    means.update(audit_images(images))
    for name, values in scores.items():
        stats = group_reward_stats(values, prompts)
        means[f"{name}_std_per_prompt"] = stats["reward_std_per_prompt"]
        means[f"{name}_zero_std_fraction"] = stats["zero_std_fraction"]
    return means, scores, images


def fidelity_and_coverage(
    model: VelocityModel, features: FeatureMap, sample_features: Tensor, prompts: Sequence[str]
) -> tuple[float | None, float | None]:
    """Per-prompt improved precision and recall (:func:`treesdk.diversity.per_prompt_precision_recall`,
    k = 3) of the samples, given by their ``sample_features`` (``features`` of the images), against
    ``model.reference_images`` mapped by the same ``features``; ``(None, None)`` when the backend has
    no references or no prompt has more than 3 images and references."""
    references = model.reference_images(list(dict.fromkeys(prompts)))
    if not references:
        return None, None
    with torch.no_grad():
        ref_features = {prompt: features(ref.float()) for prompt, ref in references.items()}
    precision, recall = per_prompt_precision_recall(sample_features, list(prompts), ref_features)
    return (precision, recall) if precision == precision else (None, None)


def evaluation_features(model: VelocityModel, rewards: Mapping[str, RewardModel]) -> tuple[str, FeatureMap]:
    """``(source, feature map)`` for diversity, precision and recall: a reward's ``features`` (the
    held-out reward's first), else the backend's :meth:`~treesdk.interfaces.VelocityModel.fidelity_features`
    (source ``"backend"``), else the flattened pixels (``"pixels"``)."""
    source, features = choose_features(rewards, model.heldout_rewards())
    overridden = getattr(type(model), "fidelity_features", VelocityModel.fidelity_features) is not VelocityModel.fidelity_features
    if source != "pixels" or not overridden:
        return source, features

    def backend_features(images: Tensor) -> Tensor:
        found = model.fidelity_features(images)
        return pixel_features(images) if found is None else found

    return "backend", backend_features


def diversity_source(model: VelocityModel, rewards: Mapping[str, RewardModel]) -> str:
    """Which features :func:`evaluate` measures diversity with: a reward's name, ``"backend"`` or ``"pixels"``."""
    return evaluation_features(model, rewards)[0]
