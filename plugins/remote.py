"""``remote``: a reward scored by an HTTP service (``treesdk serve-reward``, a Flow-Factory reward
server, or any server speaking :mod:`treesdk_plugins.reward_wire`).

Use it from the command line with ``--reward remote --reward-opt remote:url=http://host:8000``.
Before the first iteration the reward checks ``GET /health`` (when it is built) and that a probe
batch of two images comes back with two finite scores (:meth:`RemoteReward.preflight`), so a
server that is down or answers the wrong count stops the run before any sampling. Every fault
afterwards (server gone, timeout, 4xx, 5xx after the retries, non-JSON, NaN, a wrong count) is a
:class:`~treesdk_plugins.http_client.RemoteRewardError` naming the reward, the URL and what happened.

The reward is I/O-bound (:attr:`io_bound`): the trainer scores each group of trees while it
samples the next (``overlap=False`` scores them in the main thread instead, same results).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from treesdk.interfaces import RewardModel

from .common import WeightsStatus, check_inputs
from .http_client import RemoteRewardError, ServiceClient, token_from_env
from .reward_wire import WireFormatError, build_request, read_scores


class RemoteReward(RewardModel):
    """Scores by ``POST {url}/compute`` (JSON, base64 PNG images; see :mod:`treesdk_plugins.reward_wire`).

    Args:
        url: the server's base URL (required), e.g. ``http://127.0.0.1:8000``.
        token_env: name of an environment variable holding a bearer token (None: no token).
        timeout: seconds to connect and for each answer. retries: extra attempts on connection
            errors, timeouts and 5xx (never on 4xx); backoff: seconds before the first, doubled after.
        batch_size: images per request; concurrency: requests in flight at once.
        check: check ``/health`` when built and a probe batch before the first iteration.
        overlap: score in the background while the next trees are sampled (False: in the main thread).
        in_flight: groups of trees scored at once in the background (default 1: one request after the
            other, so the server sees the same batches as without overlap; more hides more latency,
            but a server that batches concurrent requests may then group them differently each run).
    """

    name = "remote"
    io_bound = True

    @staticmethod
    def weights_status() -> WeightsStatus:
        """No local weights: the server holds the model."""
        return WeightsStatus(None, [], "scored by a server (needs no local weights)")

    def __init__(self, url: str | None = None, token_env: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 0.5, batch_size: int = 32, concurrency: int = 4, check: bool = True,
                 overlap: bool = True, in_flight: int = 1, device: str | None = None) -> None:
        del device  # scores come back on the CPU wherever the run is
        if not url:
            raise RemoteRewardError("reward 'remote' needs the server's URL: --reward-opt remote:url=http://HOST:PORT")
        if int(batch_size) < 1 or int(concurrency) < 1 or int(in_flight) < 1:
            raise RemoteRewardError(f"reward 'remote': batch_size={batch_size!r}, concurrency={concurrency!r} and "
                                    f"in_flight={in_flight!r} must be >= 1")
        token = token_from_env(token_env, self.name, "token_env")
        self.client = ServiceClient(self.name, str(url), timeout=timeout, retries=retries, backoff=backoff, token=token)
        self.url = self.client.url
        self.batch_size, self.concurrency, self.overlap = int(batch_size), int(concurrency), bool(overlap)
        self.in_flight = int(in_flight)
        if check:
            self.client.request("GET", "/health")
        else:
            self._treesdk_preflown = True  # no probe before the first iteration either

    def preflight(self, images: Tensor, prompts: Sequence[str]) -> None:
        """Score a probe batch (the trainer's first call, before sampling): a wrong count, a
        non-number or an unreachable server is a :class:`RemoteRewardError` now rather than later."""
        self.score(images, prompts)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_inputs(images, prompts, self.name)
        prompts = list(prompts)
        starts = list(range(0, images.shape[0], self.batch_size))
        if len(starts) <= 1 or self.concurrency == 1:
            parts = [self._batch(images[s : s + self.batch_size], prompts[s : s + self.batch_size]) for s in starts]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(starts))) as pool:
                parts = list(pool.map(lambda s: self._batch(images[s : s + self.batch_size], prompts[s : s + self.batch_size]), starts))
        return torch.tensor([v for part in parts for v in part], dtype=torch.float32)

    def _batch(self, images: Tensor, prompts: list[str]) -> list[float]:
        body = self.client.request("POST", "/compute", build_request(images, prompts))
        try:
            return read_scores(body, len(prompts))
        except WireFormatError as exc:
            raise self.client.fail("/compute", str(exc)) from None

    def describe(self) -> dict[str, str]:
        return {"reward": self.name, "url": self.url}
