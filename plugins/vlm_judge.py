"""``vlm-judge``: a vision-language model as the reward, over an OpenAI-compatible chat API
(``POST {base_url}/chat/completions``, what ``vllm serve`` and SGLang expose).

Each image is sent as a PNG data URL with a question built from its prompt (``question``, a
template where ``{prompt}`` is replaced by the prompt). Two ways to read the answer:

* ``mode="yes-no"`` (default): one answer token with ``logprobs`` and ``top_logprobs``; the score is
  ``P(yes) / (P(yes) + P(no))`` where P(yes) sums ``exp(logprob)`` over the top tokens that read
  "yes" once stripped and lower-cased (likewise "no"), the reading Flow-Factory's
  ``vllm_evaluate`` reward uses. In [0, 1].
* ``mode="rubric"``: a short free answer; the first number in it (``pattern``, a regular
  expression whose first group is the number) divided by ``rubric_max``.

An answer without either reading scores ``missing`` (default 0.0). Requests run ``concurrency`` at
a time, with the timeouts, retries and named errors of :mod:`treesdk_plugins.http_client`; the key
comes from the environment variable ``api_key_env`` (sent as a bearer token). Needs only ``httpx``
(``pip install 'treesdk[remote]'``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs
from .http_client import RemoteRewardError, ServiceClient, token_from_env
from .reward_wire import encode_images

DEFAULT_QUESTION = 'Does this image show "{prompt}"? Answer Yes or No.'
MODES = ("yes-no", "rubric")


def yes_probability(top_logprobs: Sequence[dict[str, Any]]) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from one position's ``top_logprobs`` (``[{"token", "logprob"}, ...]``);
    None when neither answer is among them."""
    yes = no = 0.0
    for entry in top_logprobs:
        token = str(entry.get("token", "")).strip().lower()
        logprob = entry.get("logprob")
        if token not in ("yes", "no") or not isinstance(logprob, (int, float)) or isinstance(logprob, bool):
            continue
        p = math.exp(float(logprob)) if math.isfinite(float(logprob)) else 0.0
        if token == "yes":
            yes += p
        else:
            no += p
    return yes / (yes + no) if yes + no > 0 else None


class VLMJudgeReward(RewardModel):
    """Reward = a VLM's judgement of each image against its prompt (see the module docstring).

    Args:
        base_url: the API's base, e.g. ``http://127.0.0.1:8000/v1`` (required).
        model: the served model's name (``vllm serve MODEL`` serves it as MODEL).
        question: the question template; ``{prompt}`` is the image's prompt.
        mode: ``yes-no`` (log-probabilities) or ``rubric`` (a number parsed from the answer).
        rubric_max: the rubric's top score (the score is number / rubric_max); pattern: regex of it.
        top_logprobs: alternatives per token asked for in ``yes-no`` mode; max_tokens: answer
            length in ``rubric`` mode.
        api_key_env: environment variable holding the API key (None: none sent).
        concurrency: requests in flight; timeout, retries, backoff: as for ``remote``.
        missing: the score of an answer that gives neither reading.
        check: ask ``GET {base_url}/models`` when built.
        overlap: score in the background while the next trees are sampled; in_flight: groups of
            trees scored at once there (as for ``remote``).
    """

    name = "vlm-judge"
    io_bound = True

    @staticmethod
    def weights_status() -> WeightsStatus:
        """No local weights: the judge is served elsewhere."""
        return WeightsStatus(None, [], "a served model (needs no local weights)")

    def __init__(self, base_url: str | None = None, model: str = "default", question: str = DEFAULT_QUESTION,
                 mode: str = "yes-no", rubric_max: float = 10.0, pattern: str = r"(-?\d+(?:\.\d+)?)",
                 top_logprobs: int = 20, max_tokens: int = 16, api_key_env: str | None = None, concurrency: int = 16,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.5, missing: float = 0.0,
                 check: bool = True, overlap: bool = True, in_flight: int = 1, device: str | None = None) -> None:
        del device
        if not base_url:
            raise RemoteRewardError("reward 'vlm-judge' needs the API's base URL: --reward-opt vlm-judge:base_url=http://HOST:PORT/v1")
        if mode not in MODES:
            raise RemoteRewardError(f"reward 'vlm-judge': mode={mode!r}; expected one of {list(MODES)}")
        if "{prompt}" not in question and mode == "yes-no" and "?" not in question:
            raise RemoteRewardError(f"reward 'vlm-judge': question={question!r} is not a question; write one, with {{prompt}} for the prompt")
        if not float(rubric_max) > 0 or int(concurrency) < 1 or int(top_logprobs) < 2 or int(max_tokens) < 1:
            raise RemoteRewardError("reward 'vlm-judge': rubric_max must be > 0, concurrency >= 1, top_logprobs >= 2 and max_tokens >= 1; "
                                    f"got {rubric_max!r}, {concurrency!r}, {top_logprobs!r}, {max_tokens!r}")
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise RemoteRewardError(f"reward 'vlm-judge': pattern={pattern!r} is not a regular expression ({exc})") from None
        key = token_from_env(api_key_env, self.name, "api_key_env")
        self.client = ServiceClient(self.name, str(base_url), timeout=timeout, retries=retries, backoff=backoff, token=key,
                                    token_option="api_key_env")
        self.url, self.model, self.question, self.mode = self.client.url, str(model), str(question), mode
        self.rubric_max, self.top_logprobs, self.max_tokens = float(rubric_max), int(top_logprobs), int(max_tokens)
        self.concurrency, self.missing, self.overlap = int(concurrency), float(missing), bool(overlap)
        self.in_flight = max(1, int(in_flight))
        if check:
            self.client.request("GET", "/models")

    def request_body(self, image_b64: str, prompt: str) -> dict[str, Any]:
        """The chat-completion request for one image and its prompt."""
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image_b64}"}},
                   {"type": "text", "text": self.question.replace("{prompt}", prompt)}]
        body: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0.0}
        if self.mode == "yes-no":
            body.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body.update(max_tokens=self.max_tokens)
        return body

    def read_answer(self, completion: Any) -> float:
        """The score of one chat completion (``missing`` when it has neither reading)."""
        try:
            choice = completion["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise self.client.fail("/chat/completions", f"the answer is not a chat completion (no choices[0]): {str(completion)[:120]!r}") from None
        if self.mode == "yes-no":
            content = ((choice.get("logprobs") or {}).get("content") or [])
            if not content:
                raise self.client.fail("/chat/completions", "the completion has no logprobs; serve a model that returns them (vLLM, SGLang) or use mode=rubric")
            value = yes_probability(content[0].get("top_logprobs") or [])
        else:
            text = str((choice.get("message") or {}).get("content") or "")
            match = self.pattern.search(text)
            value = float(match.group(1)) / self.rubric_max if match else None
        return self.missing if value is None or not math.isfinite(value) else float(value)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        encoded = encode_images(images)

        def one(i: int) -> float:
            return self.read_answer(self.client.request("POST", "/chat/completions", self.request_body(encoded[i], prompts[i])))

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(encoded)))) as pool:
            return torch.tensor(list(pool.map(one, range(len(encoded)))), dtype=torch.float32)

    def describe(self) -> dict[str, str]:
        return {"reward": self.name, "base_url": self.url, "model": self.model, "mode": self.mode}
