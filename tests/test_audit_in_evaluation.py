"""Every evaluation carries the reward-hacking audit: the image figures of :mod:`treesdk.audit` and
each reward's within-prompt spread, computed on the very images and scores the evaluation returns."""

import pytest
import torch

import treesdk
from treesdk.audit import audit_images, group_reward_stats
from treesdk.evaluation import evaluate


@pytest.fixture(scope="module")
def evaluation():
    torch.set_num_threads(1)
    backend = treesdk.load_backend("digits")
    rewards = {"digit-classifier": treesdk.load_reward("digit-classifier")}
    prompts = ["a handwritten digit 3"] * 3 + ["a handwritten digit 7"] * 3
    return evaluate(backend, rewards, prompts, [0, 1, 2, 0, 1, 2], steps=4), prompts


def test_evaluation_reports_the_image_audit_of_its_own_images(evaluation):
    (means, _, images), _ = evaluation
    expected = audit_images(images)
    assert set(expected) == {"dark_fraction", "edge_density", "intensity_entropy"}
    for key, value in expected.items():
        assert means[key] == pytest.approx(value, abs=0)
    assert 0 < means["dark_fraction"] < 1 and means["intensity_entropy"] > 0


def test_evaluation_reports_each_rewards_spread_per_prompt(evaluation):
    (means, scores, _), prompts = evaluation
    values = scores["digit-classifier"].double()
    by_prompt = [values[:3].std(unbiased=False), values[3:].std(unbiased=False)]
    assert means["digit-classifier_std_per_prompt"] == pytest.approx(float(sum(by_prompt) / 2), rel=1e-9)
    assert means["digit-classifier_zero_std_fraction"] == group_reward_stats(values, prompts)["zero_std_fraction"]
