"""The ``vlm-judge`` reward against a small OpenAI-compatible chat server on 127.0.0.1."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("httpx")  # the remote extra

from _reward_servers import ThreadServer, openai_app

import treesdk
from treesdk_plugins.http_client import RemoteRewardError
from treesdk_plugins.reward_wire import quantize
from treesdk_plugins.vlm_judge import yes_probability


@pytest.fixture(scope="module")
def judge_server():
    app = openai_app("judge-1")
    with ThreadServer(app) as server:
        yield app, server.url + "/v1"


def images_of_brightness(values: list[float]) -> torch.Tensor:
    return torch.stack([torch.full((3, 8, 8), v) for v in values])


def test_yes_probability_sums_case_variants_and_normalises():
    top = [{"token": "Yes", "logprob": -1.0}, {"token": " yes", "logprob": -3.0}, {"token": "No", "logprob": -2.0},
           {"token": "maybe", "logprob": -0.1}]
    p_yes, p_no = torch.tensor([-1.0, -3.0]).exp().sum(), torch.tensor(-2.0).exp()
    assert yes_probability(top) == pytest.approx(float(p_yes / (p_yes + p_no)))
    assert yes_probability([{"token": "Maybe", "logprob": -0.1}]) is None


def test_yes_no_judge_reads_p_yes_from_the_log_probs(judge_server):
    app, url = judge_server
    judge = treesdk.load_reward("vlm-judge", base_url=url, model="judge-1", question="Is this {prompt}? Answer Yes or No.",
                                concurrency=3)
    app.state.bodies.clear()
    images = images_of_brightness([0.2, 0.5, 0.9, 0.7])
    got = judge.score(images, ["a cat", "a dog", "a car", "a tree"])
    # the server answers log P(yes) = log b, log P(no) = log(1 - b), b the image's mean brightness
    want = [float(quantize(images[i]).double().mean()) for i in range(4)]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    bodies = app.state.bodies  # three requests in flight at once: arrival order is not the prompts' order
    assert len(bodies) == 4
    for body in bodies:
        assert body["model"] == "judge-1" and body["logprobs"] is True and body["max_tokens"] == 1 and body["top_logprobs"] == 20
    asked = sorted(body["messages"][0]["content"][1]["text"] for body in bodies)
    assert asked == sorted(f"Is this {p}? Answer Yes or No." for p in ["a cat", "a dog", "a car", "a tree"])
    assert judge.io_bound


def test_rubric_judge_parses_the_score_from_the_answer(judge_server):
    _, url = judge_server
    judge = treesdk.load_reward("vlm-judge", base_url=url, model="judge-1", mode="rubric", rubric_max=10,
                                question="Rate how well this image shows {prompt} from 0 to 10.")
    images = images_of_brightness([0.25, 0.75])
    assert judge.score(images, ["a", "b"]).tolist() == pytest.approx([float(quantize(images[i]).mean()) for i in range(2)], abs=1e-4)


def test_a_wrong_model_name_is_a_named_error(judge_server):
    _, url = judge_server
    judge = treesdk.load_reward("vlm-judge", base_url=url, model="other")
    with pytest.raises(RemoteRewardError, match=r"reward 'vlm-judge' at http://127\.0\.0\.1:\d+/v1/chat/completions: .*HTTP 404.*other.*not found"):
        judge.score(images_of_brightness([0.5]), ["a"])


def test_bad_options_are_user_errors():
    with pytest.raises(RemoteRewardError, match="needs the API's base URL"):
        treesdk.load_reward("vlm-judge")
    with pytest.raises(RemoteRewardError, match=r"mode='score'; expected one of \['yes-no', 'rubric'\]"):
        treesdk.load_reward("vlm-judge", base_url="http://127.0.0.1:9/v1", mode="score", check=False)
