"""Remote rewards against real servers on 127.0.0.1: ``treesdk serve-reward`` gives the in-process
scores, a server written to Flow-Factory's format is scored, and every fault is a named error."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("fastapi")  # the serve extra
pytest.importorskip("httpx")  # the remote extra

import httpx
from _reward_servers import Faults, ThreadServer, faulty_app, flow_factory_app

import treesdk
from treesdk.errors import UserError
from treesdk_plugins.http_client import RemoteRewardError
from treesdk_plugins.remote import RemoteReward
from treesdk_plugins.reward_server import Batcher, create_app
from treesdk_plugins.reward_wire import decode_image, encode_images, quantize
from treesdk_cli.common import parse_reward_options

DIGIT_PROMPTS = [f"a handwritten digit {i % 10}" for i in range(11)]


def serve_cli(name: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """``treesdk serve-reward NAME --port 0`` as a child process; returns it and its URL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "treesdk", "serve-reward", name, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # the first line names the URL once the socket listens
    if not line.startswith("serving reward"):
        proc.kill()
        raise AssertionError(f"serve-reward did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, line.split(" at ")[1].strip()


@pytest.fixture(scope="module")
def served():
    procs = {name: serve_cli(name) for name in ("jpeg-compressibility", "digit-classifier")}
    yield {name: url for name, (_, url) in procs.items()}
    for proc, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=10)


def test_png_round_trip_is_the_8_bit_image():
    images = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    back = torch.stack([decode_image(s, i) for i, s in enumerate(encode_images(images))])
    assert torch.equal(back, quantize(images))


def test_served_jpeg_reward_gives_the_in_process_scores(served):
    images = torch.rand(9, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    remote = RemoteReward(url=served["jpeg-compressibility"], batch_size=4)
    local = treesdk.load_reward("jpeg-compressibility")
    assert torch.equal(remote.score(images, ["p"] * 9), local.score(images, ["p"] * 9))  # JPEG rounds to 8 bits itself


def test_served_digit_classifier_gives_the_in_process_scores_of_the_8_bit_images(served):
    images = torch.rand(11, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    local = treesdk.load_reward("digit-classifier").score(quantize(images), DIGIT_PROMPTS)
    got = RemoteReward(url=served["digit-classifier"], batch_size=16).score(images, DIGIT_PROMPTS)
    assert torch.equal(got, local) and got.dtype == torch.float32  # one request, one batch: bit for bit
    # requests in flight together are batched by the server: the same values up to the network's
    # float batch-size effects (a CNN's last bits depend on the batch it runs in)
    split = RemoteReward(url=served["digit-classifier"], batch_size=3, concurrency=3).score(images, DIGIT_PROMPTS)
    torch.testing.assert_close(split, local, rtol=1e-5, atol=1e-6)


def test_served_reward_rejects_what_it_cannot_score_with_400_not_retried(served):
    remote = RemoteReward(url=served["digit-classifier"], retries=3, backoff=5.0)  # a retry would take 5 s
    start = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"reward 'remote' at http://127\.0\.0\.1:\d+/compute: .*HTTP 400.*cannot condition"):
        remote.score(torch.rand(2, 3, 8, 8), ["a cat", "a dog"])
    assert time.monotonic() - start < 5.0


def test_reward_opt_carries_a_url():
    assert parse_reward_options(["remote:url=http://127.0.0.1:8000/v1", "remote:token_env=TOKEN"]) == {
        "remote": {"url": "http://127.0.0.1:8000/v1", "token_env": "TOKEN"}}


def test_a_flow_factory_format_server_is_scored():
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    prompts = ["bright", "dark", "bright", "x", "y"]
    with ThreadServer(flow_factory_app()) as server:
        got = RemoteReward(url=server.url, batch_size=2).score(images, prompts)
    want = [float(quantize(images[i]).double().mean()) + (0.5 if "bright" in p else 0.0) for i, p in enumerate(prompts)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_the_server_reads_flow_factory_clients_spelling_too():
    reward = treesdk.load_reward("jpeg-compressibility")
    images = torch.rand(2, 3, 8, 8)
    with ThreadServer(create_app(reward)) as server:
        body = {"prompt": ["a", "b"], "image": encode_images(images), "video": None, "kwargs": None}
        answer = httpx.post(server.url + "/compute", json=body, timeout=10).json()
        health = httpx.get(server.url + "/health", timeout=10).json()
    assert answer["rewards"] == reward.score(images, ["a", "b"]).tolist()
    assert health == {"status": "ok", "reward": "jpeg-compressibility"}


def test_concurrent_requests_are_batched_and_answered_in_their_own_order():
    reward = treesdk.load_reward("digit-classifier")
    batcher = Batcher(reward, max_batch=64, max_wait=1.0)
    requests = [(list(torch.rand(n, 3, 8, 8).unbind(0)), DIGIT_PROMPTS[:n]) for n in (3, 1, 4)]

    async def main():
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.score(images, prompts) for images, prompts in requests))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert batcher.batches == 1  # all three were queued before the loop ran: one reward call
    together = reward.score(torch.stack([i for images, _ in requests for i in images]),
                            [p for _, prompts in requests for p in prompts]).tolist()
    assert answers == [together[:3], together[3:4], together[4:]]  # each request its own scores, in order


