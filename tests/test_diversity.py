"""Diversity: per-prompt mean pairwise feature distance, its feature choice, and where it is reported."""

import json
import math

import pytest
import torch

import treesdk
from treesdk.diversity import choose_features, mean_pairwise_distance, per_prompt_diversity, pixel_features


def test_mean_pairwise_distance_by_hand():
    f = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 8.0]])
    # pairs: 5, 8, sqrt(9 + 16) = 5 -> mean 6
    assert mean_pairwise_distance(f) == pytest.approx(6.0)
    assert mean_pairwise_distance(f[:1]) == 0.0


def test_per_prompt_diversity_averages_prompts_not_pairs():
    f = torch.tensor([[0.0], [2.0], [10.0], [10.0], [10.0], [7.0]])
    prompts = ["a", "a", "b", "b", "b", "c"]  # a: 2; b: 0; c has one image and is skipped
    assert per_prompt_diversity(f, prompts) == pytest.approx(1.0)
    assert math.isnan(per_prompt_diversity(f[-1:], ["c"]))
    with pytest.raises(ValueError, match="6 feature rows but 2 prompts"):
        per_prompt_diversity(f, ["a", "b"])


class _WithFeatures:
    def __init__(self, scale):
        self.scale = scale

    def features(self, images):
        return images.flatten(1) * self.scale


def test_feature_choice_prefers_heldout_then_any_then_pixels():
    rewards = {"train": _WithFeatures(1.0), "held": _WithFeatures(2.0), "plain": object()}
    assert choose_features(rewards, ["held"])[0] == "held"
    assert choose_features(rewards, [])[0] == "train"
    name, fn = choose_features({"plain": object()}, [])
    assert name == "pixels" and fn is pixel_features


def test_evaluate_reports_diversity_with_the_heldout_evaluator_features():
    from treesdk.training.evaluate import diversity_source, evaluate

    backend = treesdk.load_backend("digits")
    rewards = {n: treesdk.load_reward(n) for n in ("digit-classifier", "digit-evaluator")}
    prompts = ["a handwritten digit 3"] * 4 + ["a handwritten digit 5"] * 4
    means, _, images = evaluate(backend, rewards, prompts, list(range(8)), 6)
    assert diversity_source(backend, rewards) == "digit-evaluator"
    feats = rewards["digit-evaluator"].features(images)
    assert feats.shape == (8, 128)
    expected = (mean_pairwise_distance(feats[:4]) + mean_pairwise_distance(feats[4:])) / 2
    assert means["diversity"] == pytest.approx(expected, rel=1e-6) and means["diversity"] > 0
    pixels = (mean_pairwise_distance(images[:4].flatten(1)) + mean_pairwise_distance(images[4:].flatten(1))) / 2
    assert means["diversity_pixels"] == pytest.approx(pixels, rel=1e-6) and means["diversity_pixels"] != means["diversity"]
    single, _, _ = evaluate(backend, rewards, prompts[::4], [0, 1], 6)  # one image per prompt: undefined
    assert single["diversity"] is None and single["diversity_pixels"] is None
    # identical seeds give identical images: no diversity
    same, _, _ = evaluate(backend, rewards, prompts[:4], [7] * 4, 6)
    assert same["diversity"] == pytest.approx(0.0, abs=1e-6)


def test_eval_lines_of_training_carry_diversity(tmp_path):
    backend = treesdk.load_backend("digits")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    heldout = {"digit-evaluator": treesdk.load_reward("digit-evaluator")}
    recipe = treesdk.load_algorithm("treegrpo", steps=4, **{"tree.d": 2, "optim.lr": 1e-4})
    prompts = ["a handwritten digit 1", "a handwritten digit 2"]
    run = treesdk.train(recipe, backend, rewards, prompts, iters=1, batch=2, out_dir=tmp_path,
                        eval_prompts=prompts * 3, eval_seeds=list(range(6)), eval_rewards=heldout)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x.get("eval")]
    assert [x["tag"] for x in evals] == ["start", "end"]
    assert all(x["diversity"] > 0 and x["diversity_pixels"] > 0 for x in evals)
    assert run.eval_before["diversity"] == evals[0]["diversity"]
