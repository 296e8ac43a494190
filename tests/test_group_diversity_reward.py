"""The group-diversity reward: each image's mean distance to the other images of its prompt."""

import math

import pytest
import torch

import treesdk
from treesdk.diversity import per_prompt_diversity
from treesdk_plugins.diversity import group_mean_distances


def test_group_mean_distances_by_hand():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0], [1.0, 1.0]])
    prompts = ["a", "a", "a", "b"]  # a: pairs 5, 8, 5; b alone
    out = group_mean_distances(f, prompts)
    assert out.tolist() == pytest.approx([(5 + 8) / 2, (5 + 5) / 2, (8 + 5) / 2, 0.0])
    assert out.dtype == torch.float32


def test_cosine_metric_ignores_norm():
    f = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 2.0]])
    out = group_mean_distances(f, ["p"] * 3, metric="cosine")
    # cos distances: (0,1) 0, (0,2) 1, (1,2) 1
    assert out.tolist() == pytest.approx([0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="metric must be one of"):
        group_mean_distances(f, ["p"] * 3, metric="manhattan")
    with pytest.raises(ValueError, match="B = 2 prompts"):
        group_mean_distances(f, ["p"] * 2)


def test_reward_in_classifier_feature_space_matches_the_diversity_metric():
    backend = treesdk.load_backend("digits")
    from treesdk_backends.digits import sample_digits

    prompts = ["a handwritten digit 4"] * 5 + ["a handwritten digit 7"] * 5
    images = sample_digits(backend, prompts, num_steps=6, seed=3)
    reward = treesdk.load_reward("group-diversity", features_of="digit-classifier")
    scores = reward.score(images, prompts)
    assert scores.shape == (10,) and bool((scores > 0).all())
    feats = treesdk.load_reward("digit-classifier").features(images)
    # mean of per-image mean distances = per-prompt mean pairwise distance
    assert float(scores.mean()) == pytest.approx(per_prompt_diversity(feats, prompts), rel=1e-5)
    # an image repeated within its group is the least diverse of it
    dup = torch.cat([images[:1], images[:1], images[2:5]])
    dup_scores = reward.score(dup, prompts[:5])
    assert dup_scores[0] == dup_scores[1] and float(dup_scores[0]) < float(dup_scores[2:].max())


def test_pixels_without_features_of_and_clear_error_for_a_reward_without_features():
    images = torch.rand(4, 3, 8, 8)
    reward = treesdk.load_reward("group-diversity")
    expected = per_prompt_diversity(images.flatten(1), ["x"] * 4)
    assert float(reward.score(images, ["x"] * 4).mean()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="offers no features"):
        treesdk.load_reward("group-diversity", features_of="jpeg-compressibility")


def test_training_with_the_bonus_counts_it_as_a_weighted_reward(tmp_path):
    backend = treesdk.load_backend("digits")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier"),
               "group-diversity": treesdk.load_reward("group-diversity", features_of="digit-classifier")}
    recipe = treesdk.load_algorithm("treegrpo", steps=4, **{"tree.d": 2, "optim.lr": 1e-4})
    run = treesdk.train(recipe, backend, rewards, ["a handwritten digit 1", "a handwritten digit 2"], iters=1, batch=2,
                        weights={"digit-classifier": 1.0, "group-diversity": 0.5}, out_dir=tmp_path)
    row = run.history[-1]
    assert math.isfinite(row["group-diversity_mean"]) and row["group-diversity_mean"] > 0
