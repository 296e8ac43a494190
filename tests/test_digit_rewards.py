"""The learned digit rewards: shipped weights, held-out accuracy, the RewardModel contract, errors."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file
from treesdk_backends.digits_data import load_digit_images
from treesdk_plugins.digits import (
    WEIGHTS_DIR,
    DigitClassifierNet,
    DigitClassifierReward,
    DigitEvaluatorNet,
    DigitEvaluatorReward,
    save_classifier_checkpoint,
)

import treesdk

NAMES = ("digit-classifier", "digit-evaluator")


@pytest.fixture(scope="module")
def rewards() -> dict:
    return {name: treesdk.load_reward(name) for name in NAMES}


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((WEIGHTS_DIR / "digit_rewards.json").read_text())


def _rgb(images: torch.Tensor) -> torch.Tensor:
    return images.repeat(1, 3, 1, 1)


def test_entry_points_give_the_two_classes(rewards):
    assert isinstance(rewards["digit-classifier"], DigitClassifierReward)
    assert isinstance(rewards["digit-evaluator"], DigitEvaluatorReward)
    # different architectures, trained on disjoint halves
    assert set(DigitClassifierNet().state_dict()).isdisjoint(DigitEvaluatorNet().state_dict())
    for name in NAMES:
        assert os.path.getsize(WEIGHTS_DIR / f"{name.replace('-', '_')}.safetensors") < 5e6


@pytest.mark.parametrize("name", NAMES)
def test_heldout_accuracy_reproduces_record(rewards, record, name):
    entry = record[name]
    images, labels = load_digit_images(entry["heldout_split"])
    accuracy = float((rewards[name].predict(_rgb(images)) == labels).float().mean())
    assert abs(accuracy - entry["heldout_accuracy"]) <= 1e-6
    assert accuracy > 0.9
    assert {entry["heldout_split"], entry["training"]["split"]} == {"even", "odd"}


@pytest.mark.parametrize("name", NAMES)
def test_score_is_probability_of_prompted_digit(rewards, name):
    images, labels = load_digit_images("odd")
    images, labels = images[:40], labels[:40]
    reward = rewards[name]
    right = reward.score(_rgb(images), [f"a handwritten digit {int(d)}" for d in labels])
    wrong = reward.score(_rgb(images), [f"the digit {(int(d) + 1) % 10}" for d in labels])
    assert right.shape == (40,) and right.dtype == torch.float32 and right.device.type == "cpu"
    assert bool(((right >= 0) & (right <= 1)).all())
    assert right.mean() > 0.8 and wrong.mean() < 0.1
    probs = reward.probabilities(_rgb(images))
    torch.testing.assert_close(probs.sum(1), torch.ones(40))
    torch.testing.assert_close(right, probs[torch.arange(40), labels])


def test_any_resolution_and_batch_size(rewards):
    images, labels = load_digit_images("even")
    images = _rgb(images[:30])
    prompts = [f"digit {int(d)}" for d in labels[:30]]
    reward = rewards["digit-classifier"]
    base = reward.score(images, prompts)
    upscaled = images.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # 32x32, area-downsampled back exactly
    torch.testing.assert_close(reward.score(upscaled, prompts), base, atol=1e-5, rtol=0)
    small = DigitClassifierReward(batch_size=7)
    torch.testing.assert_close(small.score(images, prompts), base, atol=1e-6, rtol=0)
    odd_size = torch.rand(3, 3, 13, 5)
    assert reward.score(odd_size, ["1", "2", "3"]).shape == (3,)
    assert reward.to("cpu") is reward


def test_score_errors(rewards):
    reward = rewards["digit-evaluator"]
    images = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward.score(images, ["digit 1"])
    with pytest.raises(ValueError, match="'a cat'"):
        reward.score(images, ["digit 1", "a cat"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        reward.score(torch.rand(2, 8, 8), ["1", "2"])


def test_checkpoint_errors_name_the_file_and_format(tmp_path):
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors") as info:
        DigitClassifierReward(checkpoint=missing)
    assert "digit-classifier-cnn-v1" in str(info.value)
    # an evaluator file is not a classifier file
    evaluator_file = save_classifier_checkpoint(DigitEvaluatorNet(), tmp_path / "eval.safetensors", {})
    with pytest.raises(ValueError, match="digit-classifier-cnn-v1"):
        DigitClassifierReward(checkpoint=evaluator_file)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign), metadata={"treesdk_format": "digit-evaluator-mlp-v1"})
    with pytest.raises(ValueError, match="missing keys"):
        DigitEvaluatorReward(checkpoint=foreign)


def test_custom_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = DigitEvaluatorNet().eval()
    path = save_classifier_checkpoint(net, tmp_path / "mine.safetensors", {"note": "test"})
    reward = DigitEvaluatorReward(checkpoint=path)
    images = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        expected = torch.softmax(net(images.mean(1, keepdim=True) * 2 - 1), dim=1)
    torch.testing.assert_close(reward.probabilities(images), expected)
