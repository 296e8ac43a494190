"""The diversity benchmarks measure what ``treesdk eval`` measures (benchmarks/digits_diversity_*.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import treesdk  # noqa: E402
from treesdk.diversity import mean_pairwise_distance, pixel_features  # noqa: E402
from treesdk.evaluation import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def digits_and_evaluator():
    torch.set_num_threads(1)
    return treesdk.load_backend("digits"), treesdk.load_reward("digit-evaluator")


def test_decomposition_agrees_with_the_evaluation(digits_and_evaluator, monkeypatch):
    from digits_diversity_decomposition import decompose

    backend, evaluator = digits_and_evaluator
    row = decompose(backend, evaluator)
    prompts, seeds = backend.eval_set()
    means, _, _ = evaluate(backend, {"digit-evaluator": evaluator}, prompts, seeds, 10)
    assert row["diversity"] == pytest.approx(means["diversity"]) and row["diversity_pixels"] == pytest.approx(means["diversity_pixels"])
    assert row["heldout"] == pytest.approx(means["digit-evaluator_mean"])
    assert 0.5 < row["correct"] < 1.0  # the shipped base model draws wrong digits (label noise)
    assert row["diversity_correct"] != pytest.approx(row["diversity"])
    # when every sample is read as its prompted digit, the two measures are one
    monkeypatch.setattr(evaluator, "predict", lambda images: torch.tensor([int(p[-1]) for p in prompts]))
    same = decompose(backend, evaluator)
    assert same["correct"] == 1.0 and same["diversity_correct"] == pytest.approx(same["diversity"])


def test_bound_measure_with_equal_weights_is_the_mean_pairwise_distance():
    from digits_diversity_bound import measure

    g = torch.Generator().manual_seed(0)
    features, images = torch.randn(12, 5, generator=g), torch.rand(12, 3, 8, 8, generator=g)
    pixels, score = pixel_features(images), torch.rand(12, generator=g).double()
    groups = [torch.arange(0, 6), torch.arange(6, 12)]
    m = measure(features, pixels, score, torch.ones(12, dtype=torch.float64), groups)
    assert m["diversity"] == pytest.approx(sum(mean_pairwise_distance(features[r]) for r in groups) / 2)
    assert m["diversity_pixels"] == pytest.approx(sum(mean_pairwise_distance(pixels[r]) for r in groups) / 2)
    assert m["heldout"] == pytest.approx(float(score.mean()))
    # a weighting that keeps two rows of a group measures just their distance
    keep = torch.zeros(12, dtype=torch.float64)
    keep[[0, 1, 6, 7]] = 1.0
    m2 = measure(features, pixels, score, keep, groups)
    expected = (float((features[0] - features[1]).norm()) + float((features[6] - features[7]).norm())) / 2
    assert m2["diversity"] == pytest.approx(expected, rel=1e-5)


def test_curves_trace_follows_the_run_evaluations_and_the_summary_finds_the_target_corner():
    from digits_diversity_curves import TARGET_GAIN, summarize, trace

    torch.set_num_threads(1)
    row = trace("default-run", seed=0, iters=2, every=1, batch=2)
    assert [p["iteration"] for p in row["points"]] == [0, 1, 2]
    start, end = row["points"][0], row["points"][-1]
    assert start["heldout_gain"] == 0.0 and start["diversity_kept"] == 1.0 and start["diversity_pixels_kept"] == 1.0
    assert end["heldout"] == pytest.approx(row["heldout_before"] + end["heldout_gain"])
    assert end["diversity_kept"] != 1.0  # two updates moved the samples

    def run(seed, *points):
        return {"variant": "v", "seed": seed, "points": [{"heldout_gain": 0.0, "diversity_kept": 1.0, "diversity_pixels_kept": 1.0},
                                                         *({"heldout_gain": g, "diversity_kept": f, "diversity_pixels_kept": p} for g, f, p in points)]}

    summary = summarize([run(0, (0.2, 0.9, 0.95), (TARGET_GAIN, 0.79, 0.85)), run(1, (TARGET_GAIN + 0.001, 0.81, 0.9))])[0]
    assert summary["best_gain_at_80_diversity_kept"] == [0.2, TARGET_GAIN + 0.001]
    assert summary["reaches_target_diversity_kept"] == [False, True]
    assert summary["reaches_target_diversity_pixels_kept"] == [True, True]
