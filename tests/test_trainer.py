"""The training loop on the analytic mixture: it learns, it stops on NaN rewards, it resumes."""

import json

import pytest
import torch

from analytic import BrightnessReward, MixtureFlow
from treesdk.recipes import load_recipe
from treesdk.rewards import NonFiniteRewardError
from treesdk import train


def recipe(name="treegrpo", **kw):
    return load_recipe(name, **{"steps": 6, "optim.lr": 0.05, "optim.grad_clip": None, **kw})


def mode_weight(model):
    return float(torch.softmax(model.logits.detach(), 0)[1])


@pytest.mark.parametrize("name", ["treegrpo", "grpo", "mixgrpo", "dynamic-treerpo"])
def test_training_raises_the_reward(name):
    extra = {"tree.roots": 6} if name in ("grpo", "mixgrpo") else {"tree.d": 3}
    if name == "mixgrpo":
        extra["tree.d"] = 3
    model = MixtureFlow()
    before = mode_weight(model)
    run = train(recipe(name, **extra), model, {"brightness": BrightnessReward()}, ["a", "b", "c", "d"],
                iters=8, batch=4, seed=0, eval_prompts=["a"] * 16, eval_seeds=list(range(16)))
    assert mode_weight(model) > before + 0.1
    assert run.eval_after["brightness_mean"] > run.eval_before["brightness_mean"] + 0.05
    assert all(row["nfe_sampling"] > 0 and row["nfe_training"] > 0 for row in run.history)


def test_nan_reward_stops_before_any_update():
    model = MixtureFlow()
    before = model.logits.detach().clone()
    with pytest.raises(NonFiniteRewardError, match=r"reward 'brightness' returned nan for image 3 of prompt"):
        train(recipe(), model, {"brightness": BrightnessReward(nan_at=3)}, ["a"], iters=2, batch=1)
    assert torch.equal(model.logits.detach(), before)


def test_run_folder_metrics_and_resume_bit_for_bit(tmp_path):
    rewards = {"brightness": BrightnessReward()}
    straight = MixtureFlow()
    train(recipe(), straight, rewards, ["a", "b"], iters=4, batch=2, seed=3, out_dir=tmp_path / "a")
    resumed = MixtureFlow()
    train(recipe(), resumed, rewards, ["a", "b"], iters=2, batch=2, seed=3, out_dir=tmp_path / "b")
    resumed = MixtureFlow()  # fresh process-like object: all state comes from the checkpoint
    train(recipe(), resumed, rewards, ["a", "b"], iters=4, batch=2, seed=3, out_dir=tmp_path / "b", resume=True)
    assert torch.equal(straight.logits.detach(), resumed.logits.detach())
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    required = {"iteration", "window_start", "trees", "leaves", "nfe_sampling", "nfe_training", "reward_mean",
                "reward_std", "loss", "clip_fraction", "seconds_sampling", "seconds_reward", "seconds_training", "seconds"}
    assert required <= set(rows[0])
    assert json.loads((tmp_path / "a" / "config.json").read_text())["recipe"]["name"] == "treegrpo"


def test_checkpoint_carries_the_global_rng_state(tmp_path):
    torch.manual_seed(1234)
    train(recipe(), MixtureFlow(), {"brightness": BrightnessReward()}, ["a"], iters=1, batch=1, out_dir=tmp_path)
    expected = torch.rand(3)  # the stream right after the checkpoint was written
    torch.manual_seed(0)
    train(recipe(), MixtureFlow(), {"brightness": BrightnessReward()}, ["a"], iters=1, batch=1, out_dir=tmp_path,
          resume=True)
    assert torch.equal(torch.rand(3), expected)
