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
    from treesdk.evaluation import diversity_source, evaluate

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


def _brute_force_precision_recall(samples, references, k):
    """Kynkäänniemi et al. (2019) by loops: a point's radius is the distance to its k-th nearest
    other point of its own set; a sample counts for precision when some reference ball holds it."""
    def radius(points, i):
        others = sorted(float((points[i] - points[j]).norm()) for j in range(len(points)) if j != i)
        return others[k - 1]

    ref_r = [radius(references, j) for j in range(len(references))]
    smp_r = [radius(samples, i) for i in range(len(samples))]
    inside = lambda x, centres, radii: any(float((x - c).norm()) <= r for c, r in zip(centres, radii))  # noqa: E731
    precision = sum(inside(s, references, ref_r) for s in samples) / len(samples)
    recall = sum(inside(r, samples, smp_r) for r in references) / len(references)
    return precision, recall


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_equals_the_definition_by_loops(k):
    from treesdk.diversity import precision_recall

    g = torch.Generator().manual_seed(0)
    references = torch.randn(25, 4, generator=g)
    samples = torch.cat([torch.randn(8, 4, generator=g) * 0.5, torch.randn(7, 4, generator=g) * 0.5 + 6.0])  # half far away
    p, r = precision_recall(samples, references, k)
    assert (p, r) == pytest.approx(_brute_force_precision_recall(samples, references, k))
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0  # the far half misses the references; the tight half covers part of them


def test_noise_lowers_precision_and_a_collapse_lowers_recall_while_distances_say_otherwise():
    from treesdk.diversity import precision_recall

    g = torch.Generator().manual_seed(1)
    references = torch.randn(200, 2, generator=g)
    faithful = torch.randn(200, 2, generator=g)
    noisy = faithful + 3.0 * torch.randn(200, 2, generator=g)  # further apart: more "diversity"
    collapsed = 0.05 * torch.randn(200, 2, generator=g)
    p_ok, r_ok = precision_recall(faithful, references)
    p_noisy, _ = precision_recall(noisy, references)
    p_col, r_col = precision_recall(collapsed, references)
    assert mean_pairwise_distance(noisy) > 2 * mean_pairwise_distance(faithful)
    assert p_ok > 0.8 and r_ok > 0.8 and p_noisy < 0.5 * p_ok
    assert p_col == 1.0 and r_col < 0.3


def test_per_prompt_precision_recall_skips_prompts_without_enough_images_or_references():
    from treesdk.diversity import per_prompt_precision_recall, precision_recall

    g = torch.Generator().manual_seed(2)
    feats = torch.randn(11, 3, generator=g)
    prompts = ["a"] * 5 + ["b"] * 5 + ["c"]
    refs = {"a": torch.randn(9, 3, generator=g), "b": torch.randn(3, 3, generator=g), "c": torch.randn(9, 3, generator=g)}
    p, r = per_prompt_precision_recall(feats, prompts, refs, k=3)  # b: 3 references; c: 1 sample -> only a counts
    assert (p, r) == pytest.approx(precision_recall(feats[:5], refs["a"], 3))
    assert all(math.isnan(v) for v in per_prompt_precision_recall(feats, prompts, {}, k=3))


def test_evaluate_reports_precision_and_recall_against_the_real_digits():
    from treesdk.diversity import precision_recall
    from treesdk.evaluation import evaluate
    from treesdk_backends.digits_data import load_digit_images

    backend = treesdk.load_backend("digits")
    evaluator = treesdk.load_reward("digit-evaluator")
    prompts = ["a handwritten digit 3"] * 6 + ["a handwritten digit 5"] * 6
    means, _, images = evaluate(backend, {"digit-evaluator": evaluator}, prompts, list(range(12)), 6)
    real, labels = load_digit_images("all")
    expected = [precision_recall(evaluator.features(images[i : i + 6]), evaluator.features(real[labels == d].repeat(1, 3, 1, 1)), 3)
                for i, d in ((0, 3), (6, 5))]
    assert means["precision"] == pytest.approx((expected[0][0] + expected[1][0]) / 2)
    assert means["recall"] == pytest.approx((expected[0][1] + expected[1][1]) / 2)
    assert backend.reference_images(["a handwritten digit 3", "draw a cat"]).keys() == {"a handwritten digit 3"}

    class NoReferences:  # a backend without reference images reports none
        def __getattr__(self, name):
            return getattr(backend, name)

        def reference_images(self, prompts):
            return {}

    none, _, _ = evaluate(NoReferences(), {"digit-evaluator": evaluator}, prompts, list(range(12)), 6)
    assert none["precision"] is None and none["recall"] is None