def test_a_body_over_the_limit_gets_413():
    with ThreadServer(create_app(treesdk.load_reward("jpeg-compressibility"), max_body_bytes=2000)) as server:
        remote = RemoteReward(url=server.url)
        with pytest.raises(RemoteRewardError, match="HTTP 413.*over the limit of 2000 bytes"):
            remote.score(torch.rand(4, 3, 32, 32), ["p"] * 4)


def test_a_token_server_answers_401_without_it_and_scores_with_it(monkeypatch):
    monkeypatch.setenv("TREESDK_TEST_TOKEN", "s3cret")
    with ThreadServer(create_app(treesdk.load_reward("jpeg-compressibility"), token="s3cret")) as server:
        with pytest.raises(RemoteRewardError, match=r"at http://127\.0\.0\.1:\d+/health: .*HTTP 401.*may want a token: set token_env=VARIABLE"):
            RemoteReward(url=server.url)
        assert RemoteReward(url=server.url, token_env="TREESDK_TEST_TOKEN").score(torch.rand(1, 3, 8, 8), ["p"]).shape == (1,)
    with pytest.raises(UserError, match="token_env='TREESDK_UNSET_VARIABLE' names an environment variable that is not set"):
        RemoteReward(url="http://127.0.0.1:9", token_env="TREESDK_UNSET_VARIABLE")


def test_an_unreachable_server_fails_when_the_reward_is_built():
    server = ThreadServer(flow_factory_app()).start()
    url = server.url
    server.stop()  # nothing listens there now
    with pytest.raises(RemoteRewardError, match=rf"reward 'remote' at {url}/health: cannot reach the server .* after 2 attempts"):
        RemoteReward(url=url, retries=1, backoff=0.01)


def test_missing_or_bad_url_is_a_user_error():
    with pytest.raises(UserError, match="needs the server's URL"):
        treesdk.load_reward("remote")
    with pytest.raises(UserError, match="is not an http"):
        treesdk.load_reward("remote", url="127.0.0.1:8000")


@pytest.fixture(scope="module")
def faulty():
    faults = Faults()
    with ThreadServer(faulty_app(faults)) as server:
        yield faults, server.url


@pytest.mark.parametrize(("mode", "message"), [
    ("nan", r"score 0 is nan \(not finite\)"),
    ("count", "the server returned 3 scores for 2 images"),
    ("html", r"the answer is not JSON \(HTTP 200, content-type text/html: '<html><body><h1>502 Bad Gateway"),
    ("text", "the answer is not JSON .*text/plain: 'all good'"),
    ("401", "the server refused the request with HTTP 401 .*may want a token: set token_env=VARIABLE"),
    ("500", r"the server failed with HTTP 500 \('boom'\) after 3 attempts"),
])
def test_each_fault_is_one_named_error(faulty, mode, message):
    faults, url = faulty
    faults.mode, faults.calls = mode, 0
    remote = RemoteReward(url=url, retries=2, backoff=0.01)
    with pytest.raises(RemoteRewardError, match=rf"^reward 'remote' at {url}/compute: {message}") as info:
        remote.score(torch.rand(2, 3, 8, 8), ["a", "b"])
    assert "\n" not in str(info.value)
    assert faults.calls == (3 if mode == "500" else 1)  # 5xx retried, 4xx and bad answers not


def test_a_hanging_server_times_out(faulty):
    faults, url = faulty
    faults.mode, faults.hang_seconds = "hang", 3.0
    remote = RemoteReward(url=url, timeout=0.3, retries=0)
    with pytest.raises(RemoteRewardError, match=r"/compute: no answer within timeout=0.3 s \(ReadTimeout\)"):
        remote.score(torch.rand(1, 3, 8, 8), ["a"])


def test_5xx_is_retried_with_back_off_until_it_answers(faulty):
    faults, url = faulty
    faults.mode, faults.fail_first, faults.calls = "ok", 2, 0
    got = RemoteReward(url=url, retries=3, backoff=0.01).score(torch.rand(2, 3, 8, 8), ["a", "b"])
    assert got.tolist() == [0.25, 0.25] and faults.calls == 3


def test_preflight_catches_a_wrong_count_before_sampling(faulty):
    faults, url = faulty
    faults.mode = "count"
    remote = RemoteReward(url=url)  # /health is fine
    with pytest.raises(RemoteRewardError, match="returned 3 scores for 2 images"):
        remote.preflight(torch.rand(2, 3, 8, 8), ["a", "b"])
