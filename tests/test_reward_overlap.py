"""Scoring that overlaps sampling (``treesdk.reward_scoring``), and a digits run whose reward server
dies mid-run: one named error line, the last checkpoint kept, ``--resume`` once it is back."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("httpx")  # the remote extra

from _reward_servers import Faults, ThreadServer, faulty_app
from typer.testing import CliRunner

import treesdk
from treesdk.errors import UserError
from treesdk.interfaces import RewardModel
from treesdk.reward_scoring import RewardScoringError, sample_and_score
from treesdk.rewards import NonFiniteRewardError
from treesdk.sampler import sample_forest_for_recipe
from treesdk.training.loop.batches import slot_seed
from treesdk.training.run_folder.checkpoint import list_checkpoints
from treesdk_cli.main import app
from treesdk_plugins.reward_server import create_app

runner = CliRunner()


class SlowReward(RewardModel):
    """An I/O-bound stand-in: the digit classifier after a short wait; records the scoring thread."""

    name = "slow"
    io_bound = True

    def __init__(self, overlap: bool = True, fail: BaseException | None = None) -> None:
        self.inner, self.overlap, self.fail, self.threads = treesdk.load_reward("digit-classifier"), overlap, fail, []

    def score(self, images, prompts):
        self.threads.append(threading.current_thread().name)
        time.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        return self.inner.score(images, prompts)


@pytest.fixture(scope="module")
def digits():
    backend = treesdk.load_backend("digits")
    recipe = treesdk.load_algorithm(backend.default_recipe)
    prompts = backend.default_prompts()[:5]
    seeds = [slot_seed(0, 0, s) for s in range(5)]
    return backend, recipe, prompts, seeds, backend.encode(prompts)


def run(digits, rewards, **kwargs):
    backend, recipe, prompts, seeds, cond = digits
    return sample_and_score(backend, recipe, prompts, seeds, 2, cond, rewards, **kwargs)


def test_overlapped_scores_equal_synchronous_ones_in_order_and_value(digits):
    on, off = SlowReward(), SlowReward()
    forest_on, scores_on, _ = run(digits, {"slow": on, "jpeg": treesdk.load_reward("jpeg-compressibility")})
    forest_off, scores_off, _ = run(digits, {"slow": off, "jpeg": treesdk.load_reward("jpeg-compressibility")}, overlap=False)
    assert torch.equal(forest_on.leaves, forest_off.leaves)
    for name in ("slow", "jpeg"):
        assert torch.equal(scores_on[name], scores_off[name]) and scores_on[name].shape == (forest_on.leaves.shape[0],)
    assert set(on.threads) == {"treesdk-reward_0"} and len(on.threads) == 4  # 4 groups, each in the worker
    assert set(off.threads) == {threading.current_thread().name}


def test_groups_in_flight_together_come_back_in_their_order(digits):
    together, alone = SlowReward(), SlowReward(overlap=False)
    together.in_flight = 4
    _, scores, _ = run(digits, {"slow": together})
    _, reference, _ = run(digits, {"slow": alone})
    assert torch.equal(scores["slow"], reference["slow"])
    assert len(set(together.threads)) >= 1 and all(t.startswith("treesdk-reward") for t in together.threads)


def test_the_grouped_forest_is_the_forest_of_its_trees_joined_in_prompt_order(digits):
    backend, recipe, prompts, seeds, cond = digits
    forest, scores, _ = run(digits, {"slow": SlowReward()})
    whole = sample_forest_for_recipe(backend, recipe, prompts, seeds, 2, cond=cond)
    assert forest.nfe == whole.nfe and forest.prompts == whole.prompts and len(forest.layers) == len(whole.layers)
    torch.testing.assert_close(forest.leaves, whole.leaves, rtol=0, atol=1e-5)  # batch-size float effects only
    for mine, theirs in zip(forest.layers, whole.layers):
        assert torch.equal(mine.parent_prompt, theirs.parent_prompt) and mine.leaves_below == theirs.leaves_below
    leaf_prompts = [prompts[int(i)] for i in forest.leaf_prompt]
    images = torch.cat([backend.decode(forest.leaves[i : i + 16]).float() for i in range(0, forest.leaves.shape[0], 16)])
    torch.testing.assert_close(scores["slow"], treesdk.load_reward("digit-classifier").score(images, leaf_prompts))


class NaNReward(SlowReward):
    """NaN for every image of one prompt."""

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def score(self, images, prompts):
        values = super().score(images, prompts).clone()
        values[[i for i, p in enumerate(prompts) if p == self.prompt]] = float("nan")
        return values


def test_a_nan_from_the_worker_names_the_leaf_of_the_whole_iteration(digits):
    prompts = digits[2]
    recipe = digits[1]
    per_prompt = recipe.tree.roots * recipe.tree.k ** recipe.tree.d  # leaves of one prompt's forest
    leaf = prompts.index(prompts[-1]) * per_prompt  # the first leaf of the last prompt's trees
    with pytest.raises(NonFiniteRewardError, match=rf"reward 'slow' returned nan for image {leaf} of prompt {prompts[-1]!r}"):
        run(digits, {"slow": NaNReward(prompts[-1])})


def test_a_failure_in_the_worker_is_the_named_rewards_error(digits):
    with pytest.raises(RewardScoringError, match=r"reward 'slow' failed while scoring in the background: RuntimeError: boom"):
        run(digits, {"slow": SlowReward(fail=RuntimeError("boom"))})
    with pytest.raises(UserError, match="^server says no$"):  # a named fault keeps its message
        run(digits, {"slow": SlowReward(fail=UserError("server says no"))})


def test_a_remote_training_run_is_the_same_with_and_without_overlap():
    rows = {}
    with ThreadServer(create_app(treesdk.load_reward("digit-classifier"))) as server:
        for overlap in (True, False):
            backend = treesdk.load_backend("digits")
            reward = treesdk.load_reward("remote", url=server.url, overlap=overlap)
            result = treesdk.train(treesdk.load_algorithm(backend.default_recipe), backend, {"remote": reward},
                                   backend.default_prompts(), iters=2, batch=3, seed=0)
            rows[overlap] = [(r["reward_mean"], r["reward_std"], r["loss"]) for r in result.history]
    assert rows[True] == rows[False]


class DyingReward(RewardModel):
    """The digit classifier, served; once ``marker`` exists the server it runs in stops mid-request."""

    name = "digit-classifier"

    def __init__(self, marker: Path) -> None:
        self.inner, self.marker, self.server = treesdk.load_reward("digit-classifier"), marker, None
        self.dying = True

    def score(self, images, prompts):
        if self.dying and self.marker.exists():
            threading.Thread(target=self.server.stop).start()
            time.sleep(1.5)  # the request is cut off by the shutdown: no answer
        return self.inner.score(images, prompts)


def test_a_digits_run_stops_with_one_line_when_its_server_dies_and_resumes_once_it_is_back(tmp_path):
    out = tmp_path / "run"
    reward = DyingReward(out / "checkpoints" / "iter_000002")
    server = ThreadServer(create_app(reward))
    reward.server = server.start()
    args = ["train", "--iters", "3", "--batch", "2", "--checkpoint-every", "1", "--out", str(out), "--reward", "remote",
            "--reward-opt", f"remote:url={server.url}", "--reward-opt", "remote:retries=1", "--reward-opt", "remote:backoff=0.05"]
    try:
        first = runner.invoke(app, args)
        assert first.exit_code == 1, first.output
        errors = [line for line in first.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"error: reward 'remote' at {server.url}/compute: " in errors[0], first.output
        assert "cannot reach the server" in errors[0] or "RemoteProtocolError" in errors[0], errors[0]
        assert "Traceback" not in first.output
        assert [p.name for p in list_checkpoints(out)][-1] == "iter_000002"  # the last checkpoint stays

        reward.dying = False
        server.start()  # back, on the same port
        second = runner.invoke(app, ["train", "--resume", "--out", str(out)])
        assert second.exit_code == 0, second.output
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows if not r.get("eval")][-1] == 3
        assert [p.name for p in list_checkpoints(out)][-1] == "iter_000003"
    finally:
        server.stop()


@pytest.mark.parametrize(("mode", "options", "message"), [
    ("nan", [], r"score 0 is nan \(not finite\)"),
    ("hang", ["remote:timeout=0.5", "remote:retries=0"], r"no answer within timeout=0.5 s \(ReadTimeout\)"),
])
def test_a_digits_run_stops_with_one_line_on_a_fault_mid_run_and_keeps_its_checkpoint(tmp_path, mode, options, message):
    out = tmp_path / "run"
    faults = Faults(mode, after=out / "checkpoints" / "iter_000001")
    faults.hang_seconds = 2.0
    with ThreadServer(faulty_app(faults)) as server:
        args = ["train", "--iters", "3", "--batch", "2", "--checkpoint-every", "1", "--out", str(out), "--reward", "remote",
                "--reward-opt", f"remote:url={server.url}", *[a for o in options for a in ("--reward-opt", o)]]
        result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: reward 'remote' at {server.url}/compute: "), result.output
    assert re.search(message, errors[0]), errors[0]
    assert [p.name for p in list_checkpoints(out)] == ["iter_000001"]
